"""attention: bidirectional multi-head scaled-dot-product attention with key padding and dropout.

Two input forms, flash-attention's layouts (no transposes after a fused QKV projection):
  attention(q, k, v, seqlens)                      q, k, v: [B, S, H, D]; sequence b holds its first
                                                   seqlens[b] positions (right padding)
  attention_varlen(q, k, v, cu_seqlens, max_seqlen)  q, k, v: [T, H, D], packed sequences
Padded query rows (and whole rows with seqlen 0) output zeros. Softmax in fp32; output in q's dtype.
Attention-probability dropout follows fastbert.ops.philox (sequences keyed by `dropout_keys`), so both forms
draw the same mask.

Kernel contract (Triton: fastbert.kernels.attention, CPU: torch.ops.fastbert_C); q, k, v may be strided
views (e.g. slices of a fused [.., 3, H, D] projection) with unit stride on the head dimension:
  attention_forward(q, k, v, seqlens int32 [B], scale, dropout_p, seed, keys?)
      -> (out [B, S, H, D] contiguous, lse [B, H, S] fp32: log-sum-exp of the scaled scores per row)
  attention_backward(grad_out, q, k, v, out, lse, seqlens, scale, dropout_p, seed, keys?) -> (dq, dk, dv)
  attention_varlen_forward(q, k, v, cu_seqlens int32, max_seqlen, scale, dropout_p, seed, keys?)
      -> (out [T, H, D] contiguous, lse [H, T] fp32)
  attention_varlen_backward(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, dropout_p, seed, keys?)
      -> (dq, dk, dv)
keys: int64 [B], the sequences' dropout keys (philox: key[b] * heads + head in the index); None: b.
Gradients come back contiguous in q's dtype. Padded query rows get zero output and zero gradients.
The Triton kernels cover head dims 32, 64 and 128: backend "triton" raises for others, "auto" runs the
reference for them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fastbert import backend
from fastbert.ops import _checks, _fused, padding, philox

KERNELS = ("triton", "cpu")


def _resolve(op, q):
    """The implementation to run; "auto" leaves Triton for the reference on head dims it has no kernel for."""
    impl = backend.resolve(op, q.device, KERNELS)
    if impl == "triton" and backend.get_backend() == "auto" and not _OP.kernels("triton").supports(q):
        return "reference"
    return impl


def _keys(op, dropout_keys, dropout_p, count, q):
    """The keys the kernels get: dropout_keys checked (None without dropout: the kernels read none)."""
    if dropout_keys is None or dropout_p == 0:
        return None
    philox.check_keys(op, dropout_keys, count, q.device, 2**31 // q.shape[-2])
    return dropout_keys.contiguous()


def _check_qkv(op, q, k, v, dims):
    _checks.tensor(op, "q", q, dim=dims)
    _checks.features(op, "q", q, what="head dim")
    for name, t in (("k", k), ("v", v)):
        _checks.tensor(op, name, t, dim=dims, dtypes=(q.dtype,), device=q.device, shape=tuple(q.shape))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: torch.Tensor | None = None, *,
              dropout_p: float = 0.0, softmax_scale: float | None = None,
              generator: torch.Generator | None = None, dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Padded form: q, k, v [B, S, H, D]; seqlens int [B] (None: every position is real); dropout_keys int64 [B]
    (fastbert.ops.philox; None: 0 .. B-1)."""
    op = "attention"
    _check_qkv(op, q, k, v, 4)
    B, S = q.shape[:2]
    if seqlens is None:
        seqlens = torch.full((B,), S, dtype=torch.int32, device=q.device)
    _checks.tensor(op, "seqlens", seqlens, dim=1, dtypes=_checks.INDEX_DTYPES, device=q.device,
                   shape=(B,))
    if seqlens.device.type == "cpu" and B and (int(seqlens.min()) < 0 or int(seqlens.max()) > S):
        raise ValueError(f"{op}: seqlens must lie in [0, {S}], got {seqlens.tolist()}")
    _checks.dropout_p(op, dropout_p)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    seed = philox.draw_seed(generator) if dropout_p > 0 else 0
    keys = _keys(op, dropout_keys, dropout_p, B, q)
    impl = _resolve(op, q)
    if impl == "reference":
        return attention_reference(q, k, v, seqlens, dropout_p, scale, seed, keys)
    return _OP(q, k, v, seqlens.to(torch.int32), scale, dropout_p, seed, keys, impl)[0]


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, *, dropout_p: float = 0.0, softmax_scale: float | None = None,
                     generator: torch.Generator | None = None,
                     dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Packed form: q, k, v [T, H, D]; cu_seqlens int32 [N + 1] from 0 to T; max_seqlen >= every length;
    dropout_keys int64 [N] (fastbert.ops.philox; None: 0 .. N-1)."""
    op = "attention_varlen"
    _check_qkv(op, q, k, v, 3)
    _checks.tensor(op, "cu_seqlens", cu_seqlens, dim=1, dtypes=(torch.int32,), device=q.device)
    if cu_seqlens.numel() < 1:
        raise ValueError(f"{op}: cu_seqlens must hold at least one entry (0)")
    if cu_seqlens.device.type == "cpu":
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != q.shape[0] or (lens < 0).any():
            raise ValueError(f"{op}: cu_seqlens must rise from 0 to total_tokens={q.shape[0]}, "
                             f"got {cu_seqlens.tolist()}")
        if lens.numel() and int(lens.max()) > max_seqlen:
            raise ValueError(f"{op}: max_seqlen={max_seqlen} is below the longest sequence ({int(lens.max())})")
    _checks.dropout_p(op, dropout_p)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    seed = philox.draw_seed(generator) if dropout_p > 0 else 0
    keys = _keys(op, dropout_keys, dropout_p, cu_seqlens.numel() - 1, q)
    impl = _resolve(op, q)
    if impl == "reference":
        return attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed, keys)
    return _VARLEN_OP(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p, seed, keys, impl)[0]


def attention_reference(q, k, v, seqlens, dropout_p=0.0, scale=None, seed=0, keys=None):
    """Pure-PyTorch reference (fp32 math, materialises the probabilities); keys: the sequences' dropout keys."""
    B, S, H, D = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    valid = torch.arange(S, device=q.device)[None, :] < seqlens.to(q.device)[:, None]  # [B, S]
    with torch.autocast(q.device.type, enabled=False):  # fp32 math under autocast too
        scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            keep = philox.keep_mask_attention(seed, dropout_p, B, H, S, S, q.device, keys)
            probs = probs * keep * (1.0 / (1.0 - dropout_p))
        out = torch.matmul(probs, vf).transpose(1, 2)  # [B, S, H, D]
    return (out * valid[:, :, None, None]).to(q.dtype)


def attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, scale=None, seed=0, keys=None):
    """Reference for packed sequences: scatter into a padded batch, attend, gather back."""
    n = cu_seqlens.numel() - 1
    idx = padding.padded_indices(cu_seqlens, max_seqlen)
    qp, kp, vp = (padding.pad_input(t, idx, n, max_seqlen) for t in (q, k, v))
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    out = attention_reference(qp, kp, vp, seqlens, dropout_p, scale, seed, keys)
    return out.reshape(n * max_seqlen, *q.shape[1:]).index_select(0, idx)


# -- the kernels as two fused ops (fastbert.ops._fused): their shapes for torch.compile, the autograd rules --

def _forward_fake(q: Tensor, k: Tensor, v: Tensor, seqlens: Tensor, scale: float, dropout_p: float,
                  seed: int, keys: Tensor | None) -> tuple[Tensor, Tensor]:
    B, S, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty(B, H, S, dtype=torch.float32)


def _backward_fake(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, seqlens: Tensor,
                   scale: float, dropout_p: float, seed: int, keys: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _varlen_forward_fake(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float,
                         dropout_p: float, seed: int, keys: Tensor | None) -> tuple[Tensor, Tensor]:
    T, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty(H, T, dtype=torch.float32)


def _varlen_backward_fake(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          cu_seqlens: Tensor, max_seqlen: int, scale: float, dropout_p: float,
                          seed: int, keys: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    """Both forms: saves q, k, v, out, lse, the sequence info (seqlens or cu_seqlens) and the dropout keys;
    keeps the scalars."""
    q, k, v, seq_info, *scalars, keys, impl = inputs
    ctx.save_for_backward(q, k, v, *output, seq_info, keys)
    ctx.mark_non_differentiable(output[1])  # lse, saved for the backward only: autograd makes no zero grad for it
    ctx.set_materialize_grads(False)
    ctx.args = (*scalars, impl)  # (max_seqlen,) scale, dropout_p, seed, impl


def _backward(ctx, grad_out, _grad_lse):
    return _grads(_OP, ctx, grad_out)


def _varlen_backward(ctx, grad_out, _grad_lse):
    return _grads(_VARLEN_OP, ctx, grad_out)


def _grads(op: _fused.FusedOp, ctx, grad_out) -> tuple:
    """Both forms: dq, dk, dv from the backward kernel; nothing for the other inputs."""
    *saved, keys = ctx.saved_tensors
    *scalars, impl = ctx.args
    dq, dk, dv = op.run_backward(grad_out.contiguous(), *saved, *scalars, keys, impl)
    return (dq, dk, dv) + (None,) * (2 + len(ctx.args))


_OP = _fused.FusedOp("attention", "fastbert.kernels.attention", _forward_fake, _backward_fake, _setup_context,
                     _backward)
_VARLEN_OP = _fused.FusedOp("attention_varlen", "fastbert.kernels.attention", _varlen_forward_fake,
                            _varlen_backward_fake, _setup_context, _varlen_backward)
