"""How batches from several tasks become one optimizer update.

A routine calls `loss(task)` (the next batch of that task -> its scalar loss) and `backward(tensor)`
(gradients accumulate into .grad, loss scaling inside), and knows nothing else of a task. The routines
that sum every task's loss (additive, weighted) call `losses(tasks)` instead where the loop gives it
(not None): each task's next batch and loss as `loss` gives them, from one encoder pass over all their
batches (fastbert.train.loop, the `pack_tasks` setting). B_t below is task t's batches per epoch of its
data; smaller data sets are cycled, each in its own shuffled epochs.

  sequential  task after task: N_t passes over task t with N_t * B_t about equal (N_t = max B // B_t),
              one epoch = sum N_t * B_t steps (report 2's sequential routine)
  additive    every step sums one batch loss of every task; epoch = max B steps (report 1's round robin)
  parallel    one task per step, rotating; epoch = tasks * max B steps (report 2's parallel routine)
  weighted    every task's loss each step, gradient sum_t w_t grad L_t with w = softmax of the loss
              improvements L_{t-1} - L_t (report 1); `standardize` divides each improvement by the
              task's running mean loss, so tasks with differently scaled losses compare
  stochastic  the same weights, but the step follows one task sampled from them (report 1)
  pcgrad      every task's gradient; each is projected off the others it conflicts with on the shared
              encoder (negative dot product), then summed (Yu et al. 2020, gradient surgery)
Stochastic and pcgrad run one encoder pass per task: stochastic backpropagates one task's loss, which
through a shared pass would cost the backward pass of every task's sequences (the unchosen tasks' graphs
are freed unused instead); pcgrad needs each task's gradient apart, one backward pass through the
shared pass per task.

Several ranks (fastbert.train.distributed): every rank runs the same tasks in the same order on its
share of each batch, and the loop averages the gradients once per step, after the routine. The
routines that decide from loss values (weighted, stochastic) decide from their means over ranks, so
every rank samples the same task; pcgrad averages each task's shared gradient over ranks before the
projection (`averages_shared`), so every rank projects the global gradients.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from fastbert.train import distributed

LossFn = Callable[[str], torch.Tensor]
LossesFn = Callable[[list[str]], dict[str, torch.Tensor]]
Backward = Callable[[torch.Tensor], None]


class Routine:
    """tasks: the trained tasks in order; batches: {task: B_t}. Subclasses add the settings they use (seed,
    standardize), which `build` passes to those that take them."""

    averages_shared = False  # the routine leaves the shared parameters' gradients averaged over ranks

    def __init__(self, tasks: list[str], batches: dict[str, int]):
        if not tasks:
            raise ValueError("a routine needs at least one task")
        self.tasks, self.batches = list(tasks), dict(batches)
        self.most = max(self.batches[t] for t in self.tasks)
        self.info: dict = {}  # what the last step decided (weights, task), for the log

    @property
    def steps_per_epoch(self) -> int:
        return self.most

    def step(self, step: int, loss: LossFn, losses: LossesFn | None, backward: Backward,
             shared: list[torch.nn.Parameter]) -> dict:
        """One update's gradients; returns {task: loss value} of the tasks it ran. losses: None where the loop
        runs no shared pass this step."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Sequential(Routine):
    def __init__(self, tasks, batches):
        super().__init__(tasks, batches)
        self.passes = {t: max(1, self.most // self.batches[t]) for t in self.tasks}
        self.plan = [(t, self.passes[t] * self.batches[t]) for t in self.tasks]

    @property
    def steps_per_epoch(self):
        return sum(n for _, n in self.plan)

    def task_at(self, step: int) -> str:
        s = step % self.steps_per_epoch
        for t, n in self.plan:
            if s < n:
                return t
            s -= n
        raise AssertionError("unreachable")

    def step(self, step, loss, losses, backward, shared):
        t = self.task_at(step)
        value = loss(t)
        backward(value)
        self.info = {"task": t}
        return {t: value.item()}


class Additive(Routine):
    def step(self, step, loss, losses, backward, shared):
        if losses is not None:  # one shared encoder pass, one backward of the sum
            values = losses(self.tasks)
            backward(sum(values[t] for t in self.tasks))
            return {t: values[t].item() for t in self.tasks}
        out = {}
        for t in self.tasks:  # one backward per task: the same gradient sum, less activation memory
            value = loss(t)
            backward(value)
            out[t] = value.item()
        return out


class Parallel(Routine):
    @property
    def steps_per_epoch(self):
        return len(self.tasks) * self.most

    def step(self, step, loss, losses, backward, shared):
        t = self.tasks[step % len(self.tasks)]
        value = loss(t)
        backward(value)
        self.info = {"task": t}
        return {t: value.item()}


class Weighted(Routine):
    def __init__(self, tasks, batches, standardize: bool = False):
        super().__init__(tasks, batches)
        self.standardize = standardize
        self.prev: dict[str, float] = {}
        self.mean: dict[str, float] = {}  # running mean loss per task (standardize)

    def weights(self, losses: dict[str, float]) -> np.ndarray:
        gain = []
        for t in self.tasks:
            g = self.prev[t] - losses[t] if t in self.prev else 0.0
            if self.standardize:
                self.mean[t] = losses[t] if t not in self.mean else 0.9 * self.mean[t] + 0.1 * losses[t]
                g /= max(self.mean[t], 1e-8)
            gain.append(g)
        self.prev = dict(losses)
        e = np.exp(np.array(gain) - max(gain))
        return e / e.sum()

    def _weigh(self, tensors: dict[str, torch.Tensor]):
        """(weights, {task: loss averaged over ranks}) of this rank's loss tensors {task: loss}."""
        values = dict(zip(self.tasks, distributed.average_scalars([tensors[t].item() for t in self.tasks])))
        w = self.weights(values)
        self.info = {"weights": {t: round(float(x), 4) for t, x in zip(self.tasks, w)}}
        return w, values

    def step(self, step, loss, losses, backward, shared):
        tensors = losses(self.tasks) if losses is not None else {t: loss(t) for t in self.tasks}
        w, values = self._weigh(tensors)
        backward(sum(float(wi) * tensors[t] for t, wi in zip(self.tasks, w)))
        return values

    def state_dict(self):
        return {"prev": dict(self.prev), "mean": dict(self.mean)}

    def load_state_dict(self, state):
        self.prev, self.mean = dict(state["prev"]), dict(state["mean"])


class Stochastic(Weighted):
    def __init__(self, tasks, batches, seed: int = 0, standardize: bool = False):
        super().__init__(tasks, batches, standardize)
        self.rng = np.random.default_rng([seed, 1])

    def step(self, step, loss, losses, backward, shared):
        tensors = {t: loss(t) for t in self.tasks}  # one pass per task (see above)
        w, values = self._weigh(tensors)
        t = self.tasks[int(self.rng.choice(len(self.tasks), p=w))]
        backward(tensors[t])
        self.info["task"] = t
        return values

    def state_dict(self):
        return {**super().state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]


def project_conflicting(grads: list[torch.Tensor], order: list[list[int]]) -> torch.Tensor:
    """PCGrad: each g_i minus its projections on the g_j it conflicts with (in the given order); summed."""
    total = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        g = g.clone()
        for j in order[i]:
            dot = torch.dot(g, grads[j])
            if j != i and dot < 0:
                g -= dot / grads[j].dot(grads[j]).clamp_min(1e-20) * grads[j]
        total += g
    return total


def _flat_grad(p: torch.nn.Parameter) -> torch.Tensor:
    """p's gradient (zeros if none) as a flat fp32 vector."""
    return (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()


class PCGrad(Routine):
    averages_shared = True

    def __init__(self, tasks, batches, seed: int = 0):
        super().__init__(tasks, batches)
        self.rng = np.random.default_rng([seed, 2])

    def step(self, step, loss, losses, backward, shared):
        out, grads, used = {}, [], [False] * len(shared)
        for t in self.tasks:
            for p in shared:
                p.grad = None
            value = loss(t)
            backward(value)
            out[t] = value.item()
            # this task's gradient and which parameters it reached, averaged over ranks (a share > 0: any rank)
            reached = torch.tensor([float(p.grad is not None) for p in shared], device=shared[0].device)
            flat = distributed.average_(torch.cat([_flat_grad(p) for p in shared] + [reached]))
            used = [u or bool(r > 0) for u, r in zip(used, flat[-len(shared):])]
            grads.append(flat[:-len(shared)])
        n = len(self.tasks)
        total = project_conflicting(grads, [list(self.rng.permutation(n)) for _ in range(n)])
        offset = 0
        for p, u in zip(shared, used):  # parameters no task reached keep no gradient (the optimizer skips them)
            k = p.numel()
            p.grad = total[offset:offset + k].view_as(p).to(p.dtype).clone() if u else None
            offset += k
        return out

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


ROUTINES = {"sequential": Sequential, "additive": Additive, "parallel": Parallel, "weighted": Weighted,
            "stochastic": Stochastic, "pcgrad": PCGrad}


def build(name: str, tasks: list[str], batches: dict[str, int], seed: int = 0, standardize: bool = False) -> Routine:
    """The routine `name`, given the settings among seed and standardize that it uses."""
    if name not in ROUTINES:
        raise ValueError(f"unknown routine {name!r}; choose one of {list(ROUTINES)}")
    cls = ROUTINES[name]
    takes = inspect.signature(cls).parameters
    settings = {k: v for k, v in {"seed": seed, "standardize": standardize}.items() if k in takes}
    return cls(tasks, batches, **settings)
