"""Benchmark: fastbert.ops.bias_gelu (Triton) vs eager PyTorch F.gelu(x + b), BERT's feed-forward
activation, forward / backward / forward+backward.

On CUDA: time per call (synchronised) and effective bandwidth against an ideal bytes-moved model (each
tensor read or written once) in extra_info. Without CUDA the timings are skipped; a tiny interpreter run
checks the Triton path against eager PyTorch instead.
"""
import pytest
import torch
import torch.nn.functional as F

from bench import gpu_targets
from bench.machine import cuda_step
from fastbert import backend, ops, use_backend

CUDA = torch.cuda.is_available()


def _bytes(mode, rows, n, dtype):
    """Ideal bytes: forward reads x and the bias and writes out; backward reads grad_out, x and the bias
    and writes grad_x and the fp32 bias gradient."""
    e = torch.finfo(dtype).bits // 8
    fwd = 2 * rows * n * e + n * 4
    bwd = 3 * rows * n * e + n * 4 + n * 4
    return {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[mode]


def _eager(x, b, approximate="none"):
    return F.gelu(x + b, approximate=approximate)


def _fused(x, b, approximate="none"):
    with use_backend("triton"):
        return ops.bias_gelu(x, b, approximate)


@pytest.mark.skipif(not CUDA, reason="bias_gelu timings need a CUDA GPU (CPU runs only the interpreter smoke check)")
@pytest.mark.parametrize("impl", ["fastbert", "torch"])
@pytest.mark.parametrize("mode", ["forward", "backward", "forward+backward"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", [1536, 3072, 4096])
def test_bias_gelu_speed(benchmark, impl, mode, dtype, n):
    rows = 32 * 512  # a BERT batch: 32 sequences of 512 tokens
    x = torch.randn(rows, n, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(n, device="cuda", dtype=dtype, requires_grad=True)
    step = cuda_step(mode, _fused if impl == "fastbert" else _eager, (x, b))
    step()  # compile / warm up
    moved = _bytes(mode, rows, n, dtype)
    benchmark.group = f"bias_gelu {mode} {rows}x{n} {str(dtype)[6:]}"
    benchmark.extra_info.update(op="bias_gelu", impl=impl, mode=mode, rows=rows, n=n, dtype=str(dtype)[6:],
                                bytes=moved)
    benchmark(step)
    if benchmark.stats:
        benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.median / 1e9


def test_bias_gelu_target(benchmark):
    """Target: the fused bias + GELU forward+backward >= 2x torch eager (bf16, bert-base's FFN rows)."""
    gpu_targets.skip_unless_timed(benchmark)
    x = torch.randn(32 * 512, 3072, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(3072, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fns = {impl: cuda_step("forward+backward", fn, (x, b)) for impl, fn in (("fastbert", _fused), ("torch", _eager))}
    benchmark.group = "GPU targets"
    gpu_targets.timed_target(benchmark, "bias_gelu", fns, lambda m: m["torch"] / m["fastbert"], rows=32 * 512, n=3072)


@pytest.mark.skipif(CUDA, reason="the interpreter smoke check is for machines without CUDA")
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_interpreter_smoke(approximate):
    if not backend.triton_interpreted():
        pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on CPU")
    x, b = torch.randn(5, 300, requires_grad=True), torch.randn(300, requires_grad=True)
    grad = torch.randn(5, 300)
    out, ref = _fused(x, b, approximate), _eager(x, b, approximate)
    torch.testing.assert_close(out, ref)
    for g, g_ref in zip(torch.autograd.grad(out, (x, b), grad), torch.autograd.grad(ref, (x, b), grad)):
        torch.testing.assert_close(g, g_ref)
