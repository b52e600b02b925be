"""Attention alone: fastbert's Triton kernels (padded and packed) against the reference op and torch SDPA.

Shapes are BERT-base attention (B=32 sequences, H=12 heads, D=64) in fp16, q/k/v sliced from one fused
[.., 3, H, D] projection as in the model, on four length workloads:
  S128, S512   every sequence exactly 128 / 512 tokens
  sts, imdb    real lengths: 32 tokenized STS sentence pairs (short), 32 CFIMDB reviews cut at 512 (long)
Providers:
  fastbert         ops.attention (padded [B, S, H, D] + seqlens), backend "triton"
  fastbert-varlen  ops.attention_varlen (packed tokens, no padding), backend "triton"
  reference        ops.attention on backend "reference" (PyTorch, fp32 softmax, materialised scores)
  sdpa             F.scaled_dot_product_attention with a boolean key-padding mask (PyTorch picks the kernel)
Modes: fwd (no grad), bwd (backward of a saved graph), fwd_bwd.
extra_info: TFLOP/s of the useful work (4 * H * D * sum(L^2) forward, 2.5x that backward: padding is not
counted, so padded providers pay for it), peak memory above the inputs, and an ideal-bytes model (each
real token's q, k, v, out, lse (and dout, dq, dk, dv) read or written once) with the GB/s it implies.
On CPU the Triton kernels exist only in the interpreter: a tiny correctness smoke test runs, timings skip.
"""
import functools
import os

import pytest
import torch
import torch.nn.functional as F

from fastbert import backend, ops, use_backend
from fastbert.data.readers import read_table
from fastbert.ops import padding

from bench import gpu_targets

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FASTBERT_DATA", os.path.join(ROOT, "..", "shared", "data"))
TIMED = torch.cuda.is_available() and not backend.triton_interpreted()
B, H, D, DTYPE = 32, 12, 64, torch.float16
WORKLOADS = ("S128", "S512", "sts", "imdb")
PROVIDERS = ("fastbert", "fastbert-varlen", "reference", "sdpa")
MODES = ("fwd", "bwd", "fwd_bwd")


@functools.cache
def lengths(workload: str) -> list[int]:
    if workload in ("S128", "S512"):
        return [int(workload[1:])] * B
    d = os.path.join(DATA_DIR, "cs224n")
    if not os.path.isdir(d):
        pytest.skip(f"data directory {DATA_DIR} not found (set FASTBERT_DATA) for the real-length workloads")
    from fastbert import BertTokenizer

    tok = BertTokenizer.from_pretrained()
    if workload == "sts":
        rows = read_table(os.path.join(d, "sts-train.csv"), text=["sentence1", "sentence2"])[:B]
        enc = tok.encode([r.texts[0] for r in rows], [r.texts[1] for r in rows])
    else:
        rows = read_table(os.path.join(d, "ids-cfimdb-train.csv"), text=["sentence"])[:B]
        enc = tok.encode([r.texts[0] for r in rows], max_length=512)
    return [len(ids) for ids, _ in enc]


class Case:
    """Inputs of one workload in the model's layout (q, k, v views of a fused projection), both forms."""

    def __init__(self, lens: list[int], device, dtype=DTYPE, heads=H, head_dim=D):
        self.lens, S = lens, max(lens)
        self.seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
        self.valid = torch.arange(S, device=device)[None, :] < self.seqlens[:, None]
        self.cu = padding.seqlens_to_cu(self.seqlens)
        qkv = torch.randn(len(lens), S, 3, heads, head_dim, device=device, dtype=dtype)
        self.qkv = qkv * self.valid[..., None, None, None]
        self.packed_qkv = qkv[self.valid]
        self.grad = torch.randn(len(lens), S, heads, head_dim, device=device, dtype=dtype)
        self.packed_grad = self.grad[self.valid]

    def provider(self, name: str):
        """(leaf tensor, fn computing the attention output from it, output gradient)."""
        if name == "fastbert-varlen":
            x = self.packed_qkv.clone().requires_grad_()

            def fn():
                with use_backend("triton"):
                    return ops.attention_varlen(*x.unbind(-3), self.cu, max(self.lens))
            return x, fn, self.packed_grad
        x = self.qkv.clone().requires_grad_()
        if name == "sdpa":
            mask = self.valid[:, None, None, :]

            def fn():
                q, k, v = (t.transpose(1, 2) for t in x.unbind(-3))
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
            return x, fn, self.grad * self.valid[..., None, None]

        def fn():
            with use_backend("triton" if name == "fastbert" else "reference"):
                return ops.attention(*x.unbind(-3), self.seqlens)
        return x, fn, self.grad

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.grad.shape[2] * self.grad.shape[3] * sum(n * n for n in self.lens)
        return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd_bwd": 3.5 * fwd}[mode]

    def ideal_bytes(self, mode: str) -> int:
        tokens, (heads, head_dim), e = sum(self.lens), self.grad.shape[2:], self.grad.element_size()
        row = heads * head_dim * e
        fwd = tokens * (4 * row + heads * 4)  # read q, k, v; write out, lse
        bwd = tokens * (8 * row + heads * 4)  # read q, k, v, out, dout, lse; write dq, dk, dv
        return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]


def _runner(case: Case, provider: str, mode: str):
    x, fn, grad = case.provider(provider)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
    elif mode == "bwd":
        out = fn()

        def run():
            x.grad = None
            out.backward(grad, retain_graph=True)
    else:
        def run():
            x.grad = None
            fn().backward(grad)
    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_attention(benchmark, workload, provider, mode):
    if not TIMED:
        pytest.skip("attention timings need a CUDA GPU with compiled Triton kernels (TRITON_INTERPRET unset); "
                    "on CPU the kernels only run in the interpreter: see test_interpreter_smoke")
    case = Case(lengths(workload), "cuda")
    run = _runner(case, provider, mode)
    run()  # compile and warm up outside the timing
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base

    def timed():
        run()
        torch.cuda.synchronize()

    benchmark.group = f"attention {mode} {workload}"
    benchmark(timed)
    info = dict(B=len(case.lens), H=H, D=D, dtype=str(DTYPE), tokens=sum(case.lens), max_seqlen=max(case.lens),
                padded_tokens=len(case.lens) * max(case.lens), flops=case.flops(mode),
                ideal_bytes=case.ideal_bytes(mode), peak_mem_mb=peak / 2**20)
    if benchmark.stats:
        t = benchmark.stats.stats.median
        info.update(tflops=case.flops(mode) / t / 1e12, ideal_gbps=case.ideal_bytes(mode) / t / 1e9)
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("workload", ["sts", "imdb"])
def test_attention_target(benchmark, workload):
    """Target: fastbert's varlen attention forward+backward >= 1.3x SDPA's on real BERT batches (SDPA computes
    the padding)."""
    gpu_targets.skip_unless_timed(benchmark)
    case = Case(lengths(workload), "cuda")
    fns = {p: _runner(case, p, "fwd_bwd") for p in ("fastbert-varlen", "sdpa")}
    benchmark.group = "GPU targets"
    gpu_targets.timed_target(benchmark, "attention", fns, lambda m: m["sdpa"] / m["fastbert-varlen"], workload=workload)


@pytest.mark.skipif(TIMED, reason="the CUDA timings check the kernels at full size")
def test_interpreter_smoke(benchmark):
    """CPU: one tiny forward + backward of both forms in the interpreter, checked against the reference."""
    if not backend.triton_interpreted():
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 set before fastbert is imported")
    case = Case([20, 1], "cpu", dtype=torch.float32, heads=1, head_dim=32)
    results = {}

    def run():
        for name in ("fastbert", "fastbert-varlen", "reference"):
            x, fn, grad = case.provider(name)
            out = fn()
            out.backward(grad)
            results[name] = (out.detach(), x.grad)

    benchmark.pedantic(run, rounds=1, iterations=1)
    ref_out, ref_grad = results["reference"]
    for name in ("fastbert", "fastbert-varlen"):
        out, grad = results[name]
        if name == "fastbert-varlen":
            ref_out, ref_grad = results["reference"][0][case.valid], results["reference"][1][case.valid]
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
