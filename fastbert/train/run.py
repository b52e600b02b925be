"""A run directory: config.yaml (resolved settings), run.log, metrics.jsonl, curves.png, dev_table.md."""
from __future__ import annotations

import glob
import json
import os
import sys
import time

import yaml
from tqdm import tqdm

from fastbert._io import atomic_write
from fastbert.errors import NotFoundError


def default_dir(stage: str, resume: bool) -> str:
    """runs/<stage>-<time>; with resume, the newest runs/<stage>-*."""
    if resume:
        found = sorted(d for d in glob.glob(os.path.join("runs", f"{stage}-*")) if os.path.isdir(d))
        if found:
            return found[-1]
        raise NotFoundError(f"--resume: no runs/{stage}-* here; pass --run_dir")
    return os.path.join("runs", f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}")


class Run:
    def __init__(self, path: str, cfg: dict):
        self.path = path
        os.makedirs(path, exist_ok=True)
        atomic_write(os.path.join(path, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False))
        self.metrics = os.path.join(path, "metrics.jsonl")
        self.started = time.time()

    def log(self, msg: str, echo: bool = True) -> None:
        """A line in run.log, and on stderr (above any progress bar) if echo."""
        if echo:
            tqdm.write(msg, file=sys.stderr)
        with open(os.path.join(self.path, "run.log"), "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def record(self, rec: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def records(self) -> list[dict]:
        if not os.path.exists(self.metrics):
            return []
        with open(self.metrics, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate(self, step: int) -> None:
        """Resuming from `step`: forget records of later steps (they will be made again)."""
        keep = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    def plot(self) -> None:
        """curves.png: training loss per task and dev metrics against steps."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        recs = self.records()
        train = [r for r in recs if "loss" in r]
        dev = [r for r in recs if "dev" in r]
        if not train:
            return
        fig = Figure(figsize=(11, 4))
        FigureCanvasAgg(fig)
        a, b = fig.subplots(1, 2)
        for t in sorted({t for r in train for t in r["loss"]}):
            a.plot(*zip(*[(r["step"], r["loss"][t]) for r in train if t in r["loss"]]), label=t)
        a.set(xlabel="step", ylabel="training loss", title="loss")
        a.legend()
        for t in sorted({t for r in dev for t in r["dev"]}):
            b.plot(*zip(*[(r["step"], r["dev"][t]["main"]) for r in dev if t in r["dev"]]), marker="o", label=t)
        b.set(xlabel="step", ylabel="dev metric", title="dev (accuracy / Pearson)")
        if dev:
            b.legend()
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
        atomic_write(os.path.join(self.path, "curves.png"), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def dev_table(dev: dict, metric_names: dict, note: str = "") -> str:
    """A Markdown table: task, metric, value, and the mean of the tasks' main metrics."""
    lines = ["| task | metric | dev |", "|---|---|---|"]
    for t, m in dev.items():
        lines.append(f"| {t} | {metric_names[t]} | {m['main']:.3f} |")
    if len(dev) > 1:
        lines.append(f"| mean | | {sum(m['main'] for m in dev.values()) / len(dev):.3f} |")
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"
