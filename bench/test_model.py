"""Whole-model speed and memory: fastbert against Hugging Face's BertModel, same process, same batches.

Training step = forward + backward + optimizer step on real SST / Quora / STS batches (their true length
distribution), with the CS224N task heads on the pooled output. Every round runs new batches, as training
does, and every variant gets the same rounds; throughput counts real (non-padding) tokens.
  fastbert          fastbert.BertModel(backend="auto") with bf16 weights, packed batches, fastbert's
                    FusedAdamW holding fp32 master weights and states (the driver's precision bf16)
  fastbert-bf16-autocast  the same with fp32 weights under bf16 autocast
  fastbert-fp32     the same in fp32
  hf-fp32           transformers.BertModel, SDPA attention, padded batches, torch.optim.AdamW(fused=True)
  hf-bf16           the same under bf16 autocast
  hf-bf16-pad8      the same with every batch padded to a multiple of 8 tokens per sequence (fewer distinct
                    shapes: on CPU oneDNN builds a bf16 matmul kernel for each new one, as fastbert's buckets avoid)
  hf-bf16-compile   the same under torch.compile(dynamic=True)
On a CPU without bf16 matmuls (AVX2 only), fastbert trains in fp32 (as the driver does there) and a timed run
leaves out the bf16 variants (workload.timed_skip), whose matmuls run a slow reference loop on such a CPU.
The speed-up targets are judged by test_train_speedup, which interleaves SPEEDUP_VARIANTS round by round
(test_train_step times one variant's rounds after another's, which puts the machine's drift into ratios).
Memory: peak bytes of tensors allocated during one steady-state training step (after a warm-up step),
on batches of exactly 64 / 128 / 512 tokens per sequence. CUDA: torch.cuda.max_memory_allocated.
CPU: the PyTorch profiler's allocator events (profile_memory=True), summed in time order; this counts
every tensor the CPU allocator hands out, not oneDNN scratch space or Python objects.
Matmul rates (fp32, bf16) at the models' FFN shapes give the MFU denominator of the report.
"""
import functools
import json
import os
import tempfile

import pytest
import torch

from bench import gpu_targets
from bench.machine import device_name, matmul_tflops, median_s, op_backends, optimizer_name, sync
from bench.rounds import batch_rounds, interleaved_train_rounds, speedup_record, speedup_variants
from bench.targets import missed
from bench.workload import (MODEL_SHAPES, NO_BF16, QUICK, VARIANTS, Runner, forward_flops, long_batch,
                            model_weights, quick_skip, skips_bf16, timed_skip, train_flops)


# torch.compile baselines: on CUDA by default, on CPU when asked (compiling takes minutes there)
COMPILE = not QUICK and os.environ.get("FASTBERT_BENCH_COMPILE", str(int(device_name() == "cuda"))) not in ("", "0")


def sizes(device: torch.device, shape: str = "minilm") -> dict:
    """Batch sizes, timed rounds and warm-up rounds (0: one untimed step): tiny in quick mode; on a CPU
    sized so that the whole suite takes minutes on 2 cores (bert-base: half-size batches, fewer rounds). The
    interleaved comparison (speedup_*) runs batches of 32, the size the targets are set for."""
    if QUICK:
        return dict(batch=4, batches=3, rounds=1, warmup=0, infer_batch=8, mem_batch=1, matmul_m=128,
                    speedup_batch=4, speedup_rounds=1)
    if device.type == "cuda":
        return dict(batch=32, batches=6, rounds=10, warmup=2, infer_batch=128, mem_batch=32, matmul_m=16384,
                    speedup_batch=32, speedup_rounds=10)
    if shape == "bert-base":
        return dict(batch=16, batches=3, rounds=3, warmup=0, infer_batch=16, mem_batch=4, matmul_m=2048,
                    speedup_batch=32, speedup_rounds=5)
    return dict(batch=32, batches=3, rounds=5, warmup=0, infer_batch=32, mem_batch=4, matmul_m=2048,
                speedup_batch=32, speedup_rounds=7)


@functools.cache
def _weights(shape):
    return model_weights(shape)


def _runner(variant, shape, device):
    quick_skip(shape)
    why = timed_skip(variant, device)
    if why:
        pytest.skip(why)
    if variant.endswith("-compile") and not COMPILE:
        pytest.skip("torch.compile of a training step takes 5-10 minutes to compile on a small CPU: "
                    "set FASTBERT_BENCH_COMPILE=1 to include it" if not QUICK else "not in quick mode")
    return Runner(variant, shape, device, weights=_weights(shape))


def _warm_up(round_fn, step_fn, rounds, variant):
    """Untimed work first: whole rounds where asked (CUDA) or compiling (every batch shape), else one step
    (optimizer state, allocator, oneDNN primitives). A torch.compile failure skips that variant."""
    compiled = variant.endswith("-compile")
    try:
        if rounds or compiled:
            for _ in range(max(rounds, 1)):
                round_fn()
        elif not QUICK:
            step_fn()
    except Exception as e:  # noqa: BLE001 - torch.compile "where it works": say why it did not
        if compiled:
            pytest.skip(f"torch.compile failed here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        raise


def _record(benchmark, kind, shape, variant, runner, rounds, flops, **extra):
    """Per-round means over the timed rounds; flops: a function of the sequence lengths of one round."""
    mean = lambda f: sum(f(r) for r in rounds) / len(rounds)  # noqa: E731
    flops = mean(lambda r: flops([n for b in r for n in b.packed.lengths.tolist()]))
    benchmark.extra_info.update(
        kind=kind, shape=shape, variant=variant, real_tokens=mean(lambda r: sum(b.tokens for b in r)),
        processed_tokens=mean(lambda r: sum(b.processed_tokens(runner.layout) for b in r)),
        sequences=mean(lambda r: sum(len(b.labels) for b in r)), batches=len(rounds[0]), model_flops=flops,
        precision=runner.precision, autocast=str(runner.amp).removeprefix("torch.") if runner.amp else "off",
        optimizer=optimizer_name() if runner.optimizer_kind == "fastbert" else "torch.optim.AdamW(fused=True)",
        **extra)
    t = median_s(benchmark)
    if t:
        benchmark.extra_info["tokens_per_s"] = benchmark.extra_info["real_tokens"] / t
        benchmark.extra_info["tflops"] = flops / t / 1e12


CASES = [(s, v) for s in MODEL_SHAPES for v in VARIANTS if not v.startswith("reference")]  # speed: vs Hugging Face


@pytest.mark.parametrize("shape,variant", CASES, ids=[f"{s}-{v}" for s, v in CASES])
def test_train_step(benchmark, shape, variant, device, tasks, tokenizer):
    sz = sizes(device, shape)
    rounds = batch_rounds(tasks, tokenizer, sz["rounds"], sz["batches"], sz["batch"], seed=1, device=device)
    runner = _runner(variant, shape, device)

    def train_round(batches):
        for b in batches:
            loss = runner.train_step(b)
        sync(device)
        return loss

    _warm_up(lambda: train_round(rounds[0]), lambda: runner.train_step(rounds[0][0]), sz["warmup"], variant)
    benchmark.group = f"train step: {shape}"
    timed = iter(rounds[1:])
    loss = benchmark.pedantic(train_round, setup=lambda: ((next(timed),), {}), rounds=sz["rounds"])
    assert torch.isfinite(loss), f"{variant}: training loss is {loss}"
    _record(benchmark, "train", shape, variant, runner, rounds[1:], lambda ls: train_flops(runner.config, ls),
            op_backends=op_backends(device))


@pytest.mark.parametrize("shape", MODEL_SHAPES)
def test_train_speedup(benchmark, shape, device, tasks, tokenizer):
    """fastbert's training-step speed-up over Hugging Face with the variants interleaved round by round
    (bench.rounds.interleaved_train_rounds), new batches every round: the measurement the CPU targets
    (bench/targets.py) are judged by; a timed CPU run fails on a target missed by more than the spread of its
    per-round values (quick mode does not judge). The benchmark's own time is the whole interleaved run."""
    quick_skip(shape)
    sz = sizes(device, shape)
    rounds = batch_rounds(tasks, tokenizer, sz["speedup_rounds"], sz["batches"], sz["speedup_batch"], seed=7,
                          device=device)
    runners = {v: Runner(v, shape, device, weights=_weights(shape)) for v in speedup_variants(device)}
    times = {}

    def run():
        times.update(interleaved_train_rounds(runners, rounds, device))

    benchmark.group = f"train speed-up (interleaved): {shape}"
    benchmark.pedantic(run, rounds=1)
    assert all(t > 0 for ts in times.values() for t in ts)
    ours = runners["fastbert"]
    dtype = {"fp32": torch.float32}.get(ours.precision, torch.bfloat16)
    record = speedup_record(shape, ours.config, rounds[1:], times, matmul_tflops(device, dtype, QUICK),
                            "fp32" if dtype == torch.float32 else "bf16")
    benchmark.extra_info.update(record)
    if device.type == "cpu" and not QUICK:
        failed = missed(record)
        assert not failed, "CPU targets missed by more than the measured spread:\n" + "\n".join(failed)
    if shape == "bert-base" and device.type == "cuda" and not QUICK:
        gpu_targets.check(benchmark, "train_bert_base", record["speedup"]["hf-bf16"])


@pytest.mark.parametrize("shape,variant", CASES, ids=[f"{s}-{v}" for s, v in CASES])
def test_inference(benchmark, shape, variant, device, tasks, tokenizer):
    sz = sizes(device, shape)
    rounds = batch_rounds(tasks, tokenizer, sz["rounds"], sz["batches"], sz["infer_batch"], seed=2, device=device)
    runner = _runner(variant, shape, device)

    def infer_round(batches):
        out = [runner.infer(b) for b in batches]
        sync(device)
        return out

    _warm_up(lambda: infer_round(rounds[0]), lambda: runner.infer(rounds[0][0]), sz["warmup"], variant)
    benchmark.group = f"inference: {shape}"
    timed = iter(rounds[1:])
    out = benchmark.pedantic(infer_round, setup=lambda: ((next(timed),), {}), rounds=sz["rounds"])
    assert all(torch.isfinite(o).all() for o in out)
    _record(benchmark, "inference", shape, variant, runner, rounds[1:], lambda ls: forward_flops(runner.config, ls))


def step_peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes of tensor memory allocated while fn runs, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    # allocations (+bytes) and frees (-bytes) in time order; frees of tensors older than fn have no event
    mem = sorted((e["ts"], e["args"]["Bytes"]) for e in events
                 if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0)
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return peak


MEMORY = [(s, n, v) for s in MODEL_SHAPES for n in (64, 128, 512) for v in ("fastbert", "hf-fp32", "hf-bf16")]


@pytest.mark.parametrize("shape,seqlen,variant", MEMORY, ids=[f"{s}-{n}-{v}" for s, n, v in MEMORY])
def test_train_memory(benchmark, shape, seqlen, variant, device, data_dir, tokenizer):
    sz = sizes(device, shape)
    batch = long_batch(data_dir, tokenizer, sz["mem_batch"], seqlen).to(device)
    assert batch.padded.input_ids.shape == (sz["mem_batch"], seqlen)
    runner = _runner(variant, shape, device)
    runner.train_step(long_batch(data_dir, tokenizer, 1, 16).to(device))  # optimizer state: steady state next
    peak = {}

    def measured_step():
        peak["bytes"] = step_peak_bytes(lambda: runner.train_step(batch), device)

    benchmark.group = f"train memory: {shape}"
    benchmark.pedantic(measured_step, rounds=1)
    assert peak["bytes"] > 0
    benchmark.extra_info.update(
        kind="memory", shape=shape, variant=variant, seqlen=seqlen, sequences=sz["mem_batch"],
        step_peak_bytes=peak["bytes"], state_bytes=runner.state_bytes(),
        peak_bytes=peak["bytes"] + runner.state_bytes(),
        method="torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events")


MATMUL = [(dt, s) for dt in ("fp32", "bf16") for s in MODEL_SHAPES]
_FFN = {"minilm": (384, 1536), "bert-base": (768, 3072)}


@pytest.mark.parametrize("dtype,shape", MATMUL, ids=[f"{d}-{s}" for d, s in MATMUL])
def test_matmul_rate(benchmark, dtype, shape, device):
    """[tokens, hidden] @ [hidden, 4 * hidden]: the FFN matmul, the machine's attainable rate for MFU."""
    if dtype == "bf16" and skips_bf16(device):
        pytest.skip(NO_BF16)  # a reference loop: minutes per matmul
    m = sizes(device)["matmul_m"]
    k, n = _FFN[shape]
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(m, k, device=device, dtype=dt), torch.randn(k, n, device=device, dtype=dt)
    iters = 1 if QUICK else 10

    def matmuls():
        for _ in range(iters):
            out = a @ b
        sync(device)
        return out

    matmuls()
    benchmark.group = "matmul rate"
    benchmark.pedantic(matmuls, rounds=1 if QUICK else 5)
    benchmark.extra_info.update(kind="matmul", dtype=dtype, shape=shape, m=m, k=k, n=n)
    t = median_s(benchmark)
    if t:
        benchmark.extra_info["tflops"] = 2 * m * k * n * iters / t / 1e12
