"""The figures of RESULTS.md, from the records alone: per table the dev mean of each row (the report's
beside fastbert's), and the dev mean against wall-clock time for the tables that ask for it."""
from __future__ import annotations

import os

from fastbert.experiments.specs import Spec


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path[:-4] + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def table_bars(spec: Spec, stats: dict[str, dict], path: str) -> bool:
    """Bars of the dev mean per row: report (where quoted) and fastbert (mean ± std over seeds).
    stats: {row: {"mean": (mean, std) | None, "report_mean": float | None}}. False if nothing to draw."""
    rows = [r.name for r in spec.rows if stats[r.name]["mean"] or stats[r.name]["report_mean"] is not None]
    if not any(stats[r]["mean"] for r in rows):
        return False
    fig = _figure((max(5.0, 1.1 * len(rows) + 2), 3.6))
    ax = fig.subplots()
    xs = range(len(rows))
    rep = [stats[r]["report_mean"] or 0.0 for r in rows]
    ours = [stats[r]["mean"][0] if stats[r]["mean"] else 0.0 for r in rows]
    err = [stats[r]["mean"][1] if stats[r]["mean"] else 0.0 for r in rows]
    if any(rep):
        ax.bar([x - 0.2 for x in xs], rep, width=0.4, label="report (bert-base)", color="#bbbbbb")
    ax.bar([x + 0.2 for x in xs], ours, width=0.4, yerr=err, label="fastbert (MiniLM-L6)", color="#3b75af")
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(rows, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="dev mean\n(SST acc, Quora acc, STS r)", ylim=(0, 1))
    ax.set_title(spec.title if len(spec.title) < 70 else spec.title[:67] + "...", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.subplots_adjust(bottom=0.32, top=0.9, left=0.14, right=0.98)
    _save(fig, path)
    return True


def time_to_accuracy(curves: dict[str, list[list]], path: str) -> bool:
    """Dev mean against wall-clock minutes, one line per run. curves: {label: [[seconds, step, mean]]}."""
    drawn = {k: [(c[0] / 60, c[2]) for c in v if c[2] is not None] for k, v in curves.items()}
    drawn = {k: v for k, v in drawn.items() if v}
    if not drawn:
        return False
    fig = _figure((7, 4))
    ax = fig.subplots()
    for label, pts in sorted(drawn.items()):
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.axhline(0.75, color="#999999", linestyle=":", linewidth=1)
    ax.axvline(10, color="#999999", linestyle=":", linewidth=1)
    ax.set(xlabel="wall-clock minutes on this machine", ylabel="dev mean (SST acc, Quora acc, STS r)",
           title="time to accuracy")
    ax.legend(fontsize=7)
    fig.subplots_adjust(bottom=0.13, top=0.92, left=0.11, right=0.98)
    _save(fig, path)
    return True
