"""layer_norm: LayerNorm(dropout(x + input_bias) + residual), BERT's post-LN "add & norm" in one op.

Statistics and arithmetic in fp32 whatever the storage dtype; the output has x's dtype. Dropout masks
follow fastbert.ops.philox (row-wise site over the [rows, hidden] view) on every backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert import backend
from fastbert.ops import _checks, philox

IMPLEMENTED = ("reference",)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-12, *,
               residual: torch.Tensor | None = None, input_bias: torch.Tensor | None = None,
               dropout_p: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """LayerNorm over the last dimension of `dropout(x + input_bias) + residual`.

    x: [..., N]; weight, bias, input_bias: [N]; residual: x's shape (any float dtype).
    """
    op = "layer_norm"
    _checks.tensor(op, "x", x)
    n = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias), ("input_bias", input_bias)):
        if t is not None:
            _checks.tensor(op, name, t, device=x.device, shape=(n,))
    if residual is not None:
        _checks.tensor(op, "residual", residual, device=x.device, shape=tuple(x.shape))
    _checks.dropout_p(op, dropout_p)
    seed = philox.draw_seed(generator) if dropout_p > 0 else 0
    impl = backend.resolve(op, x.device, IMPLEMENTED)
    if impl == "reference":
        return layer_norm_reference(x, weight, bias, eps, residual, input_bias, dropout_p, seed)
    raise AssertionError(impl)


def layer_norm_reference(x, weight, bias, eps, residual=None, input_bias=None, dropout_p=0.0, seed=0):
    """Pure-PyTorch reference (fp32 math)."""
    h = x.float()
    if input_bias is not None:
        h = h + input_bias.float()
    if dropout_p > 0:
        keep = philox.keep_mask_rows(seed, dropout_p, h.numel() // h.shape[-1], h.shape[-1], h.device)
        h = h * keep.view(h.shape) * (1.0 / (1.0 - dropout_p))
    if residual is not None:
        h = h + residual.float()
    return F.layer_norm(h, h.shape[-1:], weight.float(), bias.float(), eps).to(x.dtype)
