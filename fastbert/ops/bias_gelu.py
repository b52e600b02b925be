"""bias_gelu: GELU(x + bias), the feed-forward activation (exact erf as BERT uses, or tanh)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert import backend
from fastbert.ops import _checks

IMPLEMENTED = ("reference",)
APPROXIMATIONS = ("none", "tanh")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none") -> torch.Tensor:
    """GELU(x + bias) over x: [..., N] with bias: [N]; fp32 math, output in x's dtype."""
    op = "bias_gelu"
    _checks.tensor(op, "x", x)
    if bias is not None:
        _checks.tensor(op, "bias", bias, device=x.device, shape=(x.shape[-1],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    impl = backend.resolve(op, x.device, IMPLEMENTED)
    if impl == "reference":
        return bias_gelu_reference(x, bias, approximate)
    raise AssertionError(impl)


def bias_gelu_reference(x, bias=None, approximate="none"):
    """Pure-PyTorch reference (fp32 math)."""
    h = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(h, approximate=approximate).to(x.dtype)
