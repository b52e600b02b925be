"""Several processes, one training run: torch.distributed set up from the environment torchrun gives.

`torchrun --nproc_per_node N -m fastbert.train <stage> ...` starts N copies of the one-process run;
each reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) and joins one process group: NCCL on
CUDA (rank on cuda:LOCAL_RANK), gloo on CPU. Without those variables nothing here does anything and
every helper is the identity, so the same code is the one-process run.

How the ranks stay one run (see fastbert.train.loop and the README, "More than one process or machine"):
  - every rank builds the same model (same seed; `broadcast_params` makes sure) and takes a contiguous
    share of every global batch (fastbert.data.batching);
  - a task's loss on a rank is its share of the global-batch loss (fastbert.collectives.global_mean),
    so the mean of the ranks' gradients is the one-process gradient;
  - gradients are averaged by `average_gradients` at one point of the step, after the routine's
    backward(s) and before clipping: one flattened, bucketed all_reduce in fp32 (bf16 gradients are
    widened to fp32 for the sum and rounded once back), and parameters no rank gave a gradient keep
    none. This is what DistributedDataParallel does, without its hooks (see `average_gradients`).
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from fastbert import collectives
from fastbert.collectives import active, comm_device, rank, world

BUCKET_BYTES = 25 << 20  # fp32 bytes per all_reduce (DistributedDataParallel's default bucket_cap_mb)
DEFAULT_TIMEOUT_S = 600  # a rank waiting longer than this in a collective stops with an error


@dataclasses.dataclass(frozen=True)
class Env:
    """What torchrun says about this process; the one-process run is rank 0 of 1."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1


def detect(environ=None) -> Env:
    """The torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); none set: one process."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return Env()
    try:
        world = int(environ["WORLD_SIZE"])
        rank = int(environ.get("RANK", 0))
        local_rank = int(environ.get("LOCAL_RANK", rank))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as e:
        raise ValueError(f"torchrun environment: {e} (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE must be "
                         "integers)") from None
    if not (0 <= rank < world and 0 <= local_rank < local_world):
        raise ValueError(f"torchrun environment: RANK {rank} of WORLD_SIZE {world}, LOCAL_RANK {local_rank} of "
                         f"LOCAL_WORLD_SIZE {local_world}: out of range")
    return Env(rank, world, local_rank, local_world)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Env, torch.device]:
    """Join the process group torchrun describes (once); returns (env, this rank's device).

    device: the run's device ("cuda" becomes cuda:LOCAL_RANK). A rank that waits more than `timeout_s`
    in a collective (a peer died or hangs) raises instead of waiting for ever; torchrun also stops the
    other ranks as soon as one exits with an error.
    """
    env = detect()
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if env.distributed and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ValueError("WORLD_SIZE is set but MASTER_ADDR is not: start the run with torchrun")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # NCCL honours the timeout
        dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
        atexit.register(destroy)
    return env, device


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Rank 0: the one that writes logs, metrics, checkpoints and shows progress."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def average_scalars(values: list[float]) -> list[float]:
    """The mean over ranks of each value (one all_reduce, fp64): losses for the log and the routines."""
    n = world()
    return [v / n for v in collectives.sum_(values)]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a stop request, an error)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a run directory chosen from the clock, ...)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


@torch.no_grad()
def broadcast_params(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DistributedDataParallel does at wrap time)."""
    if not active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == "cuda" or dist.get_backend() != "nccl":
            dist.broadcast(t.data, src=0)
        else:
            buf = t.data.to(comm_device())
            dist.broadcast(buf, src=0)
            t.data.copy_(buf)


def _buckets(params: list[torch.nn.Parameter], cap: int) -> list[list[torch.nn.Parameter]]:
    """Consecutive runs of parameters of at most `cap` fp32 bytes each (one larger parameter alone)."""
    out, cur, size = [], [], 0
    for p in params:
        n = p.numel() * 4
        if cur and size + n > cap:
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += n
    return out + ([cur] if cur else [])


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Every parameter's .grad := its mean over ranks, summed in fp32; identity in one process.

    Every rank makes the same calls whatever it computed: a parameter with no gradient on this rank adds
    zeros, and after the sum a parameter keeps no gradient only if no rank gave it one (a head that the
    step did not use stays None, so the optimizer skips it exactly as in one process). One flattened
    fp32 buffer per bucket of about `bucket_bytes`, with one extra element per parameter counting the ranks
    that had a gradient. Unlike DistributedDataParallel, nothing overlaps with the backward pass: the
    reduction starts after the last backward of the step, which is what lets a step run several
    backwards (additive, pcgrad) and leave heads unused (sequential, parallel) with one reduction and
    no find_unused_parameters.
    """
    if not active():
        return
    device = comm_device()
    for bucket in _buckets(params, bucket_bytes):
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device, torch.float32)
                          for p in bucket]
                         + [torch.tensor([float(p.grad is not None) for p in bucket], device=device)])
        dist.all_reduce(flat)
        flat /= world()
        had = flat[-len(bucket):]
        offset = 0
        for i, p in enumerate(bucket):
            k = p.numel()
            if had[i] > 0:
                g = flat[offset:offset + k].view_as(p).to(p.device, p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += k


def average_(t: torch.Tensor) -> torch.Tensor:
    """`t` := its mean over ranks, in place, summed in fp32 (PCGrad's per-task gradients)."""
    if not active():
        return t
    buf = t.to(comm_device(), torch.float32)
    dist.all_reduce(buf)
    buf /= world()
    t.copy_(buf.to(t.device, t.dtype))
    return t
