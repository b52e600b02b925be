"""Render pytest-benchmark JSON into BENCHMARKS.md (tables) and bench/results/*.png (plots).

  python bench/report.py --run [pytest args]   run the full suite here into bench/results/<device>.json, render
                                               (refuses a tree with uncommitted changes unless --allow-dirty)
  python bench/report.py                       render every bench/results/*.json (one section per device)
  python bench/report.py a.json b.json         render these files

The suite's own benchmarks (extra_info["kind"]: train, inference, memory, matmul, model_parity, op_parity,
convergence) get purpose-made tables; every other benchmark is listed by file and group with its median
time and its scalar extra_info (GB/s, TFLOP/s, speedups, ...).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: python bench/report.py
    sys.path.insert(0, ROOT)
from bench.targets import verdicts  # noqa: E402
RESULTS = os.path.join(ROOT, "bench", "results")
OUT_MD = os.path.join(ROOT, "BENCHMARKS.md")
KINDS = ("speedup", "train", "inference", "memory", "matmul", "model_parity", "op_parity", "convergence")
MiB = 2 ** 20


def fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) and abs(x) < 10 ** 6:
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{max(digits - len(str(int(abs(x)))), 0)}f}"


def fmt_time(t) -> str:
    if not t:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if t >= scale:
            break
    return f"{t / scale:.3g} {unit}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def by_kind(benchmarks) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for b in benchmarks:
        out[b.get("extra_info", {}).get("kind", "other") if b.get("extra_info", {}).get("kind") in KINDS
            else "other"].append(b)
    return out


def median(b) -> float | None:
    return (b.get("stats") or {}).get("median")


def iqr_pct(b) -> str:
    s = b.get("stats") or {}
    return f"{100 * s['iqr'] / s['median']:.0f}%" if s.get("median") else "-"


# -- sections ------------------------------------------------------------------------------------------

def machine_section(data, path) -> str:
    m, fb = data["machine_info"], data["machine_info"].get("fastbert", {})
    c = data.get("commit_info", {})
    warning = (f"> **NOT A CLEAN RESULT: measured on a dirty tree** (uncommitted changes on top of commit "
               f"{c.get('id', '?')[:10]}): no commit reproduces these numbers. Re-run `python bench/report.py --run` "
               f"from a clean tree.\n\n" if c.get("dirty") else "")
    rows = [["device", f"{fb.get('device', '?')}: {fb.get('device_name', '?')}"],
            ["CPU", f"{fb.get('cpu_model', m.get('processor', '?'))} ({', '.join(fb.get('cpu_flags', [])) or '-'}), "
                    f"{fb.get('torch_threads', '?')} torch threads"],
            ["software", f"Python {m.get('python_version')}, torch {fb.get('torch')}, CUDA {fb.get('cuda')}, "
                         f"triton {fb.get('triton')}, transformers {fb.get('transformers')}, "
                         f"fastbert {fb.get('fastbert')}"],
            ["fastbert ops (backend auto)", ", ".join(f"{k}: {v}" for k, v in fb.get("op_backends", {}).items())],
            ["fastbert optimizer", fb.get("optimizer", "?")],
            ["matmul rate (measured)", f"bf16 {fmt(fb.get('bf16_matmul_tflops'))} TFLOP/s, fp32 "
                                       f"{fmt(fb.get('fp32_matmul_tflops'))} TFLOP/s"
                                       + ("" if fb.get("bf16_matmuls", True) else
                                          " (no bf16 matmul instructions: fastbert trains in fp32 here)")],
            ["run", f"{data.get('datetime', '?')[:19]}, commit {c.get('id', '?')[:10]}"
                    f"{' (dirty)' if c.get('dirty') else ''}, quick mode: {fb.get('quick')}"],
            ["results file", os.path.relpath(path, ROOT)]]
    return warning + table(["", ""], rows) + skipped_section(fb.get("skipped", []))


def skipped_section(skipped: list[str]) -> str:
    """One line per reason: how many benchmarks it skipped, in which files ("<test id>: <reason>" entries)."""
    reasons = defaultdict(list)
    for s in skipped:
        test, reason = s.split(": ", 1)
        reasons[reason].append(test.split("::")[0])
    lines = [f"- {len(files)} in {', '.join(f'`{f}`' for f in dict.fromkeys(files))}: {r}\n"
             for r, files in reasons.items()]
    return "\nSkipped here:\n" + "".join(lines) if lines else ""


def _matmul_rate(kinds, dtype: str) -> float | None:
    rates = [b["extra_info"].get("tflops") for b in kinds.get("matmul", []) if b["extra_info"]["dtype"] == dtype]
    rates = [r for r in rates if r]
    return max(rates) if rates else None


def _precision(machine: dict) -> str:
    """The precision fastbert trains in on the record's machine: fp32 where it has no bf16 matmuls."""
    return "bf16" if machine.get("bf16_matmuls", True) else "fp32"


def throughput_section(kinds, kind, title, device, plot, machine: dict) -> str:
    rows = kinds.get(kind, [])
    if not rows:
        return ""
    dtype = _precision(machine)
    peak = _matmul_rate(kinds, dtype) or machine.get(f"{dtype}_matmul_tflops")
    out = f"### {title}\n\n"
    shapes = sorted({b["extra_info"]["shape"] for b in rows}, key=["minilm", "bert-base"].index)
    speeds = {}
    for shape in shapes:
        group = [b for b in rows if b["extra_info"]["shape"] == shape]
        tps = {b["extra_info"]["variant"]: b["extra_info"].get("tokens_per_s") for b in group}
        speeds[shape] = tps
        ours = tps.get("fastbert")
        e0 = group[0]["extra_info"]
        out += (f"**{shape}**: {e0['batches']} batches, {e0['sequences']:.0f} sequences, {e0['real_tokens']:.0f} real "
                f"tokens per round on average (new SST / Quora / STS batches every round, true lengths)\n\n")
        body = []
        for b in group:
            e = b["extra_info"]
            tp = e.get("tokens_per_s")
            body.append([e["variant"], e.get("precision", e["autocast"]), median(b), iqr_pct(b),
                         (b.get("stats") or {}).get("rounds"), tp,
                         f"{100 * (1 - e['real_tokens'] / e['processed_tokens']):.0f}%", e.get("tflops"),
                         f"{100 * e['tflops'] / peak:.1f}%" if peak and e.get("tflops") else "-",
                         f"{ours / tp:.2f}x" if ours and tp else "-"])
        out += table(["variant", "precision", "median s/round", "IQR", "rounds", "real tokens/s", "padding",
                      "TFLOP/s", "MFU", "fastbert speed-up"], body) + "\n"
    if kind == "train":
        out += ("The variants above ran one after another, so the machine's drift between them lands in their "
                "ratios; the CPU targets are judged by the interleaved measurement only.\n\n")
    out += (f"MFU: model FLOPs on real tokens (encoder matmuls + attention; backward = 2x forward) per second, "
            f"over the best {dtype} matmul rate measured on this machine ({fmt(peak)} TFLOP/s), {dtype} being "
            f"what fastbert trains in here.\n\n" if peak else "\n")
    if plot and any(v for s in speeds.values() for v in s.values()):
        out += f"![{title}]({os.path.relpath(plot(speeds), ROOT)})\n\n"
    return out


def targets_section(rows, machine: dict) -> str:
    """The CPU targets (bench/targets.py) judged on each interleaved record; machine: machine_info["fastbert"],
    for records that do not carry their thread count or bf16 matmul rate."""
    lines = []
    for b in rows:
        record = {"bf16_matmul_tflops": machine.get("bf16_matmul_tflops"), "precision": _precision(machine),
                  **b["extra_info"]}
        lines += [f"- {v.line()}\n" for v in verdicts(record, machine.get("torch_threads"))]
    return ("CPU targets (training step, variants interleaved; bench/targets.py): the median of the per-round values "
            "against the target, the spread their interquartile range; `pytest bench/ --benchmark-only` fails on a "
            "target missed by more than the spread.\n\n" + "".join(lines) + "\n")


def gpu_targets_section(benchmarks) -> str:
    """The GPU targets (bench/gpu_targets.py): one line each, met or NOT met."""
    rows = [b["extra_info"]["target"] for b in benchmarks if isinstance(b.get("extra_info", {}).get("target"), dict)]
    if not rows:
        return ""
    body = [[t["what"] + (f" ({t['workload']})" if "workload" in t else ""), f"{t['value']:.2f}",
             f">= {t['threshold']:g}", "met" if t["met"] else "NOT met"] for t in rows]
    met = sum(t["met"] for t in rows)
    return f"### GPU targets: {met} of {len(rows)} met\n\n" + table(["target", "measured", "target", ""], body) + "\n"


def speedup_section(kinds, device, machine: dict | None = None) -> str:
    rows = sorted(kinds.get("speedup", []), key=lambda b: ["minilm", "bert-base"].index(b["extra_info"]["shape"]))
    if not rows:
        return ""
    out = ("### Training-step speed-up, variants interleaved\n\nEvery round runs new real batches through each "
           "variant in turn, the order rotated every round (`test_train_speedup`; `python -m bench.cpu_speedup` "
           "does the same from the command line); medians per variant, ratios of medians.\n\n")
    body = []
    for b in rows:
        e = b["extra_info"]
        for v, m in e["median_s"].items():
            body.append([e["shape"], v, f"{1e3 * m / e['batches']:.1f}", e["real_tokens"] / m,
                         f"{e['speedup'].get(v, 1.0):.2f}x"])
    per_round = ", ".join(f"{b['extra_info']['shape']}: {b['extra_info']['rounds']} rounds of "
                          f"{b['extra_info']['sequences']} sequences" for b in rows)
    out += f"{per_round} (SST / Quora / STS in turn).\n\n"
    out += table(["shape", "variant", "ms/step", "real tokens/s", "fastbert speed-up"], body) + "\n"
    if device == "cpu":
        out += targets_section(rows, machine or {})
    return out


def memory_section(kinds, plot) -> str:
    rows = kinds.get("memory", [])
    if not rows:
        return ""
    e0 = rows[0]["extra_info"]
    out = (f"### Peak memory of a training step\n\n{e0['sequences']} sequences of exactly N tokens (CFIMDB "
           f"reviews), steady state (after one step). Method: {e0['method']}. *step peak*: tensors allocated "
           f"during the step (activations, gradients, workspaces); *state*: parameters + optimizer state held "
           f"between steps; *total* = both.\n\n")
    base = {(b["extra_info"]["shape"], b["extra_info"]["seqlen"]): b["extra_info"]["peak_bytes"] for b in rows
            if b["extra_info"]["variant"] == "hf-fp32"}
    body = [[e["shape"], e["seqlen"], e["variant"], e["step_peak_bytes"] / MiB, e["state_bytes"] / MiB,
             e["peak_bytes"] / MiB,
             f"{e['peak_bytes'] / base[(e['shape'], e['seqlen'])]:.2f}x" if (e["shape"], e["seqlen"]) in base else "-"]
            for e in (b["extra_info"] for b in rows)]
    out += table(["model", "tokens/seq", "variant", "step peak MiB", "state MiB", "total MiB", "total vs hf-fp32"],
                 body)
    if plot:
        out += f"\n![memory]({os.path.relpath(plot(rows), ROOT)})\n"
    return out + "\n"


def matmul_section(kinds) -> str:
    rows = kinds.get("matmul", [])
    if not rows:
        return ""
    body = [[e["dtype"], e["shape"], f"{e['m']} x {e['k']} x {e['n']}", median(b), e.get("tflops")]
            for b in rows for e in [b["extra_info"]]]
    return "### Matmul rate (the FFN matmul, MFU's denominator)\n\n" + table(
        ["dtype", "model", "m x k x n", "median s (10 matmuls)", "TFLOP/s"], body) + "\n"


def _err(e) -> str:
    return f"{e['abs']:.1e} / {e['rel']:.1e}"


def parity_section(kinds, plot) -> str:
    out = ""
    rows = kinds.get("model_parity", [])
    if rows:
        out += ("### Parity: whole model (all-MiniLM-L6-v2, a real Quora batch, dropout off)\n\n"
                "Max abs / max rel error (abs over the tensor's max |value|; for gradients the worst "
                "parameter) against Hugging Face's BertModel in fp32. Lower-precision rows run under autocast.\n\n")
        body = []
        for b in rows:
            e = b["extra_info"]
            for impl in ("fastbert", "reference", "hf", "fastbert_vs_reference"):
                r = e["errors"][impl]
                body.append([e["dtype"], impl.replace("_", " "), _err(r["hidden"]), _err(r["pooler"]),
                             _err(r["grads"])])
        out += table(["dtype", "implementation", "hidden states", "pooler", "gradients"], body) + "\n"
    rows = kinds.get("op_parity", [])
    if rows:
        out += ("### Parity: each op (backend auto against the fp32 reference)\n\n"
                "Max abs / max rel error of the output and of the worst input gradient; the reference "
                "backend's own error in the same dtype is the baseline (pass: at most 2x it, or under the "
                "dtype's tolerance).\n\n")
        body = [[e["extra_info"]["op"], e["extra_info"]["dtype"], e["extra_info"]["backend"],
                 _err(e["extra_info"]["errors"]["fastbert"]["out"]),
                 _err(e["extra_info"]["errors"]["reference"]["out"]),
                 _err(e["extra_info"]["errors"]["fastbert"]["grads"]),
                 _err(e["extra_info"]["errors"]["reference"]["grads"])] for e in rows]
        out += table(["op", "dtype", "backend", "fastbert out", "reference out", "fastbert grads",
                      "reference grads"], body) + "\n"
    rows = kinds.get("convergence", [])
    if rows:
        e0 = rows[0]["extra_info"]
        out += (f"### Parity: loss curves ({e0['steps']} steps, {e0['sequences_per_step']} sequences per step, "
                f"SST / Quora / STS in turn, dropout on)\n\n"
                "fastbert and the reference backend train all-MiniLM-L6-v2 on the same batches and draw the "
                "same dropout masks, so their curves must agree step by step (|loss - reference| <= atol + "
                "rtol |reference|); *update diff*: relative difference of the total weight update.\n\n")
        body = [[e["dtype"], f"{e['variants']['fastbert']} vs {e['variants']['reference']}", e["max_abs_loss_diff"],
                 e["update_rel_diff"],
                 f"atol {e['tolerance']['atol']:g}, rtol {e['tolerance']['rtol']:g}, "
                 f"update {e['tolerance']['update']:g}",
                 e["first_quarter_loss"], e["last_quarter_loss"]]
                for e in (b["extra_info"] for b in rows)]
        out += table(["dtype", "runs", "max abs loss diff", "update diff", "tolerance", "loss, first quarter",
                      "loss, last quarter"], body)
        if plot:
            out += f"\n![loss curves]({os.path.relpath(plot(rows), ROOT)})\n"
        out += "\n"
    return out


def other_section(rows) -> str:
    if not rows:
        return ""
    out = "### Other benchmarks\n\n"
    groups = defaultdict(list)
    for b in rows:
        groups[(b["fullname"].split("::")[0], b.get("group") or "")].append(b)
    for (path, group), bs in sorted(groups.items()):
        keys = []
        for b in bs:
            keys += [k for k, v in b.get("extra_info", {}).items()
                     if isinstance(v, (int, float, str, bool)) and k not in keys]
        out += f"**{path}**{f' - {group}' if group else ''}\n\n"
        body = [[b["name"].split("[", 1)[-1].rstrip("]") if "[" in b["name"] else b["name"], fmt_time(median(b)),
                 iqr_pct(b), (b.get("stats") or {}).get("rounds"), *[b.get("extra_info", {}).get(k) for k in keys]]
                for b in bs]
        out += table(["benchmark", "median", "IQR", "rounds", *keys], body) + "\n"
    return out


# -- plots ---------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(RESULTS, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plotters(prefix: str) -> dict:
    def throughput(kind):
        def plot(speeds):
            plt = _plt()
            fig, axes = plt.subplots(1, len(speeds), figsize=(5 * len(speeds), 3.5), squeeze=False)
            for ax, (shape, tps) in zip(axes[0], speeds.items()):
                names = [n for n, v in tps.items() if v]
                ax.barh(names, [tps[n] for n in names],
                        color=["C1" if n.startswith("fastbert") else "C0" for n in names])
                ax.set_title(f"{kind}: {shape}")
                ax.set_xlabel("real tokens / s")
                ax.invert_yaxis()
            return _save(plt, fig, f"{prefix}-{kind}.png")
        return plot

    def memory(rows):
        plt = _plt()
        shapes = sorted({b["extra_info"]["shape"] for b in rows}, key=["minilm", "bert-base"].index)
        fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.5), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            es = [b["extra_info"] for b in rows if b["extra_info"]["shape"] == shape]
            lens, variants = sorted({e["seqlen"] for e in es}), list(dict.fromkeys(e["variant"] for e in es))
            for i, v in enumerate(variants):
                vals = {e["seqlen"]: e["peak_bytes"] / MiB for e in es if e["variant"] == v}
                ax.bar([j + i / (len(variants) + 1) for j in range(len(lens))], [vals.get(n, 0) for n in lens],
                       width=1 / (len(variants) + 1), label=v)
            ax.set_xticks([j + (len(variants) - 1) / (2 * (len(variants) + 1)) for j in range(len(lens))], lens)
            ax.set_xlabel("tokens per sequence")
            ax.set_ylabel("peak MiB")
            ax.set_title(f"training-step memory: {shape}")
            ax.legend()
        return _save(plt, fig, f"{prefix}-memory.png")

    def convergence(rows):
        plt = _plt()
        fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.5), squeeze=False)
        for ax, b in zip(axes[0], rows):
            e = b["extra_info"]
            for name, losses in e["losses"].items():
                k = 21  # 7 rounds of the three tasks
                smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                          for i in range(len(losses))]
                ax.plot(smooth, label=f"{name} ({e['variants'][name]})", lw=1.2 if name == "fastbert" else 2,
                        ls="-" if name != "fastbert" else "--")
            ax.set_title(f"loss, {e['dtype']} (running mean of 21 steps)")
            ax.set_xlabel("step")
            ax.legend()
        return _save(plt, fig, f"{prefix}-convergence.png")

    return {"train": throughput("train"), "inference": throughput("inference"), "memory": memory,
            "convergence": convergence}


# -- the document --------------------------------------------------------------------------------------

HEADER = """# Benchmarks

Current numbers of `pytest bench/ --benchmark-only`, rendered by `bench/report.py`. Regenerate on a
machine (the full suite, then this file and the plots; one JSON per device type is kept):

```bash
python bench/report.py --run            # CPU here; on a GPU machine it writes bench/results/cuda.json
python bench/report.py                  # re-render from bench/results/*.json only
```

Quick mode for CI: `pytest bench/ --benchmark-disable` (tiny model, every benchmark runs once, no timing).

How to read it: every comparison is measured in one process on the same batches, and every speed is a
median over rounds; speed-ups are ratios of medians. *Real tokens* are non-padding tokens: Hugging Face
runs padded batches (the padding column says how much of its work is padding), fastbert runs packed ones.
Timings on a shared machine are noisy (see the IQR column); ratios are steadier than absolute numbers.
"""


def scaling_section(paths: list[str]) -> str:
    """The distributed scaling records (python -m bench.distributed_scaling): one row each."""
    records = []
    for path in paths:
        with open(path) as f:
            records.append(json.load(f))
    if not records:
        return ""
    body = [[r["shape"], r["cpu_model"], r["median"]["one_process"], r["median"]["ranks"], f"{r['efficiency']:.2f}",
             f"{r['rounds']} x {r['steps']} steps (first {r['warmup']} untimed)",
             f"{r['commit']['commit'][:10]}{' (dirty)' if r['commit']['dirty'] else ''}, {r['datetime'][:16]}"]
            for r in records]
    n = records[0]["ranks"]
    return (f"\n## Scaling on one CPU machine: {n} ranks x 1 thread against 1 process x {n} threads\n\n"
            "`python -m bench.distributed_scaling`: the default multitask run (torchrun, gloo) against the same run in "
            "one process, same global batches and steps, rounds alternating; training tokens/s (all ranks), medians "
            "over rounds; efficiency = ranks / one process.\n\n"
            + table(["shape", "CPU", "1 process tokens/s", "ranks tokens/s", "efficiency", "rounds", "commit, date"],
                    body))


def render(paths: list[str], plots: bool = True) -> str:
    doc = HEADER
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        device = data["machine_info"].get("fastbert", {}).get("device", os.path.splitext(os.path.basename(path))[0])
        p = plotters(os.path.splitext(os.path.basename(path))[0]) if plots else {}  # plots named as the file
        kinds = by_kind(data["benchmarks"])
        fb = data["machine_info"].get("fastbert", {})
        doc += f"\n## {device.upper()}: {fb.get('device_name', '?')}\n\n" + machine_section(data, path) + "\n"
        doc += gpu_targets_section(data["benchmarks"])
        doc += speedup_section(kinds, device, fb)
        doc += throughput_section(kinds, "train", "Training step (forward + backward + optimizer)", device,
                                  p.get("train"), fb)
        doc += throughput_section(kinds, "inference", "Inference (forward, no grad)", device, p.get("inference"), fb)
        doc += memory_section(kinds, p.get("memory"))
        doc += matmul_section(kinds)
        doc += parity_section(kinds, p.get("convergence"))
        doc += other_section(kinds.get("other", []))
    return doc + scaling_section(sorted(glob.glob(os.path.join(RESULTS, "scaling", "*.json"))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="*", help="pytest-benchmark JSON files (default: bench/results/*.json)")
    ap.add_argument("--out", default=OUT_MD, help="markdown file to write (default: BENCHMARKS.md)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="let --run measure a tree with uncommitted changes (the report then says so loudly)")
    ap.add_argument("--no-plots", action="store_true", help="tables only (no PNGs written into bench/results)")
    ap.add_argument("--run", nargs=argparse.REMAINDER, metavar="PYTEST_ARGS",
                    help="run the full suite first, into bench/results/<device>.json (the rest goes to pytest)")
    args = ap.parse_args(argv)
    code = 0
    if args.run is not None:
        sys.path.insert(0, ROOT)
        import torch

        from bench.machine import device_name, git_state, results_name

        git = git_state(ROOT)
        if git["dirty"] and not args.allow_dirty:
            ap.error(f"the tree has uncommitted changes on top of {git['commit'][:10]}: commit them first "
                     f"(results come from a named commit), or pass --allow-dirty")

        out = os.path.join(RESULTS, f"{results_name(torch.device(device_name()))}.json")
        code = subprocess.call([sys.executable, "-m", "pytest", "bench/", "--benchmark-only", f"--benchmark-json={out}",
                                "-q", *args.run], cwd=ROOT)
    paths = args.json or sorted(glob.glob(os.path.join(RESULTS, "*.json")))
    if not paths:
        ap.error("no results: run `python bench/report.py --run` first")
    os.makedirs(RESULTS, exist_ok=True)
    doc = render(paths, plots=not args.no_plots)
    with open(args.out, "w") as f:
        f.write(doc)
    print(f"wrote {os.path.relpath(args.out)} from {', '.join(os.path.relpath(p) for p in paths)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
