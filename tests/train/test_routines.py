import numpy as np
import pytest
import torch

from fastbert.train import routines


class Toy:
    """Task losses as known functions of one shared parameter vector and one head scalar per task."""

    def __init__(self, targets):
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.heads = {t: torch.nn.Parameter(torch.tensor(1.0)) for t in targets}
        self.targets = {t: torch.tensor(v) for t, v in targets.items()}
        self.calls = []

    def loss(self, t):
        self.calls.append(t)
        return ((self.w - self.targets[t]) ** 2).sum() * self.heads[t]

    def losses(self, tasks):
        """The loop's several-task callback (a shared pass): the same values, its calls recorded as one."""
        self.calls.append(tuple(tasks))
        return {t: ((self.w - self.targets[t]) ** 2).sum() * self.heads[t] for t in tasks}

    def grads(self, t):
        w = self.w.detach().requires_grad_()
        return torch.autograd.grad(((w - self.targets[t]) ** 2).sum() * self.heads[t].detach(), w)[0]


def backward(value):
    value.backward()


TARGETS = {"a": [1.0, 0.0, 0.0], "b": [0.0, 2.0, 0.0], "c": [-1.0, 0.0, 0.5]}


def test_sequential_matches_report_two_sub_epochs():
    # report 2: SST, Quora, STS with batch 8 -> 16, 1 and 23 sub-epochs per global epoch
    r = routines.build("sequential", ["sst", "quora", "sts"], {"sst": 1068, "quora": 17688, "sts": 755})
    assert r.passes == {"sst": 16, "quora": 1, "sts": 23}
    assert r.steps_per_epoch == 16 * 1068 + 17688 + 23 * 755
    assert r.task_at(0) == "sst" and r.task_at(16 * 1068 - 1) == "sst" and r.task_at(16 * 1068) == "quora"
    assert r.task_at(r.steps_per_epoch - 1) == "sts" and r.task_at(r.steps_per_epoch) == "sst"


def test_sequential_steps_one_task():
    toy = Toy(TARGETS)
    r = routines.build("sequential", list(TARGETS), {"a": 2, "b": 4, "c": 1})
    assert r.steps_per_epoch == 4 + 4 + 4
    for s in range(12):
        r.step(s, toy.loss, None, backward, [toy.w])
    assert toy.calls == ["a"] * 4 + ["b"] * 4 + ["c"] * 4


@pytest.mark.parametrize("shared", [False, True])
def test_additive_sums_gradients(shared):
    """Without `losses` one loss and backward per task; with it one call for all tasks."""
    toy = Toy(TARGETS)
    toy.w.data = torch.tensor([0.3, -0.2, 0.9])
    r = routines.build("additive", list(TARGETS), {"a": 3, "b": 5, "c": 1})
    assert r.steps_per_epoch == 5
    out = r.step(0, toy.loss, toy.losses if shared else None, backward, [toy.w])
    assert set(out) == set(TARGETS)
    assert toy.calls == ([tuple(TARGETS)] if shared else list(TARGETS))
    torch.testing.assert_close(toy.w.grad, sum(toy.grads(t) for t in TARGETS))
    for t in TARGETS:
        assert out[t] == pytest.approx(float(((toy.w.detach() - toy.targets[t]) ** 2).sum()))
        assert toy.heads[t].grad == pytest.approx(float(((toy.w.detach() - toy.targets[t]) ** 2).sum()))


def test_parallel_rotates():
    toy = Toy(TARGETS)
    r = routines.build("parallel", list(TARGETS), {"a": 3, "b": 5, "c": 1})
    assert r.steps_per_epoch == 15
    for s in range(7):
        r.step(s, toy.loss, None, backward, [toy.w])
    assert toy.calls == ["a", "b", "c", "a", "b", "c", "a"]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("standardize", [False, True])
def test_weighted_softmax_of_improvements(standardize, shared):
    toy = Toy(TARGETS)
    losses = toy.losses if shared else None
    r = routines.build("weighted", list(TARGETS), {t: 1 for t in TARGETS}, standardize=standardize)
    toy.w.data = torch.tensor([0.3, -0.2, 0.9])
    first = r.step(0, toy.loss, losses, backward, [toy.w])
    assert toy.calls == ([tuple(TARGETS)] if shared else list(TARGETS))
    torch.testing.assert_close(toy.w.grad, sum(toy.grads(t) for t in TARGETS) / 3)  # no history: uniform
    toy.w.grad = None
    toy.w.data = torch.tensor([0.5, 0.4, 0.2])
    second = r.step(1, toy.loss, losses, backward, [toy.w])
    gain = np.array([first[t] - second[t] for t in TARGETS])
    if standardize:  # relative to the running mean loss
        means = np.array([0.9 * first[t] + 0.1 * second[t] for t in TARGETS])
        gain = gain / means
    w = np.exp(gain - gain.max()) / np.exp(gain - gain.max()).sum()
    assert list(r.info["weights"].values()) == pytest.approx(list(w), abs=1e-4)
    torch.testing.assert_close(toy.w.grad, sum(float(wi) * toy.grads(t) for wi, t in zip(w, TARGETS)))


def test_stochastic_follows_one_sampled_task_and_resumes():
    toy = Toy(TARGETS)
    r = routines.build("stochastic", list(TARGETS), {t: 1 for t in TARGETS}, seed=7)
    picked = []
    for s in range(5):
        toy.w.grad = None
        toy.calls = []
        r.step(s, toy.loss, toy.losses, backward, [toy.w])
        assert toy.calls == list(TARGETS)  # one pass per task, given `losses` or not
        picked.append(r.info["task"])
        torch.testing.assert_close(toy.w.grad, toy.grads(picked[-1]))
    saved = r.state_dict()
    after = []
    for s in range(5, 15):
        r.step(s, toy.loss, None, backward, [toy.w])
        after.append(r.info["task"])
    r2 = routines.build("stochastic", list(TARGETS), {t: 1 for t in TARGETS}, seed=7)
    r2.load_state_dict(saved)
    again = []
    for s in range(5, 15):
        r2.step(s, toy.loss, None, backward, [toy.w])
        again.append(r2.info["task"])
    assert after == again and len(set(picked + after)) > 1


def test_pcgrad_projects_conflicts():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # conflict: dot = -1
    total = routines.project_conflicting([g1, g2], [[1], [0]])
    p1 = g1 - (-1.0) / 2.0 * g2  # [0.5, 0.5]
    p2 = g2 - (-1.0) / 1.0 * g1  # [0, 1]
    torch.testing.assert_close(total, p1 + p2)
    assert torch.dot(p1, g2) == pytest.approx(0.0) and torch.dot(p2, g1) == pytest.approx(0.0)
    h1, h2 = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])  # no conflict: plain sum
    torch.testing.assert_close(routines.project_conflicting([h1, h2], [[1], [0]]), h1 + h2)


def test_pcgrad_step_sets_projected_shared_gradient_and_keeps_heads():
    toy = Toy({"a": [1.0, 0.0, 0.0], "b": [-1.0, 1.0, 0.0]})
    r = routines.build("pcgrad", ["a", "b"], {"a": 1, "b": 1})
    unused = torch.nn.Parameter(torch.zeros(2))
    r.step(0, toy.loss, toy.losses, backward, [toy.w, unused])
    assert toy.calls == ["a", "b"]  # each task's gradient apart: one pass per task
    ga, gb = toy.grads("a"), toy.grads("b")
    expected = routines.project_conflicting([ga, gb], [[1], [0]])
    torch.testing.assert_close(toy.w.grad, expected)
    assert unused.grad is None  # no task reached it
    assert toy.heads["a"].grad is not None and toy.heads["b"].grad is not None


def test_unknown_routine():
    with pytest.raises(ValueError, match="unknown routine"):
        routines.build("magic", ["a"], {"a": 1})
