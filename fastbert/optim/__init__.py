"""Optimizers: FusedAdam / FusedAdamW (torch.optim.Adam / AdamW semantics, fused kernels, fused clipping)."""
from fastbert.optim.adam import FusedAdam, FusedAdamW

__all__ = ["FusedAdam", "FusedAdamW"]
