"""Triton kernels for fastbert.ops.bias_gelu: GELU(x + bias), exact (erf) or tanh-approximated.

Both kernels work on [BLOCK_M, BLOCK_N] tiles of the [rows, N] view, fp32 math. The backward recomputes
x + bias, writes grad_x and, with a bias, keeps fp32 column sums of grad_x in registers while each
program walks a strided set of row tiles; torch adds the [programs, N] partial sums up afterwards.
"""
import itertools

import torch
import triton
import triton.language as tl

from fastbert.kernels.utils import PTR, Tuned, interpreted, launch_options, programs

BLOCK_N = 256
BLOCK_M = 16 if interpreted() else 8  # the interpreter pays per operation, not per element


def _candidate(block_m, block_n, num_warps):
    """A config; maxnreg states the register file's share per thread, else ptxas may spill for occupancy."""
    return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=num_warps, num_stages=1,
                         maxnreg=min(255, 65536 // (32 * num_warps)))


FIXED = _candidate(BLOCK_M, BLOCK_N, 8)  # the interpreter's config, the first candidate on a GPU (8 per thread)
# Autotune candidates on a GPU: forward tiles of 4 to 16 elements per thread; the backward keeps the tile
# (the launcher sizes its grid and partial sums from it) and tries 4 to 16 elements per thread.
FWD_CONFIGS = [FIXED] + [_candidate(*c) for c in ((16, 256, 8), (4, 256, 4), (8, 512, 8), (16, 256, 16))]
BWD_CONFIGS = [FIXED] + [_candidate(BLOCK_M, BLOCK_N, w) for w in (4, 16)]


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


# Constants inline: 0.7978845608028654 = sqrt(2 / pi), 0.7071067811865476 = 1 / sqrt(2),
# 0.3989422804014327 = 1 / sqrt(2 pi) (globals would have to be tl.constexpr, which the interpreter mishandles).

@triton.jit
def _gelu(h, TANH: tl.constexpr):
    if TANH:
        return 0.5 * h * (1.0 + _tanh(0.7978845608028654 * (h + 0.044715 * h * h * h)))
    else:
        return 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))


@triton.jit
def _gelu_grad(h, TANH: tl.constexpr):
    if TANH:
        t = _tanh(0.7978845608028654 * (h + 0.044715 * h * h * h))
        return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3 * 0.044715 * h * h)
    else:
        return 0.5 * (1.0 + tl.erf(h * 0.7071067811865476)) + h * tl.exp(-0.5 * h * h) * 0.3989422804014327


@triton.jit
def _bias_gelu_fwd(X, B, OUT, M, N, HAS_BIAS: tl.constexpr, TANH: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offs = (rows * N)[:, None] + cols[None, :]
    h = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        h += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + offs, _gelu(h, TANH).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd(DY, X, B, DX, DB, M, N, HAS_BIAS: tl.constexpr, TANH: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    pid_m, programs_m = tl.program_id(0), tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(pid_m.to(tl.int64) * BLOCK_M, M, programs_m * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & (cols < N)[None, :]
        offs = (rows * N)[:, None] + cols[None, :]
        h = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            h += b
        dx = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32) * _gelu_grad(h, TANH)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        db += dx  # masked lanes hold 0 * gelu'(0)
    if HAS_BIAS:
        tl.store(DB + pid_m * N + cols, tl.sum(db, axis=0), mask=cols < N)


_fwd = Tuned(_bias_gelu_fwd, FWD_CONFIGS, key=["N", "HAS_BIAS", "TANH"])
_bwd = Tuned(_bias_gelu_bwd, BWD_CONFIGS, key=["N", "HAS_BIAS", "TANH"])


def _bias(x, bias):
    """The bias in x's dtype or fp32 (other dtypes are cast up: N elements, exact); None when empty."""
    if not bias.numel():
        return None
    return bias if bias.dtype in (x.dtype, torch.float32) else bias.float()


def bias_gelu_forward(x, bias, approximate):
    M, N = x.shape
    b = _bias(x, bias)
    out = torch.empty_like(x)
    if x.numel():
        _fwd(lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"])), FIXED,
             x, x if b is None else b, out, M, N, HAS_BIAS=b is not None, TANH=approximate == "tanh")
    return out


def _bwd_row_programs(M, col_blocks, device):
    """Row programs per column block with a bias: about 4 programs per SM in all (fewer partial sums),
    2 in the interpreter; each walks every programs-th row tile."""
    return min(triton.cdiv(M, BLOCK_M), triton.cdiv(programs(device, 2), col_blocks))


def bias_gelu_backward(grad_out, x, bias, approximate):
    M, N = x.shape
    b = _bias(x, bias)
    grad_x = torch.empty_like(x)
    col_blocks = triton.cdiv(N, BLOCK_N)
    programs_m = _bwd_row_programs(M, col_blocks, x.device) if b is not None else triton.cdiv(M, BLOCK_M)
    parts = torch.empty(programs_m if b is not None else 0, N, dtype=torch.float32, device=x.device)
    if x.numel():
        _bwd(lambda meta: (programs_m, col_blocks), FIXED,
             grad_out.to(x.dtype), x, x if b is None else b, grad_x, parts, M, N, HAS_BIAS=b is not None,
             TANH=approximate == "tanh")
    grad_bias = parts.sum(0) if b is not None else x.new_empty(0, dtype=torch.float32)
    return grad_x, grad_bias


# -- every variant the launchers can pick, for the ahead-of-time compile test --

def aot_specs():
    specs = []
    for xdt, tanh in itertools.product(PTR, (False, True)):
        x = PTR[xdt]
        for b in dict.fromkeys([None, x, "*fp32"]):  # no bias, or one in x's dtype or fp32
            tag = f"x={x[1:]} bias={(b or '-').lstrip('*')} approximate={'tanh' if tanh else 'none'}"
            for fn, sig, configs in ((_bias_gelu_fwd, dict(X=x, B=b or x, OUT=x, M="i32", N="i32"), FWD_CONFIGS),
                                     (_bias_gelu_bwd, dict(DY=x, X=x, B=b or x, DX=x, DB="*fp32", M="i32", N="i32"),
                                      BWD_CONFIGS)):
                for c in configs:
                    constexprs = dict(HAS_BIAS=b is not None, TANH=tanh, **c.kwargs)
                    specs.append(dict(name=f"{fn.__name__} {tag} BLOCK={c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} "
                                           f"warps={c.num_warps}", fn=fn,
                                      signature={**sig, **dict.fromkeys(constexprs, "constexpr")},
                                      constexprs=constexprs, **launch_options(c)))
    return specs
