"""Interleaved rounds: every variant trains on the same rounds of real batches in turn, the order rotated every
round, so that a shared machine's noise falls on all variants alike. Used by bench/test_model.py
(test_train_speedup) and python -m bench.cpu_speedup.
"""
from __future__ import annotations

import statistics
import time

import torch

from bench.machine import sync
from bench.workload import Runner, LayoutBatch, real_batches, timed_skip, train_flops
from fastbert import BertConfig

# the interleaved training-step comparison (test_train_speedup): fastbert (bf16 weights) against each other
# variant, its fp32-weights autocast path and both Hugging Face bf16 baselines included
SPEEDUP_VARIANTS = ("fastbert", "fastbert-bf16-autocast", "hf-fp32", "hf-bf16", "hf-bf16-pad8")


def speedup_variants(device: torch.device, names=SPEEDUP_VARIANTS) -> tuple[str, ...]:
    """The variants of `names` a timed run compares on `device` (workload.timed_skip leaves out the rest)."""
    return tuple(v for v in names if timed_skip(v, device) is None)


def batch_rounds(tasks, tokenizer, n: int, batches: int, batch: int, seed: int, device: torch.device,
                 repeat: bool = False) -> list[list[LayoutBatch]]:
    """n + 1 rounds of `batches` real batches each: new ones every round, as training sees them (new token
    counts; on CPU a bf16 matmul pays for every new shape), or the same ones with `repeat`. Every variant gets
    the same rounds; round 0 is for warming up."""
    seeds = [seed + (0 if repeat else 100 * i) for i in range(n + 1)]
    return [[b.to(device) for b in real_batches(tasks, tokenizer, batches, batch, seed=s)] for s in seeds]


def interleaved_train_rounds(runners: dict[str, Runner], rounds: list[list[LayoutBatch]],
                             device: torch.device) -> dict[str, list[float]]:
    """Seconds per timed round per variant. rounds[0] warms every variant up (optimizer state, allocator,
    matmul kernels), untimed; then round i runs through every variant in turn, the order rotated each round
    so that every variant runs in every position; on a shared machine the noise then falls on all alike
    (one variant's rounds after another's put the machine's drift into the ratios)."""
    for r in runners.values():
        for b in rounds[0]:
            r.train_step(b)
    times = {v: [] for v in runners}
    order = list(runners)
    for i, batches in enumerate(rounds[1:]):
        for v in order[i % len(order):] + order[:i % len(order)]:
            sync(device)
            t = time.perf_counter()
            for b in batches:
                runners[v].train_step(b)
            sync(device)
            times[v].append(time.perf_counter() - t)
    return times


def speedup_record(shape: str, config: BertConfig, rounds: list[list[LayoutBatch]], times: dict[str, list[float]],
                   matmul_tflops: float, precision: str = "bf16") -> dict:
    """One interleaved comparison as a record (test_train_speedup's extra_info; what bench/targets.py judges):
    per-round seconds per variant and model FLOPs over the timed `rounds`, their medians, fastbert's speed-up over
    each other variant (ratio of medians), the precision fastbert ran in (bf16, or fp32 on a device without bf16
    matmuls) and the machine's matmul rate (TFLOP/s) in that precision, which MFU is measured against."""
    lengths = [[n for b in r for n in b.packed.lengths.tolist()] for r in rounds]
    med = {v: statistics.median(ts) for v, ts in times.items()}
    return dict(kind="speedup", shape=shape, rounds=len(rounds), batches=len(rounds[0]),
                batch=len(rounds[0][0].labels), sequences=sum(len(b.labels) for b in rounds[0]),
                threads=torch.get_num_threads(), real_tokens=statistics.median(sum(ls) for ls in lengths),
                model_flops=statistics.median(train_flops(config, ls) for ls in lengths),
                precision=precision, matmul_tflops=matmul_tflops, median_s=med,
                speedup={v: med[v] / med["fastbert"] for v in med if v != "fastbert"} if "fastbert" in med else {},
                round_s=times, round_flops=[train_flops(config, ls) for ls in lengths])
