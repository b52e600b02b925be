"""Triton kernels for fastbert.ops.embedding_layer_norm: dropout(LayerNorm(word[ids] + type[types] + pos[positions])).

Forward: one [ROWS, BLOCK_N] tile of tokens per program gathers its three table rows, normalises the sum
in fp32 and applies the dropout after the norm (fastbert.ops.philox, index key[row] * N + col). Backward: each
program walks a block of tokens, recomputes the sum from the tables (nothing [tokens, N] is saved),
writes the fp32 gradient of the sum and keeps partial sums of grad_weight / grad_bias; torch then
scatter-adds that gradient into the three tables (index_add_). Tiles, launch options and the dropout mask
are layer_norm's (kernels/utils.py).
"""
import itertools

import torch
import triton
import triton.language as tl

from fastbert.kernels.utils import PTR, TILE, Tuned, bwd_rows_per_program, check_row_size, dropout_args, \
    fixed_row_config, keep_rows, launch_options, param_dtype, row_candidates, row_configs, row_keys, row_prune, \
    row_variants


@triton.jit
def _gather_sum(IDS, TYPES, POS, WORD, TYPE_T, POS_T, rows, cols, row_ok, mask, N):
    """fp32 [ROWS, BLOCK_N]: word[ids] + type[types] + pos[positions] of the tile's tokens."""
    ids = tl.load(IDS + rows, mask=row_ok, other=0)
    types = tl.load(TYPES + rows, mask=row_ok, other=0)
    pos = tl.load(POS + rows, mask=row_ok, other=0)
    h = tl.load(WORD + (ids * N)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    h += tl.load(TYPE_T + (types * N)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return h + tl.load(POS_T + (pos * N)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _embedding_ln_fwd(IDS, TYPES, POS, WORD, TYPE_T, POS_T, W, B, OUT, MEAN, RSTD, KEYS, M, N, eps, threshold, scale,
                      seed, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < N)[None, :]
    h = _gather_sum(IDS, TYPES, POS, WORD, TYPE_T, POS_T, rows, cols, row_ok, mask, N)
    mean = tl.sum(h, axis=1) / N
    hc = tl.where(mask, h - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(hc * hc, axis=1) / N + eps)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)
    y = hc * rstd[:, None] * w[None, :] + b[None, :]
    if HAS_DROPOUT:
        keys = tl.load(KEYS + rows, mask=row_ok, other=0)
        y = tl.where(keep_rows(seed, keys, N, threshold, ROWS, BLOCK_N, ALIGNED), y * scale, 0.0)
    tl.store(OUT + (rows * N)[:, None] + cols[None, :], y.to(OUT.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _embedding_ln_bwd(DY, IDS, TYPES, POS, WORD, TYPE_T, POS_T, W, MEAN, RSTD, DH, DW, DB, KEYS, M, N, rows_per_program,
                      threshold, scale, seed, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    dw = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows = start + tl.arange(0, ROWS)
        row_ok = rows < last
        mask = row_ok[:, None] & (cols < N)[None, :]
        offs = (rows * N)[:, None] + cols[None, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            keys = tl.load(KEYS + rows, mask=row_ok, other=0)
            dy = tl.where(keep_rows(seed, keys, N, threshold, ROWS, BLOCK_N, ALIGNED), dy * scale, 0.0)
        h = _gather_sum(IDS, TYPES, POS, WORD, TYPE_T, POS_T, rows, cols, row_ok, mask, N)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)[:, None]
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)[:, None]
        xhat = tl.where(mask, (h - mean) * rstd, 0.0)
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1)[:, None] / N
        c2 = tl.sum(wdy, axis=1)[:, None] / N
        tl.store(DH + offs, (wdy - (xhat * c1 + c2)) * rstd, mask=mask)
        dw += dy * xhat
        db += dy
    part = pid * N + cols
    tl.store(DW + part, tl.sum(dw, axis=0), mask=cols < N)
    tl.store(DB + part, tl.sum(db, axis=0), mask=cols < N)


# -- configuration: the launchers and aot_specs() both pick from here, so the AOT test covers every variant --

def _config(n, dropout, backward=False):
    """(per-call constexprs, fixed config) for rows of n elements: the row tiling of kernels/utils.py, TILE
    elements per tile; the interpreter's choice, and on a GPU the first of the autotune candidates."""
    return fixed_row_config(n, dropout, backward, TILE)


_fwd = Tuned(_embedding_ln_fwd, row_configs(backward=False), key=["N", "HAS_DROPOUT", "ALIGNED"], prune=row_prune)
_bwd = Tuned(_embedding_ln_bwd, row_configs(backward=True), key=["N", "HAS_DROPOUT", "ALIGNED"], prune=row_prune)


# -- launchers: the kernel contract of fastbert.ops.embedding --

def embedding_layer_norm_forward(input_ids, token_type_ids, position_ids, word, token_type, position, weight, bias,
                                 eps, dropout_p, seed, keys):
    M, N = input_ids.shape[0], word.shape[1]
    check_row_size("embedding_layer_norm", N)
    wdt = param_dtype(word.dtype, weight, bias)
    out = word.new_empty(M, N)
    mean = torch.empty(M, dtype=torch.float32, device=word.device)
    rstd = torch.empty_like(mean)
    if M:
        flags, fixed = _config(N, dropout_p > 0)
        _fwd(lambda meta: (triton.cdiv(M, meta["ROWS"]),), fixed,
            input_ids, token_type_ids, position_ids, word, token_type, position, weight.to(wdt), bias.to(wdt), out,
            mean, rstd, row_keys(keys, M, dropout_p, word.device), M, N, eps, *dropout_args(dropout_p), seed,
            HAS_DROPOUT=dropout_p > 0, **flags)
    return out, mean, rstd


def embedding_layer_norm_backward(grad_out, input_ids, token_type_ids, position_ids, word, token_type, position,
                                  weight, mean, rstd, dropout_p, seed, keys, padding_idx):
    M, N = input_ids.shape[0], word.shape[1]
    check_row_size("embedding_layer_norm", N)
    flags, fixed = _config(N, dropout_p > 0, backward=True)
    per_program = bwd_rows_per_program(M, fixed.kwargs["ROWS"], word.device)  # every candidate's ROWS
    programs = triton.cdiv(M, per_program) if M else 0
    grad_h = torch.empty(M, N, dtype=torch.float32, device=word.device)
    parts = torch.empty(2, programs, N, dtype=torch.float32, device=word.device)
    if M:
        _bwd(lambda meta: (programs,), fixed,
            grad_out, input_ids, token_type_ids, position_ids, word, token_type, position,
            weight.to(param_dtype(word.dtype, weight)), mean, rstd, grad_h, parts[0], parts[1],
            row_keys(keys, M, dropout_p, word.device), M, N, per_program,
            *dropout_args(dropout_p), seed, HAS_DROPOUT=dropout_p > 0, **flags)

    def scatter(table, ids):  # fp32 sums, then the table's dtype
        return torch.zeros(table.shape, dtype=torch.float32, device=table.device).index_add_(0, ids, grad_h)

    g_word = scatter(word, input_ids)
    if padding_idx >= 0:
        g_word[padding_idx] = 0
    return (g_word.to(word.dtype), scatter(token_type, token_type_ids).to(token_type.dtype),
            scatter(position, position_ids).to(position.dtype), parts[0].sum(0), parts[1].sum(0))


# -- every variant the launchers can pick, for the ahead-of-time compile test --

def aot_specs():
    specs = []
    for tdt, (size, dropout, drop_tag) in itertools.product(PTR, row_variants()):
        t = PTR[tdt]
        flags = dict(HAS_DROPOUT=dropout, **_config(size, dropout)[0])
        tag = f"t={t[1:]} {drop_tag}"
        for w in dict.fromkeys([t, "*fp32"]):  # norm weights in the tables' dtype or fp32
            ids = dict(IDS="*i64", TYPES="*i64", POS="*i64", WORD=t, TYPE_T=t, POS_T=t, W=w)
            fwd = dict(**ids, B=w, OUT=t, MEAN="*fp32", RSTD="*fp32", KEYS="*i64", M="i32", N="i32", eps="fp32",
                       threshold="i32", scale="fp32", seed="i64")
            bwd = dict(DY=t, **ids, MEAN="*fp32", RSTD="*fp32", DH="*fp32", DW="*fp32", DB="*fp32", KEYS="*i64",
                       M="i32", N="i32", rows_per_program="i32", threshold="i32", scale="fp32", seed="i64")
            for fn, sig, backward in ((_embedding_ln_fwd, fwd, False), (_embedding_ln_bwd, bwd, True)):
                for c in row_candidates(size, backward):
                    constexprs = {**flags, **c.kwargs}
                    specs.append(dict(name=f"{fn.__name__} {tag} w={w[1:]} ROWS={c.kwargs['ROWS']} "
                                           f"warps={c.num_warps}", fn=fn,
                                      signature={**sig, **dict.fromkeys(constexprs, "constexpr")},
                                      constexprs=constexprs, **launch_options(c)))
    return specs
