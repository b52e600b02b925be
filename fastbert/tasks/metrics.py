"""The metrics the reports use: accuracy (SST, Quora, NLI) and Pearson correlation (STS)."""
from __future__ import annotations

import numpy as np


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape or pred.size == 0:
        raise ValueError(f"accuracy needs two equal, non-empty shapes; got {pred.shape} and {gold.shape}")
    return float((pred == gold).mean())


def pearson(pred, gold) -> float:
    """Pearson's r in float64; 0.0 when either side is constant (no linear relation to measure)."""
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"pearson needs two equal 1-D shapes of 2+ values; got {x.shape} and {y.shape}")
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0
