"""What a loss or a metric needs to see the global batch when several ranks share it (torch.distributed).

Every function is the identity (or the plain local computation) when no process group of more than one
rank is initialised, so tasks call them unconditionally. Process setup and gradient averaging are in
fastbert.train.distributed; these are the pieces the tasks (a layer below train) use. Every rank must
call the same functions in the same order: they are collectives.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

# torch 2.13 marks the public differentiable all_gather deprecated in favour of a private module's; the
# public one is what this uses (its backward sends each rank the summed gradient of its rows)
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def comm_device() -> torch.device:
    """Where collectives' buffers live: the current CUDA device under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_(values: list[float]) -> list[float]:
    """The sum over ranks of each value (one all_reduce in fp64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return t.tolist()


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """This rank's share of the mean of `values` [n] over the global batch: sum(values) * world / N, with N
    the number of values on all ranks. The ranks' mean of it (what averaging gradients computes) is the
    mean over the global batch, whatever the shares' sizes; one process: values.mean(). No values on any
    rank: zero (with a graph)."""
    if not active():
        return values.mean() if values.numel() else values.sum() * 0.0
    total = sum_([float(values.numel())])[0]
    if total == 0:
        return values.sum() * 0.0
    return values.sum() * (world() / total)


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's `x` [n_r, ...] concatenated in rank order [sum n_r, ...], this rank's offset in it),
    differentiable: the backward pass sends each rank the summed gradient of its own rows. Shares may
    differ in size (padded to the largest for the all_gather, then cut). One process: (x, 0)."""
    if not active():
        return x, 0
    sizes = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world())]
    dist.all_gather(all_sizes, sizes)
    sizes_ = [int(s.item()) for s in all_sizes]
    most = max(sizes_)
    padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])]) if x.shape[0] < most else x
    parts = dist_fn.all_gather(padded.contiguous())
    out = torch.cat([p[:n] for p, n in zip(parts, sizes_)])
    return out, sum(sizes_[:rank()])


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order (evaluation predictions)."""
    if not active():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out
