"""Running a table: each row and seed through the training driver (a subprocess), timed, then recorded.

A run whose record exists is skipped. A run directory without a record is a broken run: `resume`
continues it from its last checkpoint (the driver's --resume), else it is an error.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import resource
import signal
import subprocess
import sys
import time

import yaml

from fastbert.experiments import records, specs
from fastbert.experiments.specs import Row, Spec, command, display
from fastbert.train import config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXED = {"progress": False}  # every experiment run: no progress bars in the logs


class RunError(RuntimeError):
    pass


def run_dir(table: str, row: str, seed: int) -> str:
    """Relative to the results root (the driver runs there)."""
    return os.path.join("runs", "experiments", table, f"{row}-seed{seed}")


def settings(spec: Spec, row: Row, seed: int, threads: int) -> dict:
    """The row's overrides on top of the table's, plus the seed, run directory and threads."""
    s = config.merge(spec.common, row.overrides)
    return {**s, **FIXED, "threads": s.get("threads", threads), "seed": seed,
            "run_dir": run_dir(spec.name, row.name, seed)}


def argv_for(spec: Spec, row: Row, seed: int, root: str, threads: int, resume: bool) -> list[str]:
    s = settings(spec, row, seed, threads)
    recipe = None
    if row.recipe is not None:  # written beside the run: the driver reads recipes from files
        recipe = os.path.join(s["run_dir"], "recipe.yaml")
    argv = command(row, s, recipe)
    return argv + (["--resume", "true"] if resume else [])


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class _Forward:
    """While a driver runs: the first SIGINT / SIGTERM to this process reaches the driver as one SIGTERM (it
    finishes its step, saves and exits; a terminal's Ctrl-C reaches it directly too, and a SIGTERM after that
    is ignored there), and this process waits for it instead of dying first, so the attempt is still recorded;
    a second signal sends SIGINT, the driver's own second Ctrl-C (stop without saving). `received` holds the
    first signal; the caller stops after recording. Installed before the driver starts: a signal in between
    is passed on as soon as it has."""

    def __init__(self):
        self.proc, self.received, self._previous, self._count = None, None, {}, 0

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)

    def started(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        for i in range(self._count):
            self._send(i)

    def _handle(self, signum, frame):
        self.received = self.received or signum
        self._count += 1
        if self.proc is not None:
            self._send(self._count - 1)

    def _send(self, i: int) -> None:
        if self.proc.poll() is None and i < 2:
            self.proc.send_signal(signal.SIGTERM if i == 0 else signal.SIGINT)


def _stopped(returncode: int, signum: int) -> str:
    """What became of a run stopped by a signal, from its exit status (130: the driver saved and stopped)."""
    how = {0: "the run had finished (run again to record it)", 130: "the run saved and stopped; --resume continues it"}
    return f"signal {signum}: " + how.get(returncode, f"the driver exited with {returncode}; --resume continues "
                                                      "from its last checkpoint")


def launch(argv: list[str], root: str, rdir: str) -> dict:
    """Run the driver in `root` (output to <run_dir>/driver.log); the attempt's times, commit, exit code.
    The attempt is in <run_dir>/experiment.json from its start (times null until it ends), so an attempt
    whose times were lost (this process killed by SIGKILL) still shows; a signal stops the table after it."""
    os.makedirs(os.path.join(root, rdir), exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    attempt = {"command": display(argv), "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "git": records.git_state(REPO), "returncode": None, "wall_s": None, "cpu_s": None}
    with _Forward() as forward, open(os.path.join(root, rdir, "driver.log"), "a", encoding="utf-8") as log:
        records.add_attempt(os.path.join(root, rdir), attempt)
        wall0, cpu0 = time.time(), _cpu_children()
        try:
            proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        except OSError:
            records.set_last_attempt(os.path.join(root, rdir), None)  # nothing ran
            raise
        forward.started(proc)
        attempt["returncode"] = proc.wait()
        attempt["wall_s"], attempt["cpu_s"] = round(time.time() - wall0, 1), round(_cpu_children() - cpu0, 1)
        records.set_last_attempt(os.path.join(root, rdir), attempt)
    if forward.received is not None:
        raise KeyboardInterrupt(_stopped(attempt["returncode"], forward.received))
    return attempt


def make_record(spec: Spec, row: Row, seed: int, root: str, rdir: str, threads: int) -> dict:
    attempts = records.read_attempts(os.path.join(root, rdir))
    commits = list(dict.fromkeys(a["git"]["commit"] for a in attempts))
    return {"table": spec.name, "row": row.name, "seed": seed, "stage": row.stage, "config": row.config,
            "recipe": row.recipe, "settings": settings(spec, row, seed, threads),
            **records.results(os.path.join(root, rdir)),
            "wall_s": round(sum(a["wall_s"] or 0.0 for a in attempts), 1),
            "cpu_s": round(sum(a["cpu_s"] or 0.0 for a in attempts), 1), "attempts": len(attempts),
            "times_complete": all(a["wall_s"] is not None and a["cpu_s"] is not None for a in attempts),
            "command": attempts[0]["command"] if attempts else None,
            "commit": commits[-1] if commits else None, "commits": commits,
            "dirty": any(a["git"]["dirty"] for a in attempts),
            "changed": sorted({p for a in attempts for p in a["git"]["changed"]}),
            "machine": records.machine(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_one(spec: Spec, row: Row, seed: int, root: str, threads: int, resume: bool, dry_run: bool) -> str:
    """'skipped' | 'busy' | 'dry-run' | 'done' | 'failed' for one row and seed."""
    rec_path = records.record_path(root, spec.name, row.name, seed)
    label = f"{spec.name}/{row.name} seed {seed}"
    if os.path.exists(rec_path):
        print(f"{label}: recorded in {os.path.relpath(rec_path, root)}, skipping")
        return "skipped"
    rdir = run_dir(spec.name, row.name, seed)
    if dry_run:
        return _run_one(spec, row, seed, root, threads, resume, dry_run, rec_path, label, rdir)
    os.makedirs(os.path.join(root, rdir), exist_ok=True)
    with open(os.path.join(root, rdir, "experiment.lock"), "w") as lock:  # one runner per run (tables share rows)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{label}: running in another process, skipping")
            return "busy"
        return _run_one(spec, row, seed, root, threads, resume, dry_run, rec_path, label, rdir)


def _run_one(spec: Spec, row: Row, seed: int, root: str, threads: int, resume: bool, dry_run: bool, rec_path: str,
             label: str, rdir: str) -> str:
    if os.path.exists(rec_path):  # recorded by the runner that held the lock before
        print(f"{label}: recorded in {os.path.relpath(rec_path, root)}, skipping")
        return "skipped"
    attempts = records.read_attempts(os.path.join(root, rdir))
    if attempts and attempts[-1].get("returncode") == 0 and not dry_run:  # finished, its record not written
        return _record(spec, row, seed, root, rdir, threads, rec_path)
    broken = bool(attempts) or os.path.exists(os.path.join(root, rdir, "driver.log"))  # launched, not recorded
    if broken and not resume and not dry_run:
        raise RunError(f"{label}: {os.path.join(root, rdir)} holds an unrecorded run: --resume continues it")
    argv = argv_for(spec, row, seed, root, threads, resume and broken)
    if dry_run:
        print(f"{label}: {display(argv)}")
        return "dry-run"
    if row.recipe is not None:
        os.makedirs(os.path.join(root, rdir), exist_ok=True)
        with open(os.path.join(root, rdir, "recipe.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump({"stage": row.stage, **row.recipe}, f, sort_keys=False)
    print(f"{label}: {display(argv)}", flush=True)
    attempt = launch(argv, root, rdir)
    if attempt["returncode"] != 0:
        print(f"{label}: failed (exit {attempt['returncode']}), see {os.path.join(root, rdir, 'driver.log')}; "
              "--resume continues it", file=sys.stderr)
        return "failed"
    return _record(spec, row, seed, root, rdir, threads, rec_path)


def _record(spec: Spec, row: Row, seed: int, root: str, rdir: str, threads: int, rec_path: str) -> str:
    rec = make_record(spec, row, seed, root, rdir, threads)
    records.write(rec_path, rec)
    print(f"{spec.name}/{row.name} seed {seed}: dev {rec['dev']} in {rec['wall_s']:.0f} s ({rec['cpu_s']:.0f} CPU-s)"
          f" -> {os.path.relpath(rec_path, root)}", flush=True)
    return "done"


def run_table(spec: Spec, root: str, seeds: int | None = None, rows: list[str] | None = None, threads: int = 1,
              resume: bool = False, dry_run: bool = False) -> dict[str, int]:
    """Every selected row for seeds 0..seeds-1 (default: the spec's); counts of each outcome."""
    chosen = [spec.row(r) for r in rows] if rows else spec.rows
    counts: dict[str, int] = {}
    for row in chosen:
        table, run_row = specs.target(spec, row)  # a same_as row runs (and is recorded) as the row it names
        for seed in range(seeds or table.seeds):
            outcome = run_one(table, run_row, seed, root, threads, resume, dry_run)
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts
