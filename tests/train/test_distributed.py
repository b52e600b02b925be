"""Two ranks (gloo, CPU, one thread each) follow the one-process run: the collectives the losses use, the
gradient averaging, the data shares, and whole training stages under torchrun against one process."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastbert import collectives
from fastbert.data.batching import Encoded, Loader
from fastbert.tasks import losses
from fastbert.train import distributed

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
    mp.spawn(_entry, args=(free_port(), str(out_dir), jobs), nprocs=WORLD)
    return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    jobs = {"simcse": (_loss_and_grad, ("simcse", N)), "mnr": (_loss_and_grad, ("mnr", N)),
            "averaged": (_averaged, ()), "sums": (_sums, ())}
    return on_ranks(jobs, tmp_path_factory.mktemp("ranks"))


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
    loss = np.mean([r[name][0] for r in ranks])
    grad = torch.stack([r[name][1] for r in ranks]).mean(0)  # what the loop's gradient averaging computes
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    if name == "simcse":  # negatives from the rank's own share alone: a different, smaller problem
        _, a, p, neg = _embeddings(n)
        idx = torch.as_tensor(_share(n, 0))
        assert losses.simcse(a[idx], p[idx], neg[idx]).item() != pytest.approx(ranks[0][name][0], rel=1e-3)


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
    for a, b, c, d, scalars, anyone, obj in (r["averaged"] for r in ranks):
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
    assert np.mean([r["sums"][2] for r in ranks]) == pytest.approx(9 / 7)
    for total, objs, _ in (r["sums"] for r in ranks):
        assert total == [3.0] and objs == [0, 1]


def _encoded(n):
    return Encoded([(([101, 5 + i] + [7] * (i % 5) + [102], [0] * (3 + i % 5)),) for i in range(n)], list(range(n)),
                   [str(i) for i in range(n)])


def test_loader_shares_make_the_global_batch():
    tok = None  # order() and share() need no tokenizer
    data = _encoded(21)
    one = Loader(data, tok, 6, seed=3)
    shards = [Loader(data, tok, 6, seed=3, shard=(r, WORLD)) for r in range(WORLD)]
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
