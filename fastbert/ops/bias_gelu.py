"""bias_gelu: GELU(x + bias), the feed-forward activation (exact erf as BERT uses, or tanh).

Kernel contract (Triton: fastbert.kernels.bias_gelu, CPU: torch.ops.fastbert_C), on 2-D views
[rows, N], contiguous rows; `bias` may be an empty tensor (no bias):
  bias_gelu_forward(x, bias, approximate) -> out [rows, N] x.dtype
  bias_gelu_backward(grad_out, x, bias, approximate) -> (grad_x x.dtype, grad_bias fp32 [N] or empty)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastbert import backend
from fastbert.ops import _checks, _fused

KERNELS = ("triton", "cpu")
APPROXIMATIONS = ("none", "tanh")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none") -> torch.Tensor:
    """GELU(x + bias) over x: [..., N] with bias: [N]; fp32 math, output in x's dtype."""
    op = "bias_gelu"
    _checks.tensor(op, "x", x, min_dim=1)
    _checks.features(op, "x", x)
    if bias is not None:
        _checks.tensor(op, "bias", bias, device=x.device, shape=(x.shape[-1],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    impl = backend.resolve(op, x.device, KERNELS)
    if impl == "reference":
        return bias_gelu_reference(x, bias, approximate)
    b = x.new_empty(0) if bias is None else bias.contiguous()
    return _OP(x.reshape(-1, x.shape[-1]).contiguous(), b, approximate, impl).view(x.shape)


def bias_gelu_reference(x, bias=None, approximate="none"):
    """Pure-PyTorch reference (fp32 math)."""
    h = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(h, approximate=approximate).to(x.dtype)


# -- the kernels as one fused op (fastbert.ops._fused): their shapes for torch.compile, the autograd rule --

def _forward_fake(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    return torch.empty_like(x)


def _backward_fake(grad_out: Tensor, x: Tensor, bias: Tensor, approximate: str) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(bias.shape[0] if bias.numel() else 0, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, bias, approximate, impl = inputs
    ctx.save_for_backward(x, bias)
    ctx.args = (approximate, impl)


def _backward(ctx, grad_out):
    x, bias = ctx.saved_tensors
    gx, gb = _OP.run_backward(grad_out.contiguous(), x, bias, *ctx.args)
    return gx, gb.to(bias.dtype) if bias.numel() else None, None, None


_OP = _fused.FusedOp("bias_gelu", "fastbert.kernels.bias_gelu", _forward_fake, _backward_fake, _setup_context,
                     _backward)
