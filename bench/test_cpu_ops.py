"""Benchmark: the C++ CPU kernels (backend "cpu") vs eager PyTorch in the same dtype, at all-MiniLM-L6-v2
shapes on a real-sized batch: 32 sequences padded to 64 tokens (lengths skewed short, ~60% padding, as in
the CS224N tasks), hidden 384, 12 heads of 32, intermediate 1536, dropout 0.1.

Each op runs forward, backward (of a fixed graph) and forward+backward; extra_info holds the ideal bytes
moved (each tensor read or written once) and GB/s against it; attention also its useful GFLOP/s (real
tokens only: eager attention also multiplies padding). Compare impls within one group, from one run.

On a shared, oversubscribed machine multi-threaded wall-clock medians measure the scheduler (a parallel
region waits for a descheduled thread's next time slice); the CPU work of each impl is then compared with
  OMP_NUM_THREADS=1 pytest bench/test_cpu_ops.py --benchmark-only --benchmark-timer=time.process_time
"""
import math

import pytest
import torch
import torch.nn.functional as F

from fastbert import _extension, ops, use_backend
from fastbert.ops import padding

pytestmark = pytest.mark.skipif(not _extension.has("layer_norm_forward"),
                                reason=f"C++ extension unavailable: {_extension.status()}")

B, S, HIDDEN, HEADS, FFN, VOCAB, P = 32, 64, 384, 12, 1536, 30522, 0.1
MODES = ["forward", "backward", "forward+backward"]
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])


def _lengths():
    g = torch.Generator().manual_seed(0)
    lens = (5 + 59 * torch.rand(B, generator=g) ** 2).to(torch.int32)
    lens[0] = S
    return lens


LENS = _lengths()
TOKENS = int(LENS.sum())  # real tokens: what the unpadded model feeds every op but attention's padded form


def _step(mode, fn, inputs):
    """The callable to time: forward, backward of a fixed graph (autograd.grad, nothing accumulates), or both."""
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    out = fn(*inputs)
    grad = torch.randn(out.shape, dtype=out.dtype)
    if mode == "forward":
        return lambda: fn(*inputs)
    if mode == "backward":
        return lambda: torch.autograd.grad(out, diff, grad, retain_graph=True)
    return lambda: torch.autograd.grad(fn(*inputs), diff, grad)


def _bench(benchmark, op, impl, mode, dtype, step, moved, **info):
    step()  # warm up
    benchmark.group = f"{op} {mode} {str(dtype)[6:]}"
    benchmark.extra_info.update(op=op, impl=impl, mode=mode, dtype=str(dtype)[6:], bytes=moved, **info)
    benchmark(step)
    if benchmark.stats:
        median = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = moved / median / 1e9
        if "flop" in info:
            benchmark.extra_info["GFLOP/s"] = info["flop"] / median / 1e9


def _param(n, dtype=torch.float32):
    return torch.randn(n, dtype=dtype, requires_grad=True)


def _act(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def _size(dtype):
    return torch.finfo(dtype).bits // 8


# -- add & norm: LayerNorm(dropout(x + input_bias) + residual) on the real tokens --

@pytest.mark.parametrize("impl", ["fastbert", "torch"])
@pytest.mark.parametrize("mode", MODES)
@DTYPES
def test_layer_norm(benchmark, impl, mode, dtype):
    inputs = (_act(TOKENS, HIDDEN, dtype=dtype), _act(TOKENS, HIDDEN, dtype=dtype), _param(HIDDEN), _param(HIDDEN),
              _param(HIDDEN, dtype))

    def fused(x, r, w, b, ib):
        with use_backend("cpu"):
            return ops.layer_norm(x, w, b, 1e-12, residual=r, input_bias=ib, dropout_p=P)

    def eager(x, r, w, b, ib):
        return F.layer_norm(F.dropout(x + ib, P) + r, (HIDDEN,), w, b, 1e-12)

    e = _size(dtype)  # forward: x, residual in; out, h out. backward: grad_out, h in; grad_h, grad_x out
    moved = {"forward": 4, "backward": 4, "forward+backward": 8}[mode] * TOKENS * HIDDEN * e
    _bench(benchmark, "layer_norm", impl, mode, dtype, _step(mode, fused if impl == "fastbert" else eager, inputs),
           moved, rows=TOKENS, n=HIDDEN)


# -- GELU(x + bias) on the feed-forward activations --

@pytest.mark.parametrize("impl", ["fastbert", "torch"])
@pytest.mark.parametrize("mode", MODES)
@DTYPES
def test_bias_gelu(benchmark, impl, mode, dtype):
    inputs = (_act(TOKENS, FFN, dtype=dtype), _param(FFN, dtype))

    def fused(x, b):
        with use_backend("cpu"):
            return ops.bias_gelu(x, b)

    def eager(x, b):
        return F.gelu(x + b)

    moved = {"forward": 2, "backward": 3, "forward+backward": 5}[mode] * TOKENS * FFN * _size(dtype)
    _bench(benchmark, "bias_gelu", impl, mode, dtype, _step(mode, fused if impl == "fastbert" else eager, inputs),
           moved, rows=TOKENS, n=FFN)


# -- attention: q, k, v as views of one fused QKV projection --

@pytest.mark.parametrize("impl", ["fastbert", "fastbert_varlen", "torch", "torch_sdpa"])
@pytest.mark.parametrize("mode", MODES)
@DTYPES
def test_attention(benchmark, impl, mode, dtype):
    D = HIDDEN // HEADS
    valid = torch.arange(S)[None] < LENS[:, None]
    if impl == "fastbert_varlen":  # the packed tokens, as the unpadded model runs
        qkv = _act(TOKENS, 3, HEADS, D, dtype=dtype)
        cu = padding.seqlens_to_cu(LENS)
    else:
        qkv = torch.randn(B, S, 3, HEADS, D, dtype=dtype)
        qkv[~valid] = 0
        qkv.requires_grad_()
    additive = torch.zeros(B, 1, 1, S, dtype=dtype).masked_fill(~valid[:, None, None, :], torch.finfo(dtype).min)

    def fused(qkv):
        with use_backend("cpu"):
            if impl == "fastbert_varlen":
                return ops.attention_varlen(*qkv.unbind(1), cu, S, dropout_p=P)
            return ops.attention(*qkv.unbind(2), LENS, dropout_p=P)

    def eager(qkv):  # Hugging Face's eager BertSelfAttention
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        probs = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + additive, dim=-1), P)
        return (probs @ v).transpose(1, 2)

    def sdpa(qkv):
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], dropout_p=P).transpose(1, 2)

    fn = {"fastbert": fused, "fastbert_varlen": fused, "torch": eager, "torch_sdpa": sdpa}[impl]
    e, real = _size(dtype), TOKENS * HEADS * D
    moved = {"forward": 4 * real * e, "backward": 8 * real * e, "forward+backward": 12 * real * e}[mode]
    per_head = HEADS * D * int((LENS.long() ** 2).sum())  # useful multiply-adds of one L x L x D product
    flop = {"forward": 4, "backward": 10, "forward+backward": 14}[mode] * per_head
    _bench(benchmark, "attention", impl, mode, dtype, _step(mode, fn, (qkv,)), moved, flop=flop, tokens=TOKENS,
           padded_tokens=B * S)


# -- embeddings: dropout(LayerNorm(word + token type + position)) on the real tokens --

@pytest.mark.parametrize("impl", ["fastbert", "torch"])
@pytest.mark.parametrize("mode", MODES)
@DTYPES
def test_embedding_layer_norm(benchmark, impl, mode, dtype):
    cu = padding.seqlens_to_cu(LENS)
    ids = torch.randint(1, VOCAB, (TOKENS,))
    types, positions = torch.randint(0, 2, (TOKENS,)), padding.position_ids_packed(cu)
    tables = [torch.randn(rows, HIDDEN, dtype=dtype, requires_grad=True) for rows in (VOCAB, 2, 512)]
    inputs = (ids, types, positions, *tables, _param(HIDDEN), _param(HIDDEN))

    def fused(ids, types, positions, word, token_type, position, w, b):
        with use_backend("cpu"):
            return ops.embedding_layer_norm(ids, types, positions, word, token_type, position, w, b, 1e-12,
                                            dropout_p=P, padding_idx=0)

    def eager(ids, types, positions, word, token_type, position, w, b):
        h = F.embedding(ids, word, 0) + F.embedding(types, token_type) + F.embedding(positions, position)
        return F.dropout(F.layer_norm(h, (HIDDEN,), w, b, 1e-12), P)

    e = _size(dtype)  # forward: 3 table rows in, out out; backward: grad_out in, 3 table rows (recomputed or
    # gathered) in, the dense fp32 word-table gradient written once
    fwd, bwd = 4 * TOKENS * HIDDEN * e, 4 * TOKENS * HIDDEN * e + VOCAB * HIDDEN * 4
    moved = {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[mode]
    _bench(benchmark, "embedding_layer_norm", impl, mode, dtype,
           _step(mode, fused if impl == "fastbert" else eager, inputs), moved, rows=TOKENS, n=HIDDEN)
