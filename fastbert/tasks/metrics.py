"""The metrics the reports use: accuracy (SST, Quora, NLI) and Pearson correlation (STS). A prediction that
is NaN or infinite makes the metric NaN: a broken model never reads as a number."""
from __future__ import annotations

import numpy as np


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape or pred.size == 0:
        raise ValueError(f"accuracy needs two equal, non-empty shapes; got {pred.shape} and {gold.shape}")
    if np.issubdtype(pred.dtype, np.floating) and not np.isfinite(pred).all():
        return float("nan")
    return float((pred == gold).mean())


def pearson(pred, gold) -> float:
    """Pearson's r in float64; 0.0 when either side is constant (no linear relation to measure), NaN when
    either holds a NaN or infinite value."""
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"pearson needs two equal 1-D shapes of 2+ values; got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0
