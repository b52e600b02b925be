"""Benchmark: fastbert.ops.layer_norm (Triton) vs eager PyTorch, BERT's add & norm
LayerNorm(dropout(x + input_bias) + residual), forward / backward / forward+backward.

On CUDA: time per call (synchronised) and effective bandwidth against an ideal bytes-moved model (each
tensor read or written once; the fp32 mean/rstd and parameter vectors included) in extra_info. Without
CUDA the timings are skipped; a tiny interpreter run checks the Triton path against eager PyTorch instead.
"""
import pytest
import torch
import torch.nn.functional as F

from bench import gpu_targets
from bench.machine import cuda_step
from fastbert import backend, ops, use_backend

CUDA = torch.cuda.is_available()
P = 0.1  # hidden_dropout_prob


def _bytes(mode, rows, n, dtype, weight_dtype=torch.float32):
    """Ideal bytes moved by the fused kernels: forward reads x, residual and 3 parameter vectors and writes
    out, h and mean/rstd; backward reads grad_out, h, mean/rstd and the weight and writes grad_h, grad_x
    and 3 fp32 parameter gradients."""
    e, w = torch.finfo(dtype).bits // 8, torch.finfo(weight_dtype).bits // 8
    fwd = rows * n * e * 4 + 3 * n * w + rows * 8
    bwd = rows * n * e * 4 + rows * 8 + n * w + 3 * n * 4
    return {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[mode]


def _eager(x, r, w, b, ib, p=P):
    return F.layer_norm(F.dropout(x + ib, p) + r, w.shape, w, b, 1e-12)


def _fused(x, r, w, b, ib, p=P, backend="triton"):
    with use_backend(backend):
        return ops.layer_norm(x, w, b, 1e-12, residual=r, input_bias=ib, dropout_p=p)


def _case(rows, n, dtype, device):
    x, r = (torch.randn(rows, n, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    w, b, ib = (torch.randn(n, device=device, requires_grad=True) for _ in range(3))  # fp32 master weights
    return x, r, w, b, ib


@pytest.mark.skipif(not CUDA, reason="layer_norm timings need a CUDA GPU (CPU runs only the interpreter smoke check)")
@pytest.mark.parametrize("impl", ["fastbert", "torch"])
@pytest.mark.parametrize("mode", ["forward", "backward", "forward+backward"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", [384, 768, 1024])
def test_layer_norm_speed(benchmark, impl, mode, dtype, n):
    rows = 32 * 512  # a BERT batch: 32 sequences of 512 tokens
    inputs = _case(rows, n, dtype, "cuda")
    step = cuda_step(mode, _fused if impl == "fastbert" else _eager, inputs)
    step()  # compile / warm up
    moved = _bytes(mode, rows, n, dtype)
    benchmark.group = f"layer_norm {mode} {rows}x{n} {str(dtype)[6:]}"
    benchmark.extra_info.update(op="layer_norm", impl=impl, mode=mode, rows=rows, n=n, dtype=str(dtype)[6:],
                                bytes=moved)
    benchmark(step)
    if benchmark.stats:
        benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.median / 1e9


def test_layer_norm_target(benchmark):
    """Target: the fused LayerNorm + residual + dropout forward+backward >= 2x torch eager (bf16, bert-base rows)."""
    gpu_targets.skip_unless_timed(benchmark)
    inputs = _case(32 * 512, 768, torch.bfloat16, "cuda")
    fns = {impl: cuda_step("forward+backward", fn, inputs) for impl, fn in (("fastbert", _fused), ("torch", _eager))}
    benchmark.group = "GPU targets"
    gpu_targets.timed_target(benchmark, "layer_norm", fns, lambda m: m["torch"] / m["fastbert"], rows=32 * 512, n=768)


@pytest.mark.skipif(CUDA, reason="the interpreter smoke check is for machines without CUDA")
def test_layer_norm_interpreter_smoke():
    if not backend.triton_interpreted():
        pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on CPU")
    inputs = _case(6, 40, torch.float32, "cpu")
    grad = torch.randn(6, 40)
    reference = lambda *t, p: _fused(*t, p=p, backend="reference")  # noqa: E731
    for p, (fused, other) in [(0.0, (_fused, _eager)), (P, (_fused, reference))]:
        torch.manual_seed(0)
        out = fused(*inputs, p=p)
        torch.manual_seed(0)  # the same dropout seed for fastbert's reference
        ref = other(*inputs, p=p)
        torch.testing.assert_close(out, ref)
        for g, g_ref in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
            torch.testing.assert_close(g, g_ref)
