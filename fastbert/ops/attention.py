"""attention: bidirectional multi-head scaled-dot-product attention with key padding and dropout.

Two input forms, flash-attention's layouts (no transposes after a fused QKV projection):
  attention(q, k, v, seqlens)                      q, k, v: [B, S, H, D]; sequence b holds its first
                                                   seqlens[b] positions (right padding)
  attention_varlen(q, k, v, cu_seqlens, max_seqlen)  q, k, v: [T, H, D], packed sequences
Padded query rows (and whole rows with seqlen 0) output zeros. Softmax in fp32; output in q's dtype.
Attention-probability dropout follows fastbert.ops.philox, so both forms draw the same mask.
"""
from __future__ import annotations

import math

import torch

from fastbert import backend
from fastbert.ops import _checks, padding, philox

IMPLEMENTED = ("reference",)


def _check_qkv(op, q, k, v, dims):
    _checks.tensor(op, "q", q, dim=dims)
    for name, t in (("k", k), ("v", v)):
        _checks.tensor(op, name, t, dim=dims, dtypes=(q.dtype,), device=q.device, shape=tuple(q.shape))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: torch.Tensor | None = None, *,
              dropout_p: float = 0.0, softmax_scale: float | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Padded form: q, k, v [B, S, H, D]; seqlens int [B] (None: every position is real)."""
    op = "attention"
    _check_qkv(op, q, k, v, 4)
    B, S = q.shape[:2]
    if seqlens is None:
        seqlens = torch.full((B,), S, dtype=torch.int32, device=q.device)
    _checks.tensor(op, "seqlens", seqlens, dim=1, dtypes=(torch.int32, torch.int64), device=q.device,
                   shape=(B,))
    if seqlens.device.type == "cpu" and B and (int(seqlens.min()) < 0 or int(seqlens.max()) > S):
        raise ValueError(f"{op}: seqlens must lie in [0, {S}], got {seqlens.tolist()}")
    _checks.dropout_p(op, dropout_p)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    seed = philox.draw_seed(generator) if dropout_p > 0 else 0
    impl = backend.resolve(op, q.device, IMPLEMENTED)
    if impl == "reference":
        return attention_reference(q, k, v, seqlens, dropout_p, scale, seed)
    raise AssertionError(impl)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, *, dropout_p: float = 0.0, softmax_scale: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Packed form: q, k, v [T, H, D]; cu_seqlens int32 [N + 1] from 0 to T; max_seqlen >= every length."""
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
    impl = backend.resolve(op, q.device, IMPLEMENTED)
    if impl == "reference":
        return attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed)
    raise AssertionError(impl)


def attention_reference(q, k, v, seqlens, dropout_p=0.0, scale=None, seed=0):
    """Pure-PyTorch reference (fp32 math, materialises the probabilities)."""
    B, S, H, D = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    valid = torch.arange(S, device=q.device)[None, :] < seqlens.to(q.device)[:, None]  # [B, S]
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        keep = philox.keep_mask_attention(seed, dropout_p, B, H, S, S, q.device)
        probs = probs * keep * (1.0 / (1.0 - dropout_p))
    out = torch.matmul(probs, vf).transpose(1, 2)  # [B, S, H, D]
    return (out * valid[:, :, None, None]).to(q.dtype)


def attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, scale=None, seed=0):
    """Reference for packed sequences: scatter into a padded batch, attend, gather back."""
    n = cu_seqlens.numel() - 1
    idx = padding.padded_indices(cu_seqlens, max_seqlen)
    qp, kp, vp = (padding.pad_input(t, idx, n, max_seqlen) for t in (q, k, v))
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    out = attention_reference(qp, kp, vp, seqlens, dropout_p, scale, seed)
    return out.reshape(n * max_seqlen, *q.shape[1:]).index_select(0, idx)
