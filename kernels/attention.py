"""Bidirectional attention with key padding and dropout, FlashAttention-2 style.

Forward: one program per (query block, head, sequence) streams the key/value blocks of its sequence
with an online softmax in fp32 (base 2: scores are pre-multiplied by scale * log2(e)) and saves the
log-sum-exp of every row (0 at padded rows). The probability matrix is never stored.
Backward: a preprocess kernel computes delta_i = rowsum(dO_i * O_i); then one kernel per key block
accumulates dK, dV over the query blocks and one kernel per query block accumulates dQ over the key
blocks (no atomics: deterministic). Both recompute P from Q, K and the saved log-sum-exp.
Dropout on the probabilities follows fastbert.ops.philox bit for bit and is regenerated in backward.

Both input forms run the same kernels: padded [B, S, H, D] with seqlens (varlen=0), or packed [T, H, D]
with cu_seqlens (varlen=1: batch stride 0, rows offset by cu_seqlens[b]). Programs index (block, head,
sequence); tails of any length are masked. Head dims 32, 64, 128. Dots take fp16/bf16 operands with fp32
accumulation; fp32 inputs get exact fp32 dots (input_precision="ieee", never TF32): fp32 is the parity
mode, fast training runs in fp16/bf16.
"""
from __future__ import annotations

import functools
import itertools

import torch
import triton
import triton.language as tl

from fastbert.kernels.utils import PTR, Tuned, dropout_args

HEAD_DIMS = (32, 64, 128)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)


@triton.jit
def _dropout_bits(seed, sh, offs_m, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """bits16 of elements (q = offs_m, k = n0 ... n0 + BLOCK_N) of (sequence, head) `sh` = key[b] * heads + head,
    as int32 [BLOCK_M, BLOCK_N].

    Element i = (sh << 32) | (q << 16) | k takes 16 bits of philox(seed, i >> 3): one call feeds 8 keys.
    """
    groups = (n0 >> 3) + tl.arange(0, BLOCK_N // 8)
    ctr = (sh.to(tl.int64) << 29) | (offs_m.to(tl.int64)[:, None] << 13) | groups[None, :].to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, ctr)
    words = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # [BLOCK_M, G, 2, 2], flat order r0, r1, r2, r3
    halves = tl.join(words & 0xFFFF, words >> 16)  # low half first
    return tl.reshape(halves, (BLOCK_M, BLOCK_N)).to(tl.int32)


@triton.jit
def _seq_bounds(SeqInfo, b, max_seqlen, varlen):
    """(first row, length, rows to write) of sequence b: packed rows from cu_seqlens, else padded rows."""
    if varlen:
        start = tl.load(SeqInfo + b)
        seqlen = tl.load(SeqInfo + b + 1) - start
        rows = seqlen
    else:
        start = 0
        seqlen = tl.minimum(tl.load(SeqInfo + b), max_seqlen)  # CUDA seqlens go unchecked: stay in bounds
        rows = max_seqlen  # padded rows are written too (zeros)
    return start, seqlen, rows


@triton.jit
def _rows(X, b, start, h, offs, stride_b, stride_s, stride_h, HEAD_DIM: tl.constexpr):
    """Pointers [len(offs), HEAD_DIM] to rows `offs` of head h of sequence b (whose first row is `start`).

    The launcher guarantees 16-byte-aligned data and strides divisible by 16: the hints let every
    row load and store vectorise, whatever the arguments a compile was specialised for.
    """
    first = tl.multiple_of(X + (b * stride_b + start * stride_s + h * stride_h), 16)  # hints go on results,
    rows = tl.multiple_of(offs[:, None] * stride_s, [16, 16])  # not on arguments
    return first + rows + tl.arange(0, HEAD_DIM)[None, :]


@triton.jit(do_not_specialize=["varlen"])
def _attn_fwd(Q, K, V, Out, Lse, SeqInfo, seed, Keys,
              stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
              stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
              max_seqlen, varlen, num_heads, qk_scale, drop_threshold, drop_scale,
              DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, seqlen, rows = _seq_bounds(SeqInfo, b, max_seqlen, varlen)
    if pid_m * BLOCK_M >= rows:
        return
    b64, start64 = b.to(tl.int64), start.to(tl.int64)
    sh = tl.load(Keys + b).to(tl.int32) * num_heads + h if DROPOUT else 0  # philox (key * heads < 2**31: ops)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    valid_m = offs_m < seqlen
    q = tl.load(_rows(Q, b64, start64, h, offs_m, stride_qb, stride_qs, stride_qh, HEAD_DIM),
                mask=valid_m[:, None], other=0.0)
    k_ptrs = _rows(K, b64, start64, h, offs_n, stride_kb, stride_ks, stride_kh, HEAD_DIM)
    v_ptrs = _rows(V, b64, start64, h, offs_n, stride_vb, stride_vs, stride_vh, HEAD_DIM)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    n_end = tl.where(pid_m * BLOCK_M < seqlen, seqlen, 0)  # fully padded query blocks skip the loop
    for n0 in range(0, n_end, BLOCK_N):
        valid_n = n0 + offs_n < seqlen
        k = tl.load(k_ptrs + n0 * stride_ks, mask=valid_n[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(valid_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _dropout_bits(seed, sh, offs_m, n0, BLOCK_M, BLOCK_N) >= drop_threshold
            p = tl.where(keep, p, 0.0)
        v = tl.load(v_ptrs + n0 * stride_vs, mask=valid_n[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    l_safe = tl.where(valid_m, l_i, 1.0)
    out = tl.where(valid_m[:, None], acc * (drop_scale / l_safe)[:, None], 0.0)
    lse = tl.where(valid_m, (m_i + tl.math.log2(l_safe)) / LOG2E, 0.0)  # natural log
    row_ok = offs_m < rows
    tl.store(_rows(Out, b64, start64, h, offs_m, stride_ob, stride_os, stride_oh, HEAD_DIM),
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + b64 * stride_lb + h * stride_lh + start64 + offs_m, lse, mask=row_ok)


@triton.jit(do_not_specialize=["varlen"])
def _attn_bwd_preprocess(Out, DO, Delta, SeqInfo,
                         stride_ob, stride_os, stride_oh, stride_db, stride_ds, stride_dh, stride_lb, stride_lh,
                         max_seqlen, varlen,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = rowsum(dO_i * O_i) in fp32, laid out like the log-sum-exp (zeros at padded rows)."""
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, seqlen, rows = _seq_bounds(SeqInfo, b, max_seqlen, varlen)
    if pid_m * BLOCK_M >= rows:
        return
    b64, start64 = b.to(tl.int64), start.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = (offs_m < seqlen)[:, None]
    o = tl.load(_rows(Out, b64, start64, h, offs_m, stride_ob, stride_os, stride_oh, HEAD_DIM), mask=valid, other=0.0)
    do = tl.load(_rows(DO, b64, start64, h, offs_m, stride_db, stride_ds, stride_dh, HEAD_DIM), mask=valid, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + b64 * stride_lb + h * stride_lh + start64 + offs_m, delta, mask=offs_m < rows)


@triton.jit(do_not_specialize=["varlen"])
def _attn_bwd_dkdv(Q, K, V, DO, Lse, Delta, DK, DV, SeqInfo, seed, Keys,
                   stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                   stride_vb, stride_vs, stride_vh, stride_db, stride_ds, stride_dh,
                   stride_gb, stride_gs, stride_gh, stride_lb, stride_lh,
                   max_seqlen, varlen, num_heads, qk_scale, scale, drop_threshold, drop_scale,
                   DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of one key block, summed over the query blocks; computed transposed ([keys, queries])."""
    pid_n, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, seqlen, rows = _seq_bounds(SeqInfo, b, max_seqlen, varlen)
    if pid_n * BLOCK_N >= rows:
        return
    b64, start64 = b.to(tl.int64), start.to(tl.int64)
    sh = tl.load(Keys + b).to(tl.int32) * num_heads + h if DROPOUT else 0  # philox (key * heads < 2**31: ops)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    valid_n = offs_n < seqlen
    k = tl.load(_rows(K, b64, start64, h, offs_n, stride_kb, stride_ks, stride_kh, HEAD_DIM),
                mask=valid_n[:, None], other=0.0)
    v = tl.load(_rows(V, b64, start64, h, offs_n, stride_vb, stride_vs, stride_vh, HEAD_DIM),
                mask=valid_n[:, None], other=0.0)
    q_ptrs = _rows(Q, b64, start64, h, offs_m, stride_qb, stride_qs, stride_qh, HEAD_DIM)
    do_ptrs = _rows(DO, b64, start64, h, offs_m, stride_db, stride_ds, stride_dh, HEAD_DIM)
    lse_ptrs = Lse + b64 * stride_lb + h * stride_lh + start64 + offs_m
    delta_ptrs = Delta + b64 * stride_lb + h * stride_lh + start64 + offs_m

    dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    m_end = tl.where(pid_n * BLOCK_N < seqlen, seqlen, 0)  # fully padded key blocks skip the loop
    for m0 in range(0, m_end, BLOCK_M):
        valid_m = m0 + offs_m < seqlen
        q = tl.load(q_ptrs + m0 * stride_qs, mask=valid_m[:, None], other=0.0)
        do = tl.load(do_ptrs + m0 * stride_ds, mask=valid_m[:, None], other=0.0)
        lse2 = tl.load(lse_ptrs + m0, mask=valid_m, other=0.0) * LOG2E
        delta = tl.load(delta_ptrs + m0, mask=valid_m, other=0.0)
        pT = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision="ieee") * qk_scale - lse2[None, :])
        pT = tl.where(valid_n[:, None] & valid_m[None, :], pT, 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision="ieee")
        if DROPOUT:
            bits = _dropout_bits(seed, sh, m0 + offs_m, pid_n * BLOCK_N, BLOCK_M, BLOCK_N)
            keepT = tl.trans(bits) >= drop_threshold
            dv += tl.dot(tl.where(keepT, pT * drop_scale, 0.0).to(do.dtype), do, input_precision="ieee")
            dpT = tl.where(keepT, dpT * drop_scale, 0.0)
        else:
            dv += tl.dot(pT.to(do.dtype), do, input_precision="ieee")
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision="ieee")

    row_ok = (offs_n < rows)[:, None]
    tl.store(_rows(DK, b64, start64, h, offs_n, stride_gb, stride_gs, stride_gh, HEAD_DIM),
             (dk * scale).to(DK.dtype.element_ty), mask=row_ok)
    tl.store(_rows(DV, b64, start64, h, offs_n, stride_gb, stride_gs, stride_gh, HEAD_DIM),
             dv.to(DV.dtype.element_ty), mask=row_ok)


@triton.jit(do_not_specialize=["varlen"])
def _attn_bwd_dq(Q, K, V, DO, Lse, Delta, DQ, SeqInfo, seed, Keys,
                 stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                 stride_vb, stride_vs, stride_vh, stride_db, stride_ds, stride_dh,
                 stride_gb, stride_gs, stride_gh, stride_lb, stride_lh,
                 max_seqlen, varlen, num_heads, qk_scale, scale, drop_threshold, drop_scale,
                 DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query block, summed over the key blocks."""
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, seqlen, rows = _seq_bounds(SeqInfo, b, max_seqlen, varlen)
    if pid_m * BLOCK_M >= rows:
        return
    b64, start64 = b.to(tl.int64), start.to(tl.int64)
    sh = tl.load(Keys + b).to(tl.int32) * num_heads + h if DROPOUT else 0  # philox (key * heads < 2**31: ops)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    valid_m = offs_m < seqlen
    q = tl.load(_rows(Q, b64, start64, h, offs_m, stride_qb, stride_qs, stride_qh, HEAD_DIM),
                mask=valid_m[:, None], other=0.0)
    do = tl.load(_rows(DO, b64, start64, h, offs_m, stride_db, stride_ds, stride_dh, HEAD_DIM),
                 mask=valid_m[:, None], other=0.0)
    lse2 = tl.load(Lse + b64 * stride_lb + h * stride_lh + start64 + offs_m, mask=valid_m, other=0.0) * LOG2E
    delta = tl.load(Delta + b64 * stride_lb + h * stride_lh + start64 + offs_m, mask=valid_m, other=0.0)
    k_ptrs = _rows(K, b64, start64, h, offs_n, stride_kb, stride_ks, stride_kh, HEAD_DIM)
    v_ptrs = _rows(V, b64, start64, h, offs_n, stride_vb, stride_vs, stride_vh, HEAD_DIM)

    dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    n_end = tl.where(pid_m * BLOCK_M < seqlen, seqlen, 0)
    for n0 in range(0, n_end, BLOCK_N):
        valid_n = n0 + offs_n < seqlen
        k = tl.load(k_ptrs + n0 * stride_ks, mask=valid_n[:, None], other=0.0)
        v = tl.load(v_ptrs + n0 * stride_vs, mask=valid_n[:, None], other=0.0)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale - lse2[:, None])
        p = tl.where(valid_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        if DROPOUT:
            keep = _dropout_bits(seed, sh, offs_m, n0, BLOCK_M, BLOCK_N) >= drop_threshold
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")

    dq = tl.where(valid_m[:, None], dq * scale, 0.0)
    tl.store(_rows(DQ, b64, start64, h, offs_m, stride_gb, stride_gs, stride_gh, HEAD_DIM),
             dq.to(DQ.dtype.element_ty), mask=(offs_m < rows)[:, None])


# -- configuration ---------------------------------------------------------------------------------

def _configs(head_dim: int, dtype: torch.dtype, dropout: bool) -> dict:
    """{kernel: (BLOCK_M, BLOCK_N, num_warps, num_stages)}, sized so that nothing spills registers on
    sm_80/sm_90: fp32 operands take twice the registers, the dropout bits need room, and rows of 256
    bytes or more (fp16 D=128, fp32 D>=64) get 8 warps."""
    warps = 8 if head_dim * dtype.itemsize >= 256 else 4
    if dtype == torch.float32:  # fp32 dots run on FMA units: operand rows are replicated per thread
        fwd, dkdv, dq = (64, 16 if head_dim == 128 else 32), (32, 32), (32, 32)
    elif head_dim == 128:
        fwd, dkdv, dq = (128, 32), (32, 64), (64, 32)
    else:
        fwd, dkdv, dq = (128, 64), (32 if dropout else 64, 64), (64, 32 if dropout else 64)
    return {"fwd": (*fwd, warps, 2), "dkdv": (*dkdv, warps, 2), "dq": (*dq, warps, 2), "pre": (64, 0, 4, 1)}


@functools.cache
def _candidates(head_dim: int, dtype: torch.dtype, dropout: bool) -> dict[str, list[triton.Config]]:
    """{kernel: autotune candidates}: _configs' first (the interpreter's choice); then, in forward, the same
    blocks with 3 pipeline stages (in backward 3 stages spill); and half the block each program owns (its rows,
    or its keys in dkdv) with half the warps (at least 4) where that half is 32 or more: more programs, no more
    registers per thread (16-row halves spill with dropout)."""
    out = {}
    for kind, (bm, bn, warps, stages) in _configs(head_dim, dtype, dropout).items():
        if kind == "pre":
            out[kind] = [triton.Config(dict(BLOCK_M=block), num_warps=4, num_stages=1) for block in (bm, bm // 2)]
            continue
        half = (bm, bn // 2) if kind == "dkdv" else (bm // 2, bn)
        choices = [(bm, bn, warps, stages)] + [(bm, bn, warps, 3)] * (kind == "fwd")
        choices += [(*half, max(4, warps // 2), 2)] * (half[kind == "dkdv"] >= 32)
        out[kind] = [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=st) for m, n, w, st in choices]
    return out


def _all_candidates(kind: str) -> list[triton.Config]:
    return [c for key in itertools.product(HEAD_DIMS, PTR, (False, True)) for c in _candidates(*key)[kind]]


def _prune(kind: str, configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """The candidates of the call's head dim, dtype and dropout (autotune's early_config_prune)."""
    dtype = nargs["Out" if kind == "pre" else "Q"].dtype
    return _candidates(kwargs["HEAD_DIM"], dtype, kwargs.get("DROPOUT", False))[kind]


# On a GPU tuned once per head dim, dropout and dtypes: not per sequence length, which varies batch by batch.
_fwd = Tuned(_attn_fwd, _all_candidates("fwd"), ["HEAD_DIM", "DROPOUT"], functools.partial(_prune, "fwd"))
_pre = Tuned(_attn_bwd_preprocess, _all_candidates("pre"), ["HEAD_DIM"], functools.partial(_prune, "pre"))
_dkdv = Tuned(_attn_bwd_dkdv, _all_candidates("dkdv"), ["HEAD_DIM", "DROPOUT"], functools.partial(_prune, "dkdv"))
_dq = Tuned(_attn_bwd_dq, _all_candidates("dq"), ["HEAD_DIM", "DROPOUT"], functools.partial(_prune, "dq"))


def supports(q: torch.Tensor) -> bool:
    return q.shape[-1] in HEAD_DIMS


def _check(op: str, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if ts[0].shape[-1] not in HEAD_DIMS:
        raise ValueError(f"{op}: the Triton kernel supports head dims {HEAD_DIMS}, got head dim {ts[0].shape[-1]} "
                         "(backends 'reference' and 'auto' run any head dim)")
    return tuple(map(_aligned, ts))


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself when the kernels' layout hints hold (unit-stride head dim, 16-byte-aligned data, other
    strides divisible by 16, as in any view of a [.., 3, H, D] projection), else a contiguous copy."""
    ok = t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in t.stride()[:-1])
    return t if ok else t.clone(memory_format=torch.contiguous_format)


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, row, head) strides of a padded [B, S, H, D] or packed [T, H, D] tensor."""
    return (0, t.stride(0), t.stride(1)) if varlen else tuple(t.stride()[:3])


def _dropout_keys(keys, num_seqs, dropout_p, device) -> torch.Tensor:
    """What Keys points at: the sequences' dropout keys (None: 0 .. num_seqs-1; without dropout an empty tensor,
    which the kernels never read)."""
    if dropout_p == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.arange(num_seqs, device=device) if keys is None else keys


def _forward(q, k, v, seq_info, num_seqs, max_seqlen, scale, dropout_p, seed, keys, varlen):
    H, D = q.shape[-2:]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = q.new_empty((H, q.shape[0]) if varlen else (q.shape[0], H, q.shape[1]), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if num_seqs > 65535:
        raise ValueError(f"attention: {num_seqs} sequences in one call; the kernels' grid takes at most 65535")
    _fwd(lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), H, num_seqs),
         _candidates(D, q.dtype, dropout_p > 0)["fwd"][0],
        q, k, v, out, lse, seq_info.contiguous(), seed, _dropout_keys(keys, num_seqs, dropout_p, q.device),
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(out, varlen),
        *_lse_strides(lse, varlen), max_seqlen, int(varlen), H, scale * LOG2E.value, *dropout_args(dropout_p),
        DROPOUT=dropout_p > 0, HEAD_DIM=D)
    return out, lse


def _backward(grad_out, q, k, v, out, lse, seq_info, num_seqs, max_seqlen, scale, dropout_p, seed, keys, varlen):
    H, D = q.shape[-2:]
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    if q.numel() == 0:
        return dq, dk, dv
    fixed = {kind: configs[0] for kind, configs in _candidates(D, q.dtype, dropout_p > 0).items()}
    seq_info, delta = seq_info.contiguous(), torch.empty_like(lse)
    keys = _dropout_keys(keys, num_seqs, dropout_p, q.device)
    _pre(lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), H, num_seqs), fixed["pre"],
         out, grad_out, delta, seq_info, *_strides(out, varlen), *_strides(grad_out, varlen),
         *_lse_strides(lse, varlen), max_seqlen, int(varlen), HEAD_DIM=D)
    args = (*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(grad_out, varlen),
            *_strides(dq, varlen), *_lse_strides(lse, varlen), max_seqlen, int(varlen), H, scale * LOG2E.value, scale,
            *dropout_args(dropout_p))
    _dkdv(lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_N"]), H, num_seqs), fixed["dkdv"],
          q, k, v, grad_out, lse, delta, dk, dv, seq_info, seed, keys, *args, DROPOUT=dropout_p > 0, HEAD_DIM=D)
    _dq(lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), H, num_seqs), fixed["dq"],
        q, k, v, grad_out, lse, delta, dq, seq_info, seed, keys, *args, DROPOUT=dropout_p > 0, HEAD_DIM=D)
    return dq, dk, dv


def _lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    """(batch, head) strides of the log-sum-exp, [B, H, S] or packed [H, T]; rows are unit-stride."""
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


# -- the kernel contract (fastbert/ops/attention.py) -----------------------------------------------

def attention_forward(q, k, v, seqlens, scale, dropout_p, seed, keys):
    q, k, v = _check("attention", q, k, v)
    return _forward(q, k, v, seqlens, q.shape[0], q.shape[1], scale, dropout_p, seed, keys, varlen=False)


def attention_backward(grad_out, q, k, v, out, lse, seqlens, scale, dropout_p, seed, keys):
    q, k, v, grad_out, out = _check("attention", q, k, v, grad_out, out)
    return _backward(grad_out, q, k, v, out, lse, seqlens, q.shape[0], q.shape[1], scale, dropout_p, seed, keys,
                     varlen=False)


def attention_varlen_forward(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p, seed, keys):
    q, k, v = _check("attention_varlen", q, k, v)
    return _forward(q, k, v, cu_seqlens, cu_seqlens.numel() - 1, max_seqlen, scale, dropout_p, seed, keys,
                    varlen=True)


def attention_varlen_backward(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, dropout_p, seed, keys):
    q, k, v, grad_out, out = _check("attention_varlen", q, k, v, grad_out, out)
    return _backward(grad_out, q, k, v, out, lse, cu_seqlens, cu_seqlens.numel() - 1, max_seqlen, scale,
                     dropout_p, seed, keys, varlen=True)


# -- every configuration the launchers can pick, for ahead-of-time compilation ----------------------

def aot_specs() -> list[dict]:
    """Every (kernel, dtype, head dim, dropout) configuration with each of the launchers' candidate configs
    (packed and padded inputs share each compile: `varlen` is a runtime argument). "attrs" (optional) marks
    what a launch sees 16-divisible, pointers and q/k/v/out strides; the kernels carry those hints themselves."""
    specs = []
    for dtype, ptr in PTR.items():
        ty = ptr[1:]
        for head_dim in HEAD_DIMS:
            for c in _candidates(head_dim, dtype, False)["pre"]:
                specs.append(_spec(_attn_bwd_preprocess, ty, "i32", dict(HEAD_DIM=head_dim, **c.kwargs), c))
            for dropout in (False, True):
                candidates = _candidates(head_dim, dtype, dropout)
                for fn, kind in ((_attn_fwd, "fwd"), (_attn_bwd_dkdv, "dkdv"), (_attn_bwd_dq, "dq")):
                    for c in candidates[kind]:
                        constexprs = dict(DROPOUT=dropout, HEAD_DIM=head_dim, **c.kwargs)
                        specs.append(_spec(fn, ty, "i64" if dropout else "i32", constexprs, c))
    return specs


def _spec(fn, ty: str, seed_ty: str, constexprs: dict, config: triton.Config) -> dict:
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name[0].isupper():  # tensors: fp32 statistics, int32 sequence info, int64 keys, else the inputs' dtype
            signature[name] = "*i32" if name == "SeqInfo" else "*i64" if name == "Keys" else \
                "*fp32" if name in ("Lse", "Delta") else f"*{ty}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "seed":  # a 62-bit seed with dropout, else 0
            signature[name] = seed_ty
        else:
            signature[name] = "fp32" if "scale" in name else "i32"
            if name.startswith("stride_") and not name.startswith("stride_l"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    name = "_".join([fn.__name__, ty, *(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items()),
                     f"w{config.num_warps}s{config.num_stages}"])
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs, "attrs": attrs,
            "num_warps": config.num_warps, "num_stages": config.num_stages}
