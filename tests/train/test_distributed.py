"""Two ranks (gloo, CPU, one thread each) follow the one-process run: the collectives the losses use, the
gradient averaging, the data shares, and whole training stages under torchrun against one process."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastbert import collectives
from fastbert.data.batching import BATCHING, Encoded, Loader
from fastbert.tasks import losses
from fastbert.train import config, distributed, run_stage
from tests.train.conftest import TINY_MODEL

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, port, out_dir, jobs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"), timeout_s=120)
    try:
        results = {name: fn(rank, *args) for name, (fn, args) in jobs.items()}
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        distributed.destroy()


def on_ranks(jobs: dict, out_dir) -> list[dict]:
    """{name: fn(rank, *args)} of every job, on WORLD spawned ranks of one gloo group (one start-up for
    all jobs: starting processes is most of the time here); the results in rank order."""
    os.makedirs(out_dir, exist_ok=True)
    mp.spawn(_entry, args=(free_port(), str(out_dir), jobs), nprocs=WORLD)
    return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False) for r in range(WORLD)]


STEPS = 20
HEADS = {t: {"dropout": 0.0} for t in ("sst", "quora")}  # head dropout draws per rank's share: off here
RUNS = {  # name: (stage, settings): every routine, the in-batch losses (SimCSE, MNR), MLM, bf16 weights
    "additive": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "additive"}),
    "pcgrad": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "pcgrad"}),
    "stochastic": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "stochastic"}),
    "weighted": ("multitask", {"tasks": ["sst", "sts"], "routine": "weighted", "standardize": True}),
    # one head unused in each step; quora with MNR (no head, in-batch negatives over both ranks)
    "sequential": ("multitask", {"tasks": ["sst", "quora"], "routine": "sequential",
                                 "quora": {"loss": "mnr", "dropout": 0.0}}),
    "parallel": ("multitask", {"tasks": ["sst", "sts"], "routine": "parallel"}),
    "simcse": ("contrastive", {"tasks": ["simcse"], "eval_tasks": ["sts"]}),
    "mlm": ("pretrain", {"tasks": ["mlm"], "mlm": {"sources": ["sst", "sts"], "block_size": 16, "holdout": 0.2}}),
    "bf16": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "additive", "precision": "bf16"}),
}


def settings(data_dir, run_dir, **extra):
    """A seconds-long fp32 run on the tiny data: no dropout, a constant learning rate (so a run stopped at
    step 10 and resumed to 20 follows a 20-step run), every step logged, dev evaluated at 10 and 20."""
    return {"model": TINY_MODEL, "data_dir": data_dir, "threads": 1, "progress": False, "batch_size": 8,
            "eval_batch_size": 12, "max_length": 32, "lr": 2e-3, "warmup": 0, "schedule": "constant",
            "log_every": 1, "eval_every": 10, "max_steps": STEPS, "precision": "fp32", "skip_bad_rows": True,
            "run_dir": run_dir, **HEADS, **extra}


def _train(rank, stage, cfg):
    return run_stage(stage, cfg)["step"]


def _refused(rank, cfg):
    """The one-line error of a batch size that does not divide by the ranks."""
    try:
        run_stage("multitask", cfg)
    except config.ConfigError as e:
        return str(e)
    return None


def records(run_dir) -> tuple[dict, dict]:
    """({step: {task: loss}}, {step: dev}) of a run's metrics.jsonl, where each is recorded once (rank 0 alone
    writes)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    for key in ("loss", "dev"):
        steps = [r["step"] for r in recs if key in r]
        assert len(steps) == len(set(steps)), f"{run_dir}: {key} records repeated"
    return ({r["step"]: r["loss"] for r in recs if "loss" in r}, {r["step"]: r["dev"] for r in recs if "dev" in r})


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("ranks")
    jobs = {"simcse_loss": (_loss_and_grad, ("simcse", N)), "mnr_loss": (_loss_and_grad, ("mnr", N)),
            "averaged": (_averaged, ()), "sums": (_sums, ()),
            "refused": (_refused, (settings(tiny_data, str(root / "refused"), batch_size=7, tasks=["sst"]),)),
            "half": (_train, ("multitask", settings(tiny_data, str(root / "half"), max_steps=STEPS // 2,
                                                    **RUNS["additive"][1])))}
    for name, (stage, extra) in RUNS.items():
        jobs[name] = (_train, (stage, settings(tiny_data, str(root / name), **extra)))
    results = on_ranks(jobs, root / "out")
    return {"root": root, "results": results}


@pytest.fixture(scope="module")
def one(tmp_path_factory, tiny_data):
    """The one-process runs, with the same settings."""
    root = tmp_path_factory.mktemp("one")
    for name, (stage, extra) in RUNS.items():
        run_stage(stage, settings(tiny_data, str(root / name), **extra))
    return root


def _embeddings(n, seed=0):
    """A tiny 'encoder' (one Linear) and three views of n examples: (weight, anchors, positives, negatives)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, 8, generator=g)
    w = torch.randn(8, 6, generator=g).requires_grad_()
    return w, *(x @ w).unbind(0)


def _share(n, rank):
    return np.array_split(np.arange(n), WORLD)[rank]


def _loss_and_grad(rank, name, n):
    """(this rank's loss, its gradient) on its contiguous share of a batch of n examples."""
    w, a, p, neg = _embeddings(n)
    idx = torch.as_tensor(_share(n, rank)) if rank is not None else torch.arange(n)
    a, p, neg = a[idx], p[idx], neg[idx]
    if name == "simcse":
        loss = losses.simcse(a, p, neg, 0.05)
    else:  # MNR over the positive pairs only: the ranks' shares of candidates differ in size
        positive = torch.as_tensor([i % 3 != 1 for i in range(n)])[idx]
        loss = losses.multiple_negatives_ranking(a, p, positive, 20.0)
    loss.backward()
    return loss.item(), w.grad


N = 7  # shares of 4 and 3 examples


@pytest.mark.parametrize("name", ["simcse", "mnr"])
def test_in_batch_negatives_over_the_global_batch(name, ranks):
    n = N
    ref_loss, ref_grad = _loss_and_grad(None, name, n)
    results = [r[name + "_loss"] for r in ranks["results"]]
    loss = np.mean([r[0] for r in results])
    grad = torch.stack([r[1] for r in results]).mean(0)  # what the loop's gradient averaging computes
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    if name == "simcse":  # negatives from the rank's own share alone: a different, smaller problem
        _, a, p, neg = _embeddings(n)
        idx = torch.as_tensor(_share(n, 0))
        assert losses.simcse(a[idx], p[idx], neg[idx]).item() != pytest.approx(results[0][0], rel=1e-3)


def _averaged(rank):
    a = torch.nn.Parameter(torch.full((3,), float(rank + 1)))
    b = torch.nn.Parameter(torch.zeros(2))  # a gradient on rank 1 only
    c = torch.nn.Parameter(torch.zeros(2))  # no gradient anywhere
    d = torch.nn.Parameter(torch.zeros(5, dtype=torch.bfloat16))
    a.grad = torch.full((3,), float(rank + 1))
    if rank == 1:
        b.grad = torch.ones(2)
    d.grad = torch.full((5,), 1.0 + 2 ** -8 * rank, dtype=torch.bfloat16)  # 1 and 1 + 1/256 (bf16's step)
    distributed.average_gradients([a, b, c, d], bucket_bytes=16)  # several buckets
    return a.grad, b.grad, c.grad, d.grad, distributed.average_scalars([float(rank), 2.0]), \
        distributed.any_rank(rank == 1), distributed.broadcast_object(f"from {rank}")


def test_gradient_average_scalars_and_flags(ranks):
    for a, b, c, d, scalars, anyone, obj in (r["averaged"] for r in ranks["results"]):
        assert torch.equal(a, torch.full((3,), 1.5))
        assert torch.equal(b, torch.full((2,), 0.5))  # zeros from the rank without a gradient
        assert c is None  # no rank had one: the optimizer skips it, as in one process
        assert d.dtype == torch.bfloat16 and torch.equal(d, torch.full((5,), 1.0, dtype=torch.bfloat16))
        assert scalars == [0.5, 2.0] and anyone and obj == "from 0"


def _sums(rank):
    return collectives.sum_([rank + 1.0]), collectives.gather_objects(rank), \
        float(collectives.global_mean(torch.arange(3.0 + rank)))


def test_sums_objects_and_global_mean(ranks):
    # global_mean: rank shares of the mean of [0 1 2] + [0 1 2 3] (7 values, sum 9)
    assert np.mean([r["sums"][2] for r in ranks["results"]]) == pytest.approx(9 / 7)
    for total, objs, _ in (r["sums"] for r in ranks["results"]):
        assert total == [3.0] and objs == [0, 1]


def _encoded(n):
    return Encoded([(([101, 5 + i] + [7] * (i % 5) + [102], [0] * (3 + i % 5)),) for i in range(n)], list(range(n)),
                   [str(i) for i in range(n)])


@pytest.mark.parametrize("batching", list(BATCHING))
def test_loader_shares_make_the_global_batch(batching):
    tok = None  # order() and share() need no tokenizer
    data = _encoded(21)
    one = Loader(data, tok, 6, seed=3, bucket=BATCHING[batching])
    shards = [Loader(data, tok, 6, seed=3, bucket=BATCHING[batching], shard=(r, WORLD)) for r in range(WORLD)]
    assert len(shards[0]) == len(one)
    for epoch in (0, 1):
        for k, idx in enumerate(one.order(epoch)):
            parts = [s.share(s.order(epoch)[k]) for s in shards]
            assert [len(p) for p in parts] == [3, 3] or len(idx) < 6
            assert np.array_equal(np.concatenate(parts), idx)
    with pytest.raises(ValueError, match="batch_size 7 does not divide by the 2 ranks"):
        Loader(data, tok, 7, shard=(0, WORLD))
    # a last batch with fewer examples than ranks is left out (no rank may have nothing to train on)
    short = [Loader(_encoded(13), tok, 6, shard=(r, WORLD)) for r in range(WORLD)]
    assert len(short[0]) == 2 and all(len(b) >= WORLD for b in short[0].order(0))


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_follow_one_process(name, ranks, one):
    """fp32: per-task losses of every step within 1e-4 relative and the dev metrics of the sharded evaluation
    as in one process. bf16 weights (fp32 masters, gradients averaged in fp32): each rank rounds the gradient
    of its half batch to bf16, one process that of the whole batch, so the runs drift apart by bf16 roundings
    that the steps amplify: checked over the first 10 steps, at 1e-2 (2.5 bf16 ulps)."""
    assert all(r[name] == STEPS for r in ranks["results"])
    (loss2, dev2), (loss1, dev1) = records(str(ranks["root"] / name)), records(str(one / name))
    assert sorted(loss2) == sorted(loss1) == list(range(1, STEPS + 1))
    assert open(os.path.join(ranks["root"] / name, "run.log")).read().count("training examples") == \
        len(RUNS[name][1].get("tasks", ["mlm"]))  # rank 0 alone logs
    rel, steps = (1e-2, range(1, 11)) if name == "bf16" else (1e-4, loss1)
    for step in steps:
        assert loss2[step] == pytest.approx(loss1[step], rel=rel, abs=1e-6), f"step {step}"
    assert sorted(dev2) == sorted(dev1) == [10, 20]
    for step in dev1 if name != "bf16" else ():
        for task, metrics in dev1[step].items():
            assert dev2[step][task] == pytest.approx(metrics, rel=rel, abs=1e-4), f"step {step} {task}"


def test_resume_two_rank_checkpoint_in_one_process(ranks, one):
    """A 2-rank run stopped at step 10, continued to 20 in one process: the one-process run's losses."""
    half = str(ranks["root"] / "half")
    assert os.path.realpath(os.path.join(half, "last")).endswith("step-00000010")
    run_stage("multitask", {**yaml_settings(half), "resume": True, "max_steps": STEPS})
    loss, _ = records(half)
    reference, _ = records(str(one / "additive"))
    assert sorted(loss) == list(range(1, STEPS + 1))
    for step in reference:
        assert loss[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), f"step {step}"


def yaml_settings(run_dir):
    import yaml
    with open(os.path.join(run_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def test_batch_size_not_dividing_by_the_ranks(ranks):
    for message in (r["refused"] for r in ranks["results"]):
        assert message == ("batch_size 7 (task sst) does not divide by the 2 ranks: each rank takes an equal "
                           "share of the global batch (use a multiple of 2)")
