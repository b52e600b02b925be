import math

import pytest
import torch
import torch.nn.functional as F

from fastbert.tasks import losses


@pytest.fixture
def uv():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_pair_features(uv):
    u, v = uv
    f = losses.pair_features(u, v)
    assert torch.equal(f, torch.cat([u, v, (u - v).abs()], 1))


def test_cosine_mse(uv):
    u, v = uv
    y = torch.tensor([0.0, 1.0, 2.5, 5.0, 3.0, 4.2])
    ref = sum((y[i].item() - 5 * _cos(u[i], v[i])) ** 2 for i in range(6)) / 6
    assert losses.cosine_mse(u, v, y, 5.0).item() == pytest.approx(ref, rel=1e-5)


def test_margin_contrastive(uv):
    u, v = uv
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.3, 0.0])
    ref = 0.0
    for i in range(6):
        d = 1 - _cos(u[i], v[i])
        ref += y[i].item() * d + (1 - y[i].item()) * max(0.0, 0.5 - d)
    assert losses.margin_contrastive(u, v, y, 0.5).item() == pytest.approx(ref / 6, rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_multiple_negatives_ranking_over_positive_pairs(uv, scale):
    u, v = uv
    pos = torch.tensor([True, False, True, True, False, True])
    idx = [i for i in range(6) if pos[i]]
    ref = 0.0
    for i in idx:  # report 2's formula, with a scale
        ref -= scale * _cos(u[i], v[i]) - math.log(sum(math.exp(scale * _cos(u[i], v[j])) for j in idx))
    got = losses.multiple_negatives_ranking(u, v, pos, scale)
    assert got.item() == pytest.approx(ref / len(idx), rel=1e-5)
    none = losses.multiple_negatives_ranking(u.requires_grad_(), v, torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_simcse(temperature):
    g = torch.Generator().manual_seed(1)
    a, p, n = (torch.randn(4, 8, generator=g) for _ in range(3))
    ref = 0.0
    for i in range(4):  # report 1, section 3.4
        num = math.exp(_cos(a[i], p[i]) / temperature)
        den = sum(math.exp(_cos(a[i], p[j]) / temperature) + math.exp(_cos(a[i], n[j]) / temperature)
                  for j in range(4))
        ref -= math.log(num / den)
    assert losses.simcse(a, p, n, temperature).item() == pytest.approx(ref / 4, rel=1e-4)


def test_losses_have_gradients(uv):
    u, v = (t.clone().requires_grad_() for t in uv)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    total = (losses.cosine_mse(u, v, y) + losses.margin_contrastive(u, v, y)
             + losses.multiple_negatives_ranking(u, v, y == 1) + losses.simcse(u, v, u.flip(0)))
    total.backward()
    assert u.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert F.cosine_similarity(u, v).shape == (6,)
