"""bias_gelu: GELU(x + bias), the feed-forward activation (exact erf as BERT uses, or tanh).

Kernel contract (Triton: fastbert.kernels.bias_gelu, CPU: torch.ops.fastbert_C), on 2-D views
[rows, N], contiguous rows; `bias` may be an empty tensor (no bias):
  bias_gelu_forward(x, bias, approximate) -> out [rows, N] x.dtype
  bias_gelu_backward(grad_out, x, bias, approximate) -> (grad_x x.dtype, grad_bias fp32 [N] or empty)
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from fastbert import backend
from fastbert.ops import _autograd, _checks

KERNELS = ("triton", "cpu")
APPROXIMATIONS = ("none", "tanh")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none") -> torch.Tensor:
    """GELU(x + bias) over x: [..., N] with bias: [N]; fp32 math, output in x's dtype."""
    op = "bias_gelu"
    _checks.tensor(op, "x", x)
    if bias is not None:
        _checks.tensor(op, "bias", bias, device=x.device, shape=(x.shape[-1],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    impl = backend.resolve(op, x.device, KERNELS)
    if impl == "reference":
        return bias_gelu_reference(x, bias, approximate)
    b = x.new_empty(0) if bias is None else bias.contiguous()
    return _forward_autograd(x.reshape(-1, x.shape[-1]).contiguous(), b, approximate, impl).view(x.shape)


def bias_gelu_reference(x, bias=None, approximate="none"):
    """Pure-PyTorch reference (fp32 math)."""
    h = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(h, approximate=approximate).to(x.dtype)


# -- the kernels as torch custom ops (torch.compile traces them; autograd calls the backward kernel) --

def _kernels(impl: str):
    return torch.ops.fastbert_C if impl == "cpu" else importlib.import_module("fastbert.kernels.bias_gelu")


def _forward_kernel(x: torch.Tensor, bias: torch.Tensor, approximate: str, impl: str) -> torch.Tensor:
    return _kernels(impl).bias_gelu_forward(x, bias, approximate)


_forward = torch.library.custom_op("fastbert::bias_gelu_forward", _forward_kernel, mutates_args=())


@_forward.register_fake
def _(x, bias, approximate, impl):
    return torch.empty_like(x)


def _backward_kernel(grad_out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approximate: str,
                     impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(_kernels(impl).bias_gelu_backward(grad_out, x, bias, approximate))


_backward = torch.library.custom_op("fastbert::bias_gelu_backward", _backward_kernel, mutates_args=())


@_backward.register_fake
def _(grad_out, x, bias, approximate, impl):
    return torch.empty_like(x), x.new_empty(bias.shape[0] if bias.numel() else 0, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, bias, approximate, impl = inputs
    ctx.save_for_backward(x, bias)
    ctx.args = (approximate, impl)


def _autograd_backward(ctx, grad_out):
    x, bias = ctx.saved_tensors
    gx, gb = _autograd.pick(_backward, _backward_kernel)(grad_out.contiguous(), x, bias, *ctx.args)
    return gx, gb.to(bias.dtype) if bias.numel() else None, None, None


_forward_autograd = _autograd.register(_forward, _forward_kernel, _setup_context, _autograd_backward)
