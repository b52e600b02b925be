"""python -m fastbert.experiments list | run <table> [options] | render [options]  (see fastbert.experiments)"""
from __future__ import annotations

import argparse
import os
import sys

from fastbert.experiments import render, runner, specs

ROOT = runner.REPO  # results/, runs/experiments/ and RESULTS.md live in the repository


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastbert.experiments", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the tables and their rows")
    r = sub.add_parser("run", help="run a table's rows (recorded runs are skipped)")
    r.add_argument("table", help="a table name (see list) or a spec file")
    r.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the spec's)")
    r.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    r.add_argument("--resume", action="store_true", help="continue broken runs from their last checkpoint")
    r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    r.add_argument("--root", default=ROOT, help="where results/ and runs/experiments/ go (default: the repository)")
    d = sub.add_parser("render", help="write RESULTS.md and results/*.png from the records")
    d.add_argument("--root", default=ROOT)
    d.add_argument("--spec", action="append", default=None, help="spec files (default: every packaged table)")
    return p


def cmd_list() -> int:
    for name in specs.names():
        s = specs.load(name)
        print(f"{name}: {s.title} ({len(s.rows)} rows, {s.seeds} seed{'s' if s.seeds > 1 else ''})")
        print("    " + ", ".join(r.name for r in s.rows))
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "list":
        return cmd_list()
    if args.cmd == "render":
        chosen = [specs.load(s) for s in (args.spec or specs.names())]
        render.render(chosen, os.path.abspath(args.root))
        print(f"wrote {os.path.join(args.root, 'RESULTS.md')}")
        return 0
    spec = specs.load(args.table)
    rows = [x for x in args.rows.split(",") if x] if args.rows else None
    counts = runner.run_table(spec, os.path.abspath(args.root), args.seeds, rows, args.threads, args.resume,
                              args.dry_run)
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        sys.exit(130)
    except (specs.SpecError, runner.RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
