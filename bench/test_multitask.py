"""One multitask training step with every task's batch in one encoder pass (pack_tasks) against one pass per
task: the default recipe's step (fastbert/train/recipes/multitask.yaml: additive, SST + Quora + STS, 16
examples each, max_length 64, the packaged MiniLM; quick mode: the tiny model) through the training loop's
own Trainer.step (forward, backward, clipping, optimizer), in the precision the driver picks on the device.

Both Trainers start from the same weights and walk the same batches; rounds of `steps` steps alternate
between them, the order rotated every round (bench/rounds.py's interleaving), round 0 untimed.
  pytest bench/ --benchmark-only -k packed      the ratio (per task / packed, median seconds per step)
"""
import gc
import statistics
import time

import numpy as np
import pytest
import torch

from bench.machine import sync
from bench.workload import QUICK
from fastbert.data.batching import Loader
from fastbert.tasks import read_split
from fastbert.train import config, loop, stages
from fastbert.train.run import open_run

TASKS = ("sst", "quora", "sts")
TINY = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 256}


def sizes(device: torch.device) -> dict:
    """Steps per round and timed rounds (plus one untimed)."""
    if QUICK:
        return {"steps": 1, "rounds": 1}
    return {"steps": 10, "rounds": 10} if device.type == "cuda" else {"steps": 3, "rounds": 7}


def settings(device: torch.device, run_dir: str, data_dir: str, pack_tasks: bool) -> dict:
    overrides = {"data_dir": data_dir, "run_dir": run_dir, "device": str(device), "progress": False,
                 "max_steps": 10_000, "pack_tasks": pack_tasks, **({"model": TINY} if QUICK else {})}
    return config.resolve("multitask", None, overrides)


def examples(cfg: dict, data_dir: str, n: int) -> dict:
    """n training examples of each task, a seeded sample of its file (rows as the default run reads them)."""
    out = {}
    for t in TASKS:
        rows = read_split(t, config.task_settings(cfg, t), "train", data_dir, skipped=[])
        out[t] = [rows[i] for i in np.random.default_rng(0).choice(len(rows), n, replace=False)]
    return out


def trainer(cfg: dict, data: dict) -> loop.Trainer:
    """The driver's Trainer on `data` (the model seeded by cfg seed: the same weights for every call)."""
    model = stages.build(cfg, list(TASKS))
    cfg = {**cfg, **{t: dict(model.tasks[t].cfg) for t in TASKS}}
    loaders = {t: Loader(model.tasks[t].encode(data[t], model.tokenizer, cfg["max_length"]), model.tokenizer,
                         cfg["batch_size"], seed=0, packed=cfg["packed"]) for t in TASKS}
    return loop.Trainer(cfg, open_run(cfg["run_dir"], cfg, True), model, loaders, {})


class Passes:
    """How many times an encoder runs forward."""

    def __init__(self, encoder):
        self.count = 0
        encoder.register_forward_pre_hook(self.record)

    def record(self, module, args):
        self.count += 1


def test_packed_tasks_step(benchmark, device, data_dir, tmp_path):
    sz = sizes(device)
    steps = sz["steps"] * (sz["rounds"] + 1)
    names = {"packed": True, "per task": False}
    cfgs = {v: settings(device, str(tmp_path / v.replace(" ", "-")), data_dir, on) for v, on in names.items()}
    data = examples(cfgs["packed"], data_dir, cfgs["packed"]["batch_size"] * steps)
    trainers = {v: trainer(cfgs[v], data) for v in names}
    passes = {v: Passes(t.model.encoder) for v, t in trainers.items()}
    gc.freeze()  # as the driver's loop: what lives for the run, out of the collector's full passes
    times = {v: [] for v in names}
    losses = {v: [] for v in names}

    def run():
        order = list(names)
        for i in range(sz["rounds"] + 1):
            for v in order[i % 2:] + order[:i % 2]:
                sync(device)
                t = time.perf_counter()
                for _ in range(sz["steps"]):
                    losses[v].append(trainers[v].step()[0])
                sync(device)
                if i:
                    times[v].append((time.perf_counter() - t) / sz["steps"])

    benchmark.group = "multitask step: packed tasks"
    try:
        benchmark.pedantic(run, rounds=1)
    finally:
        gc.unfreeze()
    assert {v: passes[v].count for v in names} == {"packed": steps, "per task": len(TASKS) * steps}
    assert all(np.isfinite(list(x.values())).all() for v in names for x in losses[v])
    med = {v: statistics.median(ts) for v, ts in times.items()}
    tokens = trainers["packed"].state.tokens / steps
    benchmark.extra_info.update(
        kind="packing", variant="packed", routine=cfgs["packed"]["routine"], tasks=list(TASKS),
        batch=cfgs["packed"]["batch_size"], precision=trainers["packed"].mode, threads=torch.get_num_threads(),
        steps_per_round=sz["steps"], rounds=sz["rounds"], real_tokens_per_step=tokens, median_s=med,
        step_s=times, speedup=med["per task"] / med["packed"])

