"""The GPU targets (issue 16; the CPU ones are in bench/targets.py), checked where they are timed: on CUDA, in a
timing run (--benchmark-only).

Each target test times fastbert and its baseline in one process, interleaved call by call, with CUDA events
(median per variant), records the result under extra_info["target"] and fails when fastbert misses it, so a
miss shows in the run's exit status and in BENCHMARKS.md. Elsewhere (CPU, the interpreter, quick mode) it skips.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import pytest
import torch

# name: (threshold, what the value is)
TARGETS = {
    "attention": (1.3, "attention forward+backward on real (padded) BERT batches: SDPA time / fastbert varlen time"),
    "layer_norm": (2.0, "LayerNorm + residual + dropout forward+backward: torch eager time / fastbert time"),
    "bias_gelu": (2.0, "bias + GELU forward+backward: torch eager time / fastbert time"),
    "adam": (0.9, "FusedAdamW step on BERT-base's 199 fp32 tensors: memory-roofline time / fastbert time"),
    "train_bert_base": (1.5, "bert-base training step on real batches: HF bf16 SDPA time / fastbert time"),
}


def skip_unless_timed(benchmark) -> None:
    """Skip unless this run times on CUDA with compiled kernels."""
    from fastbert import backend

    if benchmark.disabled or os.environ.get("FASTBERT_BENCH_QUICK", "0") not in ("", "0"):
        pytest.skip("the GPU targets are checked in timing runs only (--benchmark-only, not quick mode)")
    if not torch.cuda.is_available() or backend.triton_interpreted():
        pytest.skip("the GPU targets are timed on CUDA with compiled Triton kernels (TRITON_INTERPRET unset)")


def cuda_medians_ms(fns: dict, reps: int = 25, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each fn: CUDA events around every call, the fns interleaved call by call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(ts) for name, ts in times.items()}


def check(benchmark, name: str, value: float, **detail) -> None:
    """Record fastbert's result against TARGETS[name] in the benchmark's extra_info, then fail on a miss."""
    threshold, what = TARGETS[name]
    met = bool(value >= threshold)
    benchmark.extra_info["target"] = dict(name=name, what=what, threshold=threshold, value=value, met=met, **detail)
    assert met, f"GPU target missed: {what} = {value:.2f}, target >= {threshold:g}"


def timed_target(benchmark, name: str, fns: dict, value, **detail) -> dict[str, float]:
    """Time `fns` (cuda_medians_ms) as this benchmark's one round, then check value(medians) against the target."""
    medians = {}
    benchmark.pedantic(lambda: medians.update(cuda_medians_ms(fns)), rounds=1)
    check(benchmark, name, value(medians), median_ms=medians, **detail)
    return medians


def summarize(path: str) -> str:
    """"<n> timed|<m> of <k> met[, missed: ...]" for a pytest-benchmark JSON (scripts/gpu_check.sh reads it)."""
    with open(path) as f:
        benchmarks = json.load(f)["benchmarks"]
    results = [b["extra_info"]["target"] for b in benchmarks if isinstance(b.get("extra_info", {}).get("target"), dict)]
    missed = ", ".join(t["name"] + (f" {t['workload']}" if "workload" in t else "") for t in results if not t["met"])
    return (f"{len(benchmarks)} timed|{sum(t['met'] for t in results)} of {len(results)} met"
            + (f", missed: {missed}" if missed else ""))


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
