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


def time_to_accuracy(curves: dict[str, tuple[list[list], float]], path: str) -> bool:
    """Dev mean against minutes, one line per run: wall-clock on the machine that ran it (left) and that
    time scaled by the run's CPU seconds / wall seconds (right: about an unloaded one-thread run's wall
    time). curves: {label: ([[seconds, step, mean], ...], cpu_s / wall_s)}."""
    drawn = {k: ([(c[0] / 60, c[2]) for c in v if c[2] is not None], f) for k, (v, f) in curves.items()}
    drawn = {k: v for k, v in drawn.items() if v[0]}
    if not drawn:
        return False
    fig = _figure((11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for label, (pts, f) in sorted(drawn.items()):
        for ax, scale in zip(axes, (1.0, f)):
            ax.plot([m * scale for m, _ in pts], [v for _, v in pts], marker="o", label=label)
    for ax, xlabel in zip(axes, ("wall-clock minutes on this machine", "CPU minutes (one thread)")):
        ax.axhline(0.75, color="#999999", linestyle=":", linewidth=1)
        ax.axvline(10, color="#999999", linestyle=":", linewidth=1)
        ax.set(xlabel=xlabel, title="time to accuracy")
    axes[0].set_ylabel("dev mean (SST acc, Quora acc, STS r)")
    axes[1].legend(fontsize=7)
    fig.subplots_adjust(bottom=0.13, top=0.92, left=0.07, right=0.98, wspace=0.05)
    _save(fig, path)
    return True
