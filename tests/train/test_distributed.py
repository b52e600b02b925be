"""Two ranks (gloo, CPU, one thread each) follow the one-process run: the collectives the losses use, the
gradient averaging, the data shares, and whole training stages under torchrun against one process."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
import torch.distributed as dist
import torch.multiprocessing as mp

from fastbert import collectives
from fastbert.data.batching import BATCHING, Encoded, Loader
from fastbert.tasks import losses
from fastbert.train import config, distributed, run_stage
from tests.train.conftest import TINY_MODEL

WORLD = 2
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
HEADS = {t: {"dropout": 0.0} for t in ("sst", "quora")}  # the runs without dropout
DROPOUT = {"model": {**TINY_MODEL, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}}
RUNS = {  # name: (stage, settings): every routine, the in-batch losses (SimCSE, MNR), MLM, bf16 weights; dropout
    # (encoder and heads: masks keyed by example, fastbert.ops.philox) in every stage but multitask's routines
    "additive": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "additive"}),
    "pcgrad": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "pcgrad"}),
    "stochastic": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "stochastic"}),
    "weighted": ("multitask", {"tasks": ["sst", "sts"], "routine": "weighted", "standardize": True}),
    # one head unused in each step; quora with MNR (no head, in-batch negatives over both ranks)
    "sequential": ("multitask", {"tasks": ["sst", "quora"], "routine": "sequential",
                                 "quora": {"loss": "mnr", "dropout": 0.0}}),
    "parallel": ("multitask", {"tasks": ["sst", "sts"], "routine": "parallel"}),
    "simcse": ("contrastive", {"tasks": ["simcse"], "eval_tasks": ["sts"], **DROPOUT}),
    "mlm": ("pretrain", {"tasks": ["mlm"], "mlm": {"sources": ["sst", "sts"], "block_size": 16, "holdout": 0.2},
                         **DROPOUT}),
    "dropout": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "additive", "sst": {"dropout": 0.1},
                              "quora": {"dropout": 0.1}, **DROPOUT}),
    "nli": ("nli", {"tasks": ["snli"], "snli": {"dropout": 0.1}, **DROPOUT}),  # pair head on [u, v, |u - v|]
    "single": ("single", {"task": "quora", "quora": {"encoder": "cross", "dropout": 0.1}, **DROPOUT}),
    "bf16": ("multitask", {"tasks": ["sst", "quora", "sts"], "routine": "additive", "precision": "bf16"}),
}


def settings(data_dir, run_dir, **extra):
    """A seconds-long fp32 run on the tiny data: no dropout unless `extra` says, a constant learning rate (so a
    run stopped at step 10 and resumed to 20 follows a 20-step run), every step logged, dev evaluated at 10
    and 20."""
    return {"model": TINY_MODEL, "data_dir": data_dir, "threads": 1, "progress": False, "batch_size": 8,
            "eval_batch_size": 12, "max_length": 32, "lr": 2e-3, "warmup": 0, "schedule": "constant",
            "log_every": 1, "eval_every": 10, "max_steps": STEPS, "precision": "fp32", "skip_bad_rows": True,
            "run_dir": run_dir, **HEADS, **extra}


def _train(rank, stage, cfg):
    return run_stage(stage, cfg)["step"]


def _chain(rank, overrides):
    return run_stage("chain", CHAIN, **overrides)["run_dir"]


# two short links, each from the one before (dropout on); the command line's settings apply to both
CHAIN = {"chain": [{"stage": "single", "task": "sst", "sst": {"dropout": 0.1}},
                   {"stage": "single", "task": "sts", "sts": {"encoder": "cross", "dropout": 0.1}}]}
LINKS = ["0-single", "1-single"]


def chain_settings(data_dir, run_dir):
    return settings(data_dir, run_dir, max_steps=6, eval_every=3, **DROPOUT)


def _resume(rank, run_dir):
    return run_stage("multitask", {**yaml_settings(run_dir), "resume": True, "max_steps": STEPS})["step"]


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
    one_half = str(root / "one-half")  # stopped at step 10 by one process, continued by the ranks
    run_stage("multitask", settings(tiny_data, one_half, max_steps=STEPS // 2, **RUNS["additive"][1]))
    jobs = {"simcse_loss": (_loss_and_grad, ("simcse", N)), "mnr_loss": (_loss_and_grad, ("mnr", N)),
            "averaged": (_averaged, ()), "sums": (_sums, ()),
            "refused": (_refused, (settings(tiny_data, str(root / "refused"), batch_size=7, tasks=["sst"]),)),
            "half": (_train, ("multitask", settings(tiny_data, str(root / "half"), max_steps=STEPS // 2,
                                                    **RUNS["additive"][1]))),
            "chain": (_chain, (chain_settings(tiny_data, str(root / "chain")),)),
            "resumed": (_resume, (one_half,))}
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
    run_stage("chain", CHAIN, **chain_settings(tiny_data, str(root / "chain")))
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
    extra = RUNS[name][1]
    assert open(os.path.join(ranks["root"] / name, "run.log")).read().count("training examples") == \
        len(extra.get("tasks") or [extra["task"]])  # rank 0 alone logs
    if name == "bf16":
        _same_trajectory(loss2, dev2, loss1, dev1, rel=1e-2, steps=range(1, 11), dev=False)
    else:
        _same_trajectory(loss2, dev2, loss1, dev1)
    assert sorted(dev2) == sorted(dev1) == [10, 20]


def _same_trajectory(loss2, dev2, loss1, dev1, rel=1e-4, steps=None, dev=True):
    """Per-task losses of `steps` (default: every step) and the dev metrics of every evaluation within `rel`."""
    for step in steps or loss1:
        assert loss2[step] == pytest.approx(loss1[step], rel=rel, abs=1e-6), f"step {step}"
    for step in dev1 if dev else ():
        for task, metrics in dev1[step].items():
            assert dev2[step][task] == pytest.approx(metrics, rel=rel, abs=1e-4), f"step {step} {task}"


def test_chain_follows_one_process(ranks, one):
    """A chain of two links (the second starts from the first's best checkpoint) under 2 ranks: each link's
    losses and dev metrics as in one process."""
    assert all(os.path.basename(r["chain"]) == "chain" for r in ranks["results"])
    for link in LINKS:
        (loss2, dev2), (loss1, dev1) = (records(str(root / "chain" / link)) for root in (ranks["root"], one))
        assert sorted(loss2) == sorted(loss1) == list(range(1, 7)) and sorted(dev2) == sorted(dev1) == [3, 6]
        _same_trajectory(loss2, dev2, loss1, dev1)


@pytest.mark.parametrize("continued_by", ["one process", "two ranks"])
def test_resume_with_another_number_of_ranks(continued_by, ranks, one):
    """A run stopped at step 10 by 2 ranks and continued to 20 by one process, or the other way round: the
    one-process run's losses (the data position counts global batches)."""
    half = str(ranks["root"] / ("half" if continued_by == "one process" else "one-half"))
    if continued_by == "one process":
        assert os.path.realpath(os.path.join(half, "last")).endswith("step-00000010")
        run_stage("multitask", {**yaml_settings(half), "resume": True, "max_steps": STEPS})
    else:
        assert all(r["resumed"] == STEPS for r in ranks["results"])
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


def test_dropout_is_on_where_the_runs_say(one):
    """The dropout runs draw masks: their first losses differ from the same run without dropout."""
    with_dropout, without = records(str(one / "dropout"))[0][1], records(str(one / "additive"))[0][1]
    for task in ("sst", "quora", "sts"):
        assert with_dropout[task] != pytest.approx(without[task], rel=1e-3), task


def _launch(recipe: dict, run_dir) -> list[subprocess.Popen]:
    """`python -m fastbert.train multitask --config <recipe>` on WORLD ranks, with the variables torchrun sets."""
    path = str(run_dir) + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump({**recipe, "run_dir": str(run_dir)}, f)
    port = free_port()
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(WORLD)}
        procs.append(subprocess.Popen([sys.executable, "-m", "fastbert.train", "multitask", "--config", path],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _logged_step(run_dir) -> int:
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        return 0
    return max([json.loads(line).get("step", 0) for line in open(metrics) if line.endswith("\n")] or [0])


def test_a_signal_or_a_dead_rank_stops_every_rank(tiny_data, tmp_path):
    """Two 2-rank runs as torchrun starts them, in steps until signalled: SIGTERM to rank 1 alone makes both
    ranks save the step once (rank 0 writes) and stop; SIGKILL of rank 1 makes rank 0 stop within a minute with
    one line naming the failed collective (exit status 3), not hang."""
    recipe = settings(tiny_data, None, tasks=["sst"], max_steps=100000, eval_every=100000, log_every=1)
    runs = {"term": tmp_path / "term", "kill": tmp_path / "kill"}
    procs = {name: _launch(recipe, run_dir) for name, run_dir in runs.items()}
    signals = {"term": signal.SIGTERM, "kill": signal.SIGKILL}
    deadline = time.time() + 240
    while signals and time.time() < deadline:
        for name in [n for n in signals if _logged_step(runs[n]) >= 3]:
            procs[name][1].send_signal(signals.pop(name))
        assert all(p.poll() is None for name in signals for p in procs[name]), "a run stopped unsignalled"
        time.sleep(0.05)
    assert not signals, "the runs did not reach step 3"
    out = {name: [p.communicate(timeout=90) for p in ps] for name, ps in procs.items()}

    assert [p.returncode for p in procs["term"]] == [130, 130], out["term"]
    checkpoints = os.listdir(runs["term"] / "checkpoints")
    log = open(runs["term"] / "run.log").read()
    assert len(checkpoints) == 1 and log.count("interrupted at step") == 1, (checkpoints, log)
    stopped = int(log.split("interrupted at step ")[1].split(":")[0])
    assert checkpoints == [f"step-{stopped:08d}"] and _logged_step(runs["term"]) == stopped

    assert procs["kill"][1].returncode == -signal.SIGKILL
    rc, err = procs["kill"][0].returncode, out["kill"][0][1]
    assert rc == 3 and err.strip().splitlines()[-1].startswith(
        "error: rank 0: a collective with the other ranks failed ("), err
