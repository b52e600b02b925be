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
    """A run directory. A training run (deferred=True) writes config.yaml only at begin(), once its start is
    restored, so a failed resume leaves the saved settings as they were."""

    def __init__(self, path: str, cfg: dict, deferred: bool = False):
        self.path, self.cfg = path, cfg
        os.makedirs(path, exist_ok=True)
        self.metrics = os.path.join(path, "metrics.jsonl")
        self.inherited = _end_lines(self.metrics)  # bytes written by earlier starts of this run
        if not deferred:
            self.save_config()
        self.started = time.time()

    def save_config(self) -> None:
        atomic_write(os.path.join(self.path, "config.yaml"), yaml.safe_dump(self.cfg, sort_keys=False))

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
        """The records of metrics.jsonl (a line torn by a kill mid-write is left out)."""
        if not os.path.exists(self.metrics):
            return []
        with open(self.metrics, "rb") as f:
            return _parse(f.read())

    def begin(self, step: int) -> None:
        """The run (re)starts at `step`, after `step` was restored: config.yaml is written, and the records of
        earlier starts are kept only up to `step` and without those every start makes again (skipped-row
        events, the final result); this start's own records stay. Then metrics.jsonl reads as one run."""
        self.save_config()
        data = b""
        if os.path.exists(self.metrics):
            with open(self.metrics, "rb") as f:
                data = f.read()
        old = [r for r in _parse(data[:self.inherited])
               if isinstance(r.get("step"), int) and r["step"] <= step and not {"event", "final"} & r.keys()]
        atomic_write(self.metrics, "".join(json.dumps(r) + "\n" for r in old + _parse(data[self.inherited:])))
        self.inherited = os.path.getsize(self.metrics)

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


def _end_lines(path: str) -> int:
    """The size of `path` (0 if absent), after ending a line torn by a kill mid-write."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
                size += 1
    return size


def _parse(data: bytes) -> list[dict]:
    """JSON lines; a line that is not a JSON object (torn by a kill mid-write) is left out."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def dev_table(dev: dict, metric_names: dict, note: str = "") -> str:
    """A Markdown table: task, metric, value, and the mean of the tasks' main metrics."""
    lines = ["| task | metric | dev |", "|---|---|---|"]
    for t, m in dev.items():
        lines.append(f"| {t} | {metric_names[t]} | {m['main']:.3f} |")
    if len(dev) > 1:
        lines.append(f"| mean | | {sum(m['main'] for m in dev.values()) / len(dev):.3f} |")
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"
