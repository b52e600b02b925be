"""Triton kernels for fastbert.ops.layer_norm: LayerNorm(dropout(x + input_bias) + residual).

Both kernels work on [ROWS, BLOCK_N] tiles: whole rows in registers (BLOCK_N = next power of two >= N,
masked), several short rows or one long row per tile. Forward: one tile per program; statistics in fp32
from the unrounded pre-norm sum h, which is stored in x's dtype for backward. Backward: each program
walks a contiguous block of rows, writes grad_h (and the dropout-masked grad_x) and keeps fp32 partial
sums of grad_weight, grad_bias and grad_input_bias in registers; torch adds the [programs, N] partials
up afterwards (as in the Triton layer-norm tutorial and Liger-Kernel).
Dropout masks follow fastbert.ops.philox (index key[row] * N + col) and are regenerated in backward.
"""
import itertools

import torch
import triton
import triton.language as tl

from fastbert.kernels.utils import PTR, TILE, Tuned, bwd_rows_per_program, check_row_size, dropout_args, \
    fixed_row_config, keep_rows, launch_options, param_dtype, row_candidates, row_configs, row_keys, row_prune, \
    row_variants


@triton.jit
def _layer_norm_fwd(X, W, B, R, IB, OUT, H, MEAN, RSTD, KEYS, M, N, eps, threshold, scale, seed,
                    HAS_RESIDUAL: tl.constexpr, HAS_INPUT_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                    ALIGNED: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offs = (rows * N)[:, None] + cols[None, :]
    h = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_INPUT_BIAS:
        h += tl.load(IB + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if HAS_DROPOUT:
        keys = tl.load(KEYS + rows, mask=rows < M, other=0)
        h = tl.where(keep_rows(seed, keys, N, threshold, ROWS, BLOCK_N, ALIGNED), h * scale, 0.0)
    if HAS_RESIDUAL:
        h += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL or HAS_INPUT_BIAS or HAS_DROPOUT:
        tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)
    mean = tl.sum(h, axis=1) / N
    hc = tl.where(mask, h - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(hc * hc, axis=1) / N + eps)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (hc * rstd[:, None] * w[None, :] + b[None, :]).to(OUT.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rows < M)
    tl.store(RSTD + rows, rstd, mask=rows < M)


@triton.jit
def _layer_norm_bwd(DY, H, W, MEAN, RSTD, DH, DX, DW, DB, DIB, KEYS, M, N, rows_per_program, threshold, scale, seed,
                    HAS_INPUT_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, ALIGNED: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    dw = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    dib = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for start in range(first, last, ROWS):
        rows = start + tl.arange(0, ROWS)
        mask = (rows < last)[:, None] & (cols < N)[None, :]
        offs = (rows * N)[:, None] + cols[None, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rows < last, other=0.0)[:, None]
        rstd = tl.load(RSTD + rows, mask=rows < last, other=0.0)[:, None]
        xhat = tl.where(mask, (h - mean) * rstd, 0.0)
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)  # per tile (L1): fewer live registers
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1)[:, None] / N
        c2 = tl.sum(wdy, axis=1)[:, None] / N
        dh = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
        if HAS_DROPOUT:
            keys = tl.load(KEYS + rows, mask=rows < last, other=0)
            dh = tl.where(keep_rows(seed, keys, N, threshold, ROWS, BLOCK_N, ALIGNED), dh * scale, 0.0)
            tl.store(DX + offs, dh.to(DX.dtype.element_ty), mask=mask)
        if HAS_INPUT_BIAS:
            dib += dh
    part = pid * N + cols
    tl.store(DW + part, tl.sum(dw, axis=0), mask=cols < N)
    tl.store(DB + part, tl.sum(db, axis=0), mask=cols < N)
    if HAS_INPUT_BIAS:
        tl.store(DIB + part, tl.sum(dib, axis=0), mask=cols < N)


# -- configuration: the launchers and aot_specs() both pick from here, so the AOT test covers every variant --

def _config(n, dropout, backward=False):
    """(per-call constexprs, fixed config) for rows of n elements: the row tiling of kernels/utils.py, TILE
    elements per tile; the interpreter's choice, and on a GPU the first of the autotune candidates."""
    return fixed_row_config(n, dropout, backward, TILE)


_FLAGS = ["HAS_INPUT_BIAS", "HAS_DROPOUT", "ALIGNED"]
_fwd = Tuned(_layer_norm_fwd, row_configs(backward=False), key=["N", "HAS_RESIDUAL", *_FLAGS], prune=row_prune)
_bwd = Tuned(_layer_norm_bwd, row_configs(backward=True), key=["N", *_FLAGS], prune=row_prune)


# -- launchers: the kernel contract of fastbert.ops.layer_norm --

def layer_norm_forward(x, weight, bias, residual, input_bias, eps, dropout_p, seed, keys):
    M, N = x.shape
    check_row_size("layer_norm", N)
    wdt = param_dtype(x.dtype, weight, bias, input_bias)
    weight, bias = weight.to(wdt), bias.to(wdt)
    input_bias = None if input_bias is None else input_bias.to(wdt)
    if residual is not None and residual.dtype not in (x.dtype, torch.float32):
        residual = residual.float()
    keep_h = residual is not None or input_bias is not None or dropout_p > 0
    out = torch.empty_like(x)
    h = torch.empty_like(x) if keep_h else x.new_empty(0)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M:
        flags, fixed = _config(N, dropout_p > 0)
        _fwd(lambda meta: (triton.cdiv(M, meta["ROWS"]),), fixed,
            x, weight, bias, x if residual is None else residual, weight if input_bias is None else input_bias,
            out, h if keep_h else out, mean, rstd, row_keys(keys, M, dropout_p, x.device), M, N, eps,
            *dropout_args(dropout_p), seed,
            HAS_RESIDUAL=residual is not None, HAS_INPUT_BIAS=input_bias is not None, HAS_DROPOUT=dropout_p > 0,
            **flags)
    return out, h, mean, rstd


def layer_norm_backward(grad_out, h, weight, mean, rstd, dropout_p, seed, keys, has_input_bias):
    M, N = h.shape
    check_row_size("layer_norm", N)
    weight = weight.to(param_dtype(h.dtype, weight))
    grad_out = grad_out.to(h.dtype)
    grad_h = torch.empty_like(h)
    grad_x = torch.empty_like(h) if dropout_p > 0 else h.new_empty(0)
    flags, fixed = _config(N, dropout_p > 0, backward=True)
    per_program = bwd_rows_per_program(M, fixed.kwargs["ROWS"], h.device)  # every candidate's ROWS
    programs = triton.cdiv(M, per_program) if M else 0
    parts = torch.empty(3 if has_input_bias else 2, programs, N, dtype=torch.float32, device=h.device)
    if M:
        _bwd(lambda meta: (programs,), fixed,
            grad_out, h, weight, mean, rstd, grad_h, grad_x if dropout_p > 0 else grad_h, parts[0], parts[1],
            parts[-1], row_keys(keys, M, dropout_p, h.device), M, N, per_program, *dropout_args(dropout_p), seed,
            HAS_INPUT_BIAS=has_input_bias, HAS_DROPOUT=dropout_p > 0, **flags)
    sums = [part.sum(0) for part in parts]  # separate tensors: custom-op outputs may not alias
    return grad_h, grad_x, sums[0], sums[1], sums[2] if has_input_bias else h.new_empty(0)


# -- every variant the launchers can pick, for the ahead-of-time compile test --

def aot_specs():
    specs = []
    for xdt, (n, dropout, drop_tag), ib in itertools.product(PTR, row_variants(), (False, True)):
        x = PTR[xdt]
        aligned = _config(n, dropout)[0]
        tag = f"ib={ib:d} {drop_tag}"
        for w in dict.fromkeys([x, "*fp32"]):  # weights in x's dtype or fp32
            for r, c in itertools.product(dict.fromkeys([None, x, "*fp32"]), row_candidates(n, backward=False)):
                flags = dict(HAS_RESIDUAL=r is not None, HAS_INPUT_BIAS=ib, HAS_DROPOUT=dropout, **aligned, **c.kwargs)
                sig = dict(X=x, W=w, B=w, R=r or x, IB=w, OUT=x, H=x, MEAN="*fp32", RSTD="*fp32", KEYS="*i64",
                           M="i32", N="i32",
                           eps="fp32", threshold="i32", scale="fp32", seed="i64")
                specs.append(dict(name=f"_layer_norm_fwd x={x[1:]} w={w[1:]} r={(r or '-').lstrip('*')} {tag} "
                                       f"ROWS={c.kwargs['ROWS']} warps={c.num_warps}",
                                  fn=_layer_norm_fwd, signature={**sig, **dict.fromkeys(flags, "constexpr")},
                                  constexprs=flags, **launch_options(c)))
            for c in row_candidates(n, backward=True):
                flags = dict(HAS_INPUT_BIAS=ib, HAS_DROPOUT=dropout, **aligned, **c.kwargs)
                sig = dict(DY=x, H=x, W=w, MEAN="*fp32", RSTD="*fp32", DH=x, DX=x, DW="*fp32", DB="*fp32",
                           DIB="*fp32", KEYS="*i64", M="i32", N="i32", rows_per_program="i32", threshold="i32",
                           scale="fp32",
                           seed="i64")
                specs.append(dict(name=f"_layer_norm_bwd x={x[1:]} w={w[1:]} {tag} warps={c.num_warps}",
                                  fn=_layer_norm_bwd, signature={**sig, **dict.fromkeys(flags, "constexpr")},
                                  constexprs=flags, **launch_options(c)))
    return specs
