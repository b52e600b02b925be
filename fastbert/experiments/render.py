"""RESULTS.md from the run records (results/records) and the specs (row order, the reports' quoted figures)."""
from __future__ import annotations

import os
import statistics

from fastbert.experiments import plots, records
from fastbert.experiments.specs import TASKS, Spec, target

SETTING = """\
**Where the setting differs from the reports'.** The reports fine-tuned bert-base-uncased (110M parameters);
fastbert starts from all-MiniLM-L6-v2 (6 layers, 384 hidden, 22.7M parameters), the only pretrained encoder
available offline. MiniLM was itself trained on Quora duplicate questions and SNLI/MultiNLI pairs (among
others), so its Quora and NLI figures start far above bert-base's and are not comparable as such. Quora train
is a 14,139-pair subset (10%) of the CS224N training file; Quora dev is the 16,258 labelled pairs available
(~80% of the CS224N dev file). SNLI train and MultiNLI are not available: SNLI validation (+ SICK train)
stands in for them, SNLI test is their dev set. Report figures are quoted from the reports (their dev sets);
fastbert's are the dev metrics of each run's final model (the best checkpoint of its last stage, chosen by
the dev mean of the tasks that stage trains, or of its `select_tasks`). A run's spread is the standard deviation over seeds; a
difference smaller than the spread is reported as a tie (a one-seed row is judged by the other row's spread;
two one-seed rows have none to judge by).
Wall time is on the machine each record names; on the shared 2-core machine (several processes per core)
it is several times an unloaded run's, while CPU seconds (the driver's user + system time, one thread) are
close to an unloaded single-thread run's wall time. Every run trains with precision auto: bf16 weights (fp32
masters) on a CPU with bf16 matmuls (AMX / AVX512-BF16), fp32 on a CPU without (AVX2 only, such as the AMD
EPYC machines here); the `machine` column names the CPU each row ran on, and its vector extension where the
record says (records from before 2026-12-02 do not)."""


def _fmt(v, nd=3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _stat(values: list) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(stat: tuple[float, float] | None, n: int) -> str:
    if stat is None:
        return "—"
    return f"{stat[0]:.3f} ± {stat[1]:.3f}" if n > 1 else f"{stat[0]:.3f}"


def row_stats(recs: list[dict]) -> dict:
    """Per metric (sst, quora, sts, mean) the (mean, std) over seeds; times and steps averaged."""
    out = {t: _stat([r["dev"].get(t) for r in recs]) for t in TASKS}
    out["mean"] = _stat([r.get("dev_mean") for r in recs])
    for k in ("wall_s", "cpu_s", "steps"):
        out[k] = statistics.fmean(r[k] for r in recs)
    return out


def _versus(stats: dict, ref: str | None, name: str, n: dict) -> str:
    """This row's dev mean against the reference row's (the baseline, else the table's best): 'best' /
    'baseline' for that row, 'tie' when the difference is within the spread (the larger std of the two rows;
    a one-seed row takes the other's), else the difference, marked '(1 seed)' when neither has a spread."""
    if ref is None or not stats[name]["mean"] or not stats[ref]["mean"]:
        return "—"
    if name == ref:
        return "best" if ref == _best(stats) else "baseline"
    (m, s), (bm, bs) = stats[name]["mean"], stats[ref]["mean"]
    spread = max(s if n[name] > 1 else 0.0, bs if n[ref] > 1 else 0.0)
    if n[name] == 1 and n[ref] == 1:
        return f"{m - bm:+.3f} (1 seed)"
    return "tie" if abs(m - bm) < spread else f"{m - bm:+.3f}"


def _best(stats: dict) -> str | None:
    ranked = [k for k, v in stats.items() if v["mean"]]
    return max(ranked, key=lambda k: stats[k]["mean"][0]) if ranked else None


def _report_mean(report: dict) -> float | None:
    vals = [report.get(t) for t in TASKS]
    return None if any(v is None for v in vals) else sum(vals) / 3


def _machines(recs: list[dict]) -> str:
    """The CPUs (and GPU) the row's records ran on, shortened: 'Intel Xeon ...' -> 'Xeon', 'AMD EPYC' -> 'EPYC',
    with the vector extension where the record has it: 'EPYC (AVX2)'."""
    names = []
    for r in recs:
        m = r.get("machine") or {}
        name = m.get("cuda") and f"CUDA {m['cuda']}" or (m.get("cpu") or "?")
        name = next((w for w in ("Xeon", "EPYC") if w in name), name)
        names.append(f"{name} ({m['isa'].upper()})" if m.get("isa") and not m.get("cuda") else name)
    return ", ".join(dict.fromkeys(names))


def _flags(recs: list[dict]) -> str:
    marks = []
    if any(r["dirty"] for r in recs):
        marks.append("**⚠ DIRTY TREE**")
    if any(r.get("eval_limit") for r in recs):
        marks.append("dev subset†")
    return (" " + " ".join(marks)) if marks else ""


def table_section(spec: Spec, recs: dict[str, list[dict]], root: str) -> list[str]:
    """A table's Markdown: heading, source, note, the rows, its figure, the exact commands."""
    stats = {r.name: row_stats(recs[r.name]) if r.name in recs else {"mean": None} for r in spec.rows}
    n = {r.name: len(recs.get(r.name, [])) for r in spec.rows}
    baseline = spec.baseline if spec.baseline and stats[spec.baseline]["mean"] else None  # not run: vs best
    ref = baseline or _best(stats)
    lines = [f"## {spec.title}", "", f"`python -m fastbert.experiments run {spec.name}` · figures quoted from "
             f"{spec.source or 'no report'}.", ""]
    if spec.note:
        lines += [spec.note.strip(), ""]
    lines += ["| row | SST report | SST fastbert | Quora report | Quora fastbert | STS report | STS fastbert | "
              f"mean report | mean fastbert | vs {baseline or 'best'} | seeds | steps | wall s | CPU s | machine |",
              "|---|" + "---|" * 14]
    for r in spec.rows:
        rep = [_fmt(r.report.get(t)) for t in TASKS] + [_fmt(_report_mean(r.report))]
        if r.name not in recs:
            ours = ["not run yet", "", "", ""]
            rest = ["", "0", "", "", "", ""]
            flag = ""
        else:
            st = stats[r.name]
            ours = [_cell(st[t], n[r.name]) for t in (*TASKS, "mean")]
            at_least = "" if all(x.get("times_complete", True) for x in recs[r.name]) else "≥ "
            rest = [_versus(stats, ref, r.name, n), str(n[r.name]), f"{st['steps']:.0f}",
                    f"{at_least}{st['wall_s']:.0f}", f"{at_least}{st['cpu_s']:.0f}", _machines(recs[r.name])]
            flag = _flags(recs[r.name])
        cells = [x for pair in zip(rep, ours) for x in pair]
        lines.append(f"| {r.name}{flag} | " + " | ".join(cells + rest) + " |")
    dots = {r.name: {**{m: stats[r.name].get(m) for m in plots.METRICS},
                     "report": {**r.report, "mean": _report_mean(r.report)}} for r in spec.rows}
    if plots.table_dots(spec, dots, os.path.join(root, "results", f"{spec.name}.png")):
        lines += ["", f"![{spec.title}](results/{spec.name}.png)"]
    lines += ["", "<details><summary>rows: what each runs, and the exact commands</summary>", ""]
    for r in spec.rows:
        what = f"- **{r.name}**: {r.note.strip() + ' ' if r.note else ''}"
        if r.same_as:
            what += f"the run of {r.same_as} (the same settings), shown here for comparison. "
        if r.name in recs:
            by_commit: dict[str, list[str]] = {}  # seeds run at different commits are listed under each
            for x in recs[r.name]:
                by_commit.setdefault(x["commit"][:10], []).append(f"`{x['command']}`")
            lines.append(what + "; ".join(f"commit {c}: {'; '.join(cmds)}" for c, cmds in by_commit.items()))
        else:
            lines.append(what + "not run yet")
    return lines + ["", "</details>", ""]


LABEL = {"sst": "SST", "quora": "Quora", "sts": "STS"}
GLANCE = {"mean": "dev mean of the three, one model", "sst": "SST accuracy", "quora": "Quora accuracy",
          "sts": "STS Pearson r"}


def at_a_glance(found: dict[str, dict[str, list[dict]]], runs) -> list[str]:
    """The highest figure recorded for each metric among `runs` ((table, row) pairs), on full dev sets (rows
    run on a dev subset left out), and the row that reached it; the mean counts only rows whose one model was
    evaluated on all three tasks."""
    rows = {(t, row): row_stats(found[t][row]) for t, row in runs if row in found.get(t, {})
            and not any(x.get("eval_limit") for x in found[t][row])}
    if not rows:
        return []
    lines = ["## At a glance", "", "The highest dev figure recorded so far for each metric, over every table, on full dev "
             "sets (rows evaluated on a dev subset left out), mean over seeds; the row that reached it and how "
             "(`single`: one task trained, the others evaluated with untrained heads).", "",
             "| metric | fastbert | row | stage | seeds |", "|---|---|---|---|---|"]
    for m, label in GLANCE.items():
        have = [k for k, st in rows.items() if st[m]]
        if not have:
            continue
        t, row = max(have, key=lambda k: rows[k][m][0])
        recs = found[t][row]
        lines.append(f"| {label} | {_cell(rows[(t, row)][m], len(recs))} | {t}/{row}{_flags(recs)} | "
                     f"{recs[0]['stage']} | {len(recs)} |")
    return lines + [""]


def targets_section(spec: Spec, found: dict[str, dict[str, list[dict]]]) -> list[str]:
    """The spec's targets (specs.py) against the records: what was reached and whether it meets each."""
    t = spec.targets
    if not t:
        return []

    def recs_of(ref: str) -> list[dict]:
        table, row = ref.split("/")
        return found.get(table, {}).get(row, [])

    def seeds(recs: list[dict]) -> str:
        return f"{len(recs)} seed{'s' * (len(recs) != 1)}{_flags(recs)}"

    lines = [f"**Targets of the `{spec.name}` table**, judged from its records:", "",
             "| target | recorded | met |", "|---|---|---|"]
    row, judged = t.get("row"), []
    if row:
        tt, tr = target(spec, spec.row(row))
        judged = found.get(tt.name, {}).get(tr.name, [])
    stats = row_stats(judged) if judged else None
    if "mean" in t:
        got = stats and stats["mean"]
        lines.append(f"| `{row}`: dev mean ≥ {t['mean']} | " +
                     (f"{_cell(got, len(judged))} ({seeds(judged)}) | {'yes' if got[0] >= t['mean'] else 'no'} |"
                      if got else "not run yet | — |"))
    if t.get("single_task"):
        cells, short, missing = [], [], False
        for task, ref in t["single_task"].items():
            base, own = _stat([r["dev"].get(task) for r in recs_of(ref)]), stats and stats[task]
            if not base or not own:
                missing = True
                cells.append(f"{LABEL[task]} {_fmt(own and own[0])} vs {ref} {_fmt(base and base[0])}")
                continue
            cells.append(f"{LABEL[task]} {own[0]:.3f} vs {ref} {base[0]:.3f} ({seeds(recs_of(ref))})")
            if own[0] < base[0]:
                short.append(f"{LABEL[task]} {own[0] - base[0]:+.3f}")
        verdict = "— (a row not run yet)" if missing else f"no: {', '.join(short)}" if short else "yes"
        lines.append(f"| `{row}`: every task at or above its single-task row | {'; '.join(cells)} | {verdict} |")
    if "fast" in t:
        goal, minutes = t["fast"]["mean"], t["fast"]["minutes"]
        best = None  # (mean, label, minutes, subset) of the highest evaluation within the time
        for r in spec.rows:
            tt, tr = target(spec, r)
            for x in found.get(tt.name, {}).get(tr.name, []):
                if not (x.get("times_complete", True) and x["wall_s"]):
                    continue
                scale = x["cpu_s"] / x["wall_s"] / 60
                for sec, _step, mean in x["curve"]:
                    if mean is not None and sec * scale <= minutes and (best is None or mean > best[0]):
                        best = (mean, f"{tt.name}/{tr.name} seed {x['seed']}", sec * scale,
                                bool(x.get("eval_limit")))
        lines.append(f"| some row: dev mean ≥ {goal} within {minutes} minutes (one-thread CPU time) | " +
                     (f"highest within {minutes} min: {best[0]:.3f} ({best[1]}, at {best[2]:.1f} min"
                      f"{', dev subset†' if best[3] else ''}) | {'yes' if best[0] >= goal else 'no'} |"
                      if best else f"no evaluation within {minutes} min | no |"))
    return lines + [""]


def render(specs: list[Spec], root: str) -> str:
    """Writes <root>/RESULTS.md and <root>/results/*.png; returns the Markdown."""
    found = records.load_all(root)
    runs = dict.fromkeys((t.name, tr.name) for s in specs for r in s.rows for t, tr in [target(s, r)])
    missing = [f"{t}/{row}" for t, row in runs if row not in found.get(t, {})]
    dirty = [f"{t}/{row}" for t, rows in found.items() for row, recs in rows.items() if any(x["dirty"] for x in recs)]
    lines = ["# Results", "", "Generated by `python -m fastbert.experiments render` from the run records in "
             "`results/records/` (written by `python -m fastbert.experiments run <table>`); do not edit by hand.",
             "", SETTING, "", "† dev subset: the run evaluated a subset of a dev set (its `eval_limit`; the default recipe evaluates "
             "Quora on 5,000 of its dev pairs).", ""]
    if any(not x.get("times_complete", True) for rows in found.values() for recs in rows.values() for x in recs):
        lines += ["≥ in the time columns: an attempt of that run lost its times (its runner was killed before "
                  "recording them); the number counts the attempts that recorded theirs.", ""]
    if dirty:
        lines += ["**⚠ WARNING: these records come from a working tree with uncommitted changes (the code that ran "
                  "is not the commit named): " + ", ".join(dirty) + ".**", ""]
    lines += ["**Not run yet** (no record): " + (", ".join(missing) if missing else "none") + ".", ""]
    lines += at_a_glance(found, runs)
    for spec in specs:
        lines += targets_section(spec, found)
    for spec in specs:
        recs = {r.name: found[t.name][tr.name] for r in spec.rows for t, tr in [target(spec, r)]
                if tr.name in found.get(t.name, {})}
        lines += table_section(spec, recs, root)
    curves = {f"{t.name}/{tr.name}" + (f" seed {x['seed']}" if x["seed"] else ""):
              (x["curve"], x["cpu_s"] / x["wall_s"] if x.get("times_complete", True) and x["wall_s"] else None)
              for s in specs if s.curves for r in s.rows for t, tr in [target(s, r)]
              for x in found.get(t.name, {}).get(tr.name, [])}
    if plots.time_to_accuracy(curves, os.path.join(root, "results", "time_to_accuracy.png")):
        lines += ["## Time to accuracy", "", "Dev mean at each evaluation against time (run.log timestamps; a chain's stages end "
                  "to end): wall-clock on the machine that ran it, and that time scaled by the run's CPU seconds / "
                  "wall seconds (about an unloaded one-thread run's wall time; it assumes the run's share of the "
                  "CPU was even over the run). Dotted: dev mean 0.75, 10 minutes.", "",
                  "![time to accuracy](results/time_to_accuracy.png)", ""]
    text = "\n".join(lines)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text
