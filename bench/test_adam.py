"""FusedAdam step time on CPU against torch.optim.Adam (foreach=True, fused=True) and the memory roofline.

110M fp32 parameters (BERT-base's count) as one tensor and as BERT-base's 199 tensors. The roofline is a
kernel with Adam's memory traffic and no arithmetic (read p, g, m, v; write p, m, v: 28 bytes per parameter),
compiled here with gcc -O3 -march=native -fopenmp and run on the same threads. With clipping (max norm 1.0),
FusedAdam(max_grad_norm=) against clip_grad_norm_ + torch's fused Adam.
On a shared machine, timings drift with the neighbours' load: every timed round follows a roofline run
(untimed setup), and extra_info["x_roofline"] is the median of the per-round ratios; compare variants by it.
extra_info["GB/s"] counts 28 bytes per parameter for every variant.
  pytest bench/test_adam.py --benchmark-only        timed, full size
  pytest bench/test_adam.py --benchmark-disable     quick mode (CI): a small model, every variant once
"""
import ctypes
import os
import statistics
import subprocess
import tempfile
import time

import pytest
import torch

from bench import gpu_targets
from fastbert.optim import FusedAdam, FusedAdamW

QUICK_ENV = os.environ.get("FASTBERT_BENCH_QUICK", "0") not in ("", "0")
BYTES_PER_PARAM = 28  # fp32: read p, g, m, v; write p, m, v

ROOFLINE_C = r"""
// Chunks of 65536, scheduled dynamically, whose two halves go side by side: the access order and schedule
// of FusedAdam's CPU kernel.
static void touch(float* restrict p, const float* restrict g, float* restrict m, float* restrict v, long n) {
  const long q = n / 2;
  #pragma omp simd
  for (long i = 0; i < q; ++i) {
    const float a = g[i], b = g[q + i];
    p[i] += a; m[i] += a; v[i] += a; p[q + i] += b; m[q + i] += b; v[q + i] += b;
  }
  for (long i = 2 * q; i < n; ++i) { const float a = g[i]; p[i] += a; m[i] += a; v[i] += a; }
}

void roofline(float** p, float** g, float** m, float** v, const long* n, int k) {
  #pragma omp parallel
  for (int t = 0; t < k; ++t) {
    #pragma omp for schedule(dynamic) nowait
    for (long c = 0; c < n[t]; c += 65536) {
      const long len = n[t] - c < 65536 ? n[t] - c : 65536;
      touch(p[t] + c, g[t] + c, m[t] + c, v[t] + c, len);
    }
  }
}
"""


def bert_shapes(hidden=768, layers=12, vocab=30522, ffn=3072, positions=512):
    """BERT-base's parameter shapes: 199 tensors, 109.5M parameters."""
    shapes = [(vocab, hidden), (positions, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        shapes += [(hidden, hidden), (hidden,)] * 4 + [(hidden,), (hidden,)]  # q, k, v, out; LayerNorm
        shapes += [(ffn, hidden), (ffn,), (hidden, ffn), (hidden,), (hidden,), (hidden,)]  # FFN; LayerNorm
    return shapes + [(hidden, hidden), (hidden,)]  # pooler


def make_params(layout: str, quick: bool) -> list[torch.Tensor]:
    shapes = bert_shapes(64, 2, 1000, 256, 128) if quick else bert_shapes()
    if layout == "one_tensor":
        shapes = [(sum(torch.Size(s).numel() for s in shapes),)]
    params = [torch.empty(s).uniform_(-0.05, 0.05).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


@pytest.fixture(scope="module")
def roofline_kernel():
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "roofline.c"), os.path.join(tmp, "roofline.so")
        with open(src, "w") as f:
            f.write(ROOFLINE_C)
        subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", src, "-o", lib], check=True)
        yield ctypes.CDLL(lib).roofline


def roofline_step(kernel, params):
    states = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    ptrs = lambda ts: (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])  # noqa: E731
    args = (ptrs(params), ptrs([p.grad for p in params]), ptrs([m for m, _ in states]), ptrs([v for _, v in states]),
            (ctypes.c_long * len(params))(*[p.numel() for p in params]), len(params))
    return lambda: kernel(*args) if states else None  # the closure keeps the states alive


def optimizer_step(variant, params):
    if variant == "fastbert":
        return FusedAdam(params, lr=1e-5).step
    if variant == "fastbert_clip":
        return FusedAdam(params, lr=1e-5, max_grad_norm=1.0).step
    opt = torch.optim.Adam(params, lr=1e-5, **({"foreach": True} if variant == "torch_foreach" else {"fused": True}))
    if variant == "torch_clip_fused":
        def step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return step
    return opt.step


@pytest.mark.parametrize("variant", ["roofline", "fastbert", "torch_fused", "torch_foreach", "fastbert_clip",
                                     "torch_clip_fused"])
@pytest.mark.parametrize("layout", ["one_tensor", "bert"])
def test_adam_step_cpu(benchmark, roofline_kernel, layout, variant):
    quick = benchmark.disabled or QUICK_ENV
    params = make_params(layout, quick)
    roofline = roofline_step(roofline_kernel, params)
    step = roofline if variant == "roofline" else optimizer_step(variant, params)
    step()  # state allocation and first touch outside the timing
    roofline_times = []

    def time_roofline():
        start = time.perf_counter()
        roofline()
        roofline_times.append(time.perf_counter() - start)

    benchmark.group = f"adam-cpu-{layout}"
    rounds = 3 if quick else 9
    benchmark.pedantic(step, setup=time_roofline, rounds=rounds, warmup_rounds=1)
    n = sum(p.numel() for p in params)
    benchmark.extra_info.update(params=n, tensors=len(params))
    if not benchmark.disabled:
        times, roof = benchmark.stats.stats.data, roofline_times[-rounds:]
        benchmark.extra_info["GB/s"] = round(BYTES_PER_PARAM * n / benchmark.stats.stats.median / 1e9, 2)
        benchmark.extra_info["roofline GB/s"] = round(BYTES_PER_PARAM * n / statistics.median(roof) / 1e9, 2)
        benchmark.extra_info["x_roofline"] = round(statistics.median(t / r for t, r in zip(times, roof)), 3)


def test_adam_cuda_target(benchmark):
    """CUDA: FusedAdamW and torch.optim.AdamW(fused=True) on BERT-base's 199 fp32 tensors against the memory
    roofline, a device copy moving the same 28 bytes per parameter. Target: fastbert within 10% of it."""
    gpu_targets.skip_unless_timed(benchmark)
    params = [p.detach().cuda().requires_grad_() for p in make_params("bert", quick=False)]
    ref = [p.detach().clone().requires_grad_() for p in params]
    for p, r in zip(params, ref):
        p.grad = torch.randn_like(p) * 1e-2
        r.grad = p.grad.clone()
    n = sum(p.numel() for p in params)
    src = torch.empty(BYTES_PER_PARAM * n // 8, device="cuda")  # a copy reads and writes 4 bytes per element
    dst = torch.empty_like(src)
    fns = {"fastbert": FusedAdamW(params, lr=1e-5).step,
           "torch_fused": torch.optim.AdamW(ref, lr=1e-5, fused=True).step,
           "roofline": lambda: dst.copy_(src)}
    benchmark.group = "GPU targets"
    med = gpu_targets.timed_target(benchmark, "adam", fns, lambda m: m["roofline"] / m["fastbert"], params=n,
                                   tensors=len(params))
    benchmark.extra_info["GB/s"] = {k: BYTES_PER_PARAM * n / (v / 1e3) / 1e9 for k, v in med.items()}
