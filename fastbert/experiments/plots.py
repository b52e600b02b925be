"""The figures of RESULTS.md, from the records alone: per table each row's dev metrics (the report's beside
fastbert's), and the dev mean against time for the tables that ask for it."""
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


METRICS = {"sst": "SST acc", "quora": "Quora acc", "sts": "STS Pearson r", "mean": "dev mean"}


def table_dots(spec: Spec, stats: dict[str, dict], path: str) -> int:
    """One panel per metric (SST, Quora, STS, mean; those with a value), one line per row: fastbert's value (a dot, ± std over seeds
    as a bar) and the report's (a grey diamond), each panel's axis fitted to its values so that the differences
    the table is about are visible. stats: {row: {metric: (mean, std) | None, "report": {metric: float | None}}}.
    Returns the number of panels drawn: 0 (nothing written) if no row has a fastbert value."""
    rows = [r.name for r in spec.rows if any(stats[r.name][m] for m in METRICS)
            or any(v is not None for v in stats[r.name]["report"].values())]
    if not any(stats[r][m] for r in rows for m in METRICS):
        return 0
    panels = [m for m in METRICS if any(stats[r][m] or stats[r]["report"].get(m) is not None for r in rows)]
    fig = _figure((max(7.0, 2.6 * len(panels) + 1.6), 0.32 * len(rows) + 1.3))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ys = range(len(rows))
    for ax, m in zip(axes, panels):
        for y, r in zip(ys, rows):
            ours, rep = stats[r][m], stats[r]["report"].get(m)
            if rep is not None:
                ax.plot([rep], [y], marker="D", color="#aaaaaa", linestyle="", markersize=5)
            if ours:
                ax.errorbar([ours[0]], [y], xerr=[ours[1]], marker="o", color="#3b75af", linestyle="", markersize=5,
                            capsize=2)
        ax.set_title(METRICS[m], fontsize=9)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.15)
    axes[0].set_yticks(list(ys))
    axes[0].set_yticklabels(rows, fontsize=8)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", color="#3b75af", linestyle=""),
               Line2D([], [], marker="D", color="#aaaaaa", linestyle="")]
    fig.legend(handles, ["fastbert (MiniLM-L6), ± std over seeds", "report (bert-base)"], loc="lower center",
               ncol=2, fontsize=8, frameon=False)
    fig.suptitle(spec.title if len(spec.title) < 110 else spec.title[:107] + "...", fontsize=9)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.95 / fig.get_figwidth() + 0.08, right=0.98, top=1 - 0.45 / height,
                        bottom=0.65 / height, wspace=0.08)
    _save(fig, path)
    return len(panels)


def time_to_accuracy(curves: dict[str, tuple[list[list], float]], path: str) -> bool:
    """Dev mean against minutes, one line per run: wall-clock on the machine that ran it (left) and that
    time scaled by the run's CPU seconds / wall seconds (right: about an unloaded one-thread run's wall
    time; left out where the run's times are incomplete). curves: {label: ([[seconds, step, mean], ...],
    cpu_s / wall_s or None)}."""
    drawn = {k: ([(c[0] / 60, c[2]) for c in v if c[2] is not None], f) for k, (v, f) in curves.items()}
    drawn = {k: v for k, v in drawn.items() if v[0]}
    if not drawn:
        return False
    fig = _figure((11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors
    for i, (label, (pts, f)) in enumerate(sorted(drawn.items())):
        for ax, scale in zip(axes, (1.0, f) if f is not None else (1.0,)):
            ax.plot([m * scale for m, _ in pts], [v for _, v in pts], marker="osD^vPX"[i % 7], label=label,
                    color=colors[(2 * i) % 20 + (i // 10) % 2])
    for ax, xlabel in zip(axes, ("wall-clock minutes on this machine", "CPU minutes (one thread)")):
        ax.axhline(0.75, color="#999999", linestyle=":", linewidth=1)
        ax.axvline(10, color="#999999", linestyle=":", linewidth=1)
        ax.set(xlabel=xlabel, title="time to accuracy")
    axes[0].set_ylabel("dev mean (SST acc, Quora acc, STS r)")
    axes[1].legend(fontsize=7)
    fig.subplots_adjust(bottom=0.13, top=0.92, left=0.07, right=0.98, wspace=0.05)
    _save(fig, path)
    return True
