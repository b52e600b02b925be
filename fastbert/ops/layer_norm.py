"""layer_norm: LayerNorm(dropout(x + input_bias) + residual), BERT's post-LN "add & norm" in one op.

Statistics and arithmetic in fp32 whatever the storage dtype; the output has x's dtype. Dropout masks
follow fastbert.ops.philox (row-wise site over the [rows, hidden] view, rows keyed by `dropout_keys`) on
every backend.

Kernel contract (Triton: fastbert.kernels.layer_norm, CPU: torch.ops.fastbert_C), on 2-D views
[rows, N], contiguous rows:
  layer_norm_forward(x, weight, bias, residual?, input_bias?, eps, dropout_p, seed, keys?)
      -> (out [rows, N] x.dtype, h, mean [rows] fp32, rstd [rows] fp32)
     h is the pre-norm sum dropout(x + input_bias) + residual in x's dtype, or an empty tensor when
     there is no residual, input_bias or dropout (then h is x, which autograd keeps anyway).
  layer_norm_backward(grad_out, h, weight, mean, rstd, dropout_p, seed, keys?, has_input_bias)
      -> (grad_h, grad_x, grad_weight fp32 [N], grad_bias fp32 [N], grad_input_bias fp32 [N])
     grad_h (the residual's gradient) in h's dtype; grad_x = dropout-masked grad_h, an empty tensor
     when dropout_p == 0 (it would equal grad_h); grad_input_bias (column sums of grad_x) an empty
     tensor without input_bias. (Outputs of a custom op may not alias each other, hence the empties.)
  keys: int64 [rows], the rows' dropout keys (philox: element key[row] * N + col); None: the row index.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastbert import backend
from fastbert.ops import _checks, _fused, philox

KERNELS = ("triton", "cpu")


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-12, *,
               residual: torch.Tensor | None = None, input_bias: torch.Tensor | None = None,
               dropout_p: float = 0.0, generator: torch.Generator | None = None,
               dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the last dimension of `dropout(x + input_bias) + residual`.

    x: [..., N]; weight, bias, input_bias: [N]; residual: x's shape (any float dtype); dropout_keys: int64
    x.shape[:-1], each row's key in the dropout mask (fastbert.ops.philox; None: its index in the [rows, N] view).
    """
    op = "layer_norm"
    _checks.tensor(op, "x", x, min_dim=1)
    _checks.features(op, "x", x)
    n = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias), ("input_bias", input_bias)):
        if t is not None:
            _checks.tensor(op, name, t, device=x.device, shape=(n,))
    if residual is not None:
        _checks.tensor(op, "residual", residual, device=x.device, shape=tuple(x.shape))
    _checks.dropout_p(op, dropout_p)
    seed = philox.draw_seed(generator) if dropout_p > 0 else 0
    keys = None
    if dropout_keys is not None and dropout_p > 0:
        keys = dropout_keys.reshape(-1)
        philox.check_keys(op, keys, x.numel() // n, x.device, 2**63 // n)
    impl = backend.resolve(op, x.device, KERNELS)
    if impl == "reference":
        return layer_norm_reference(x, weight, bias, eps, residual, input_bias, dropout_p, seed, keys)
    rows = lambda t: None if t is None else t.reshape(-1, n).contiguous()  # noqa: E731
    out = _OP(rows(x), weight.contiguous(), bias.contiguous(), rows(residual),
              None if input_bias is None else input_bias.contiguous(), eps, dropout_p, seed,
              None if keys is None else keys.contiguous(), impl)[0]
    return out.view(x.shape)


def layer_norm_reference(x, weight, bias, eps, residual=None, input_bias=None, dropout_p=0.0, seed=0, keys=None):
    """Pure-PyTorch reference (fp32 math); keys: the rows' dropout keys (None: their indices)."""
    h = x.float()
    if input_bias is not None:
        h = h + input_bias.float()
    if dropout_p > 0:
        keep = philox.keep_mask_rows(seed, dropout_p, h.numel() // h.shape[-1], h.shape[-1], h.device, keys)
        h = h * keep.view(h.shape) * (1.0 / (1.0 - dropout_p))
    if residual is not None:
        h = h + residual.float()
    return F.layer_norm(h, h.shape[-1:], weight.float(), bias.float(), eps).to(x.dtype)


# -- the kernels as one fused op (fastbert.ops._fused): their shapes for torch.compile, the autograd rule --

def _forward_fake(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None, input_bias: Tensor | None,
                  eps: float, dropout_p: float, seed: int,
                  keys: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    keep_h = residual is not None or input_bias is not None or dropout_p > 0
    stats = x.new_empty(x.shape[0], dtype=torch.float32)
    return torch.empty_like(x), torch.empty_like(x) if keep_h else x.new_empty(0), stats, torch.empty_like(stats)


def _backward_fake(grad_out: Tensor, h: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, dropout_p: float,
                   seed: int, keys: Tensor | None,
                   has_input_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    param = lambda: weight.new_empty(weight.shape[0], dtype=torch.float32)  # noqa: E731
    return (torch.empty_like(h), torch.empty_like(h) if dropout_p > 0 else h.new_empty(0), param(), param(),
            param() if has_input_bias else h.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, input_bias, eps, dropout_p, seed, keys, impl = inputs
    _, h, mean, rstd = output
    ctx.save_for_backward(h if h.numel() else x, weight, mean, rstd, keys)
    ctx.mark_non_differentiable(h, mean, rstd)  # saved for the backward only: autograd makes no zero grads for them
    ctx.set_materialize_grads(False)
    ctx.args = (dropout_p, seed)
    ctx.flags = (input_bias is not None, impl)
    ctx.dtypes = (x.dtype, None if residual is None else residual.dtype, weight.dtype, bias.dtype,
                  None if input_bias is None else input_bias.dtype)


def _backward(ctx, grad_out, _grad_h, _grad_mean, _grad_rstd):
    gh, gx, gw, gb, gib = _OP.run_backward(grad_out.contiguous(), *ctx.saved_tensors[:4], *ctx.args,
                                           ctx.saved_tensors[4], *ctx.flags)
    x_dtype, r_dtype, w_dtype, b_dtype, ib_dtype = ctx.dtypes
    gx = (gx if ctx.args[0] > 0 else gh).to(x_dtype)  # without dropout grad_x is grad_h
    return (gx, gw.to(w_dtype), gb.to(b_dtype), None if r_dtype is None else gh.to(r_dtype),
            None if ib_dtype is None else gib.to(ib_dtype), None, None, None, None, None)


_OP = _fused.FusedOp("layer_norm", "fastbert.kernels.layer_norm", _forward_fake, _backward_fake, _setup_context,
                     _backward)
