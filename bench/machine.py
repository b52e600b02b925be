"""The machine a benchmark runs on: device, synchronisation, CPU model and flags, library versions, fastbert's op
backends, the measured matmul rate (MFU's denominator), and a CUDA timing helper for the per-op benchmarks.

  FASTBERT_BENCH_DEVICE=cpu|cuda                   the device (default: cuda when there is one)
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import subprocess
import time

import torch

from fastbert import backend


def device_name() -> str:
    name = os.environ.get("FASTBERT_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"FASTBERT_BENCH_DEVICE must be cpu or cuda, got {name!r}")
    return name


def results_name(dev: torch.device) -> str:
    """The results file's name (bench/results/<name>.json), one per kind of machine: cuda; cpu (bf16 matmuls:
    fastbert trains in bf16); cpu-fp32 (none: it trains in fp32, bf16 variants are left out)."""
    if dev.type != "cpu":
        return dev.type
    return "cpu" if backend.bf16_matmuls(dev) else "cpu-fp32"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(benchmark) -> float | None:
    """The median round time of a finished benchmark (None when benchmarks are disabled)."""
    return benchmark.stats.stats.median if benchmark.stats else None


def matmul_tflops(dev: torch.device, dtype: torch.dtype, quick: bool, repeats: int = 20) -> float:
    """The machine's attainable matmul rate in `dtype`, MFU's denominator: the best of `repeats` timed matmuls
    (after one untimed) at bert-base's FFN shape ([2048 tokens, 768] @ [768, 3072] on CPU; a shared machine
    slows some, none speeds up)."""
    m, k, n = (256, 64, 256) if quick else (16384 if dev.type == "cuda" else 2048, 768, 3072)
    a, b = torch.randn(m, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(dev)
        t = time.perf_counter()
        a @ b
        sync(dev)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / min(times[1:]) / 1e12


def version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
        return set(line.split(":", 1)[-1].split())
    except OSError:
        return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def op_backends(dev: torch.device) -> dict[str, str]:
    """What backend "auto" runs for each fused op (each fastbert.ops module with KERNELS) on this device."""
    import fastbert.ops

    out = {}
    with backend.use_backend("auto"):
        for m in pkgutil.iter_modules(fastbert.ops.__path__):
            kernels = getattr(importlib.import_module(f"fastbert.ops.{m.name}"), "KERNELS", None)
            if kernels is not None:
                op = {"embedding": "embedding_layer_norm"}.get(m.name, m.name)  # the op's name where it differs
                out[op] = backend.resolve(op, dev, kernels)
    return out


def optimizer_name() -> str:
    """fastbert's optimizer and the implementation it runs on the benchmark device."""
    from fastbert.optim.adam import _implementation
    return f"fastbert.optim.FusedAdamW ({_implementation(torch.device(device_name()))})"


def machine_info(dev: torch.device, quick: bool) -> dict:
    """The benchmark JSON's machine_info["fastbert"]: device, CPU, library versions, op backends, optimizer, the
    bf16 matmul rate and quick mode."""
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in cpu_flags()],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "fastbert": version("fastbert"),
        "op_backends": op_backends(dev),
        "optimizer": optimizer_name(),
        "bf16_matmuls": backend.bf16_matmuls(dev),  # without: no bf16 rate (a reference loop, minutes to time)
        "bf16_matmul_tflops": matmul_tflops(dev, torch.bfloat16, quick) if backend.bf16_matmuls(dev) or quick
        else None,
        "fp32_matmul_tflops": matmul_tflops(dev, torch.float32, quick),
        "quick": quick,
    }


def cuda_step(mode: str, fn, inputs):
    """The per-op benchmarks' callable to time on CUDA: forward, backward of a fixed graph, or both; each
    ends synchronised."""
    grad = torch.randn(inputs[0].shape, device=inputs[0].device, dtype=inputs[0].dtype)
    if mode == "backward":
        out = fn(*inputs)
        return lambda: (torch.autograd.grad(out, inputs, grad, retain_graph=True), torch.cuda.synchronize())
    if mode == "forward":
        return lambda: (fn(*inputs), torch.cuda.synchronize())
    return lambda: (torch.autograd.grad(fn(*inputs), inputs, grad), torch.cuda.synchronize())


def git_state(root: str) -> dict:
    """{"commit": HEAD's id, "dirty": whether tracked files differ from it} of the checkout at `root`, as
    pytest-benchmark's commit_info (untracked files do not count); commit "unknown" outside a git checkout."""
    try:
        return {"commit": _git(root, "rev-parse", "HEAD"),
                "dirty": bool(_git(root, "status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": True}


def _git(root: str, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
