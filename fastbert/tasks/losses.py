"""Sentence-embedding losses (Sentence-BERT, SimCSE) on pooled embeddings u, v [n, hidden], fp32.

Under several ranks each rank holds a share of the global batch: a loss is the rank's share of the
global-batch mean (collectives.global_mean), and the in-batch losses (MNR, SimCSE) gather every rank's
candidates with their gradients, so the negatives are the whole global batch, in its one-process order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastbert import collectives


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[u, v, |u - v|]: the input of Sentence-BERT's softmax classifier."""
    return torch.cat([u, v, (u - v).abs()], dim=-1)


def cosine_mse(u, v, target, scale: float = 1.0) -> torch.Tensor:
    """mean (target - scale * cos(u, v))^2; scale 5 matches STS scores in [0, 5]."""
    return collectives.global_mean((scale * F.cosine_similarity(u, v, dim=-1) - target.float()).square())


def margin_contrastive(u, v, target, margin: float = 0.5) -> torch.Tensor:
    """Hadsell et al.: l * d + (1 - l) * max(0, margin - d) with d = 1 - cos(u, v), l in [0, 1]."""
    d = 1.0 - F.cosine_similarity(u, v, dim=-1)
    t = target.float()
    return collectives.global_mean(t * d + (1.0 - t) * F.relu(margin - d))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy over the global batch (logits [n, classes] fp32, target [n])."""
    return collectives.global_mean(F.cross_entropy(logits, target, reduction="none"))


def multiple_negatives_ranking(u, v, positive: torch.Tensor | None = None, scale: float = 20.0) -> torch.Tensor:
    """Cross entropy of scale * cos(u_i, v_j) over j with target i: in-batch negatives.

    positive: a bool mask [n]; only positive pairs take part, as rows and as candidates (report 2's
    form; scale 1 is its formula, 20 is sentence-transformers' default). No positive pair: zero loss.
    Several ranks: the candidates v_j are the positive pairs of every rank, in global-batch order.
    """
    if positive is not None:
        u, v = u[positive], v[positive]
    cands, offset = collectives.gather(v)
    if len(cands) == 0:
        return v.sum() * 0.0
    sim = scale * F.cosine_similarity(u[:, None, :], cands[None, :, :], dim=-1)
    return _ranked(sim, offset, cands)


def simcse(anchor, positive, negative, temperature: float = 0.05) -> torch.Tensor:
    """Supervised SimCSE: for anchor i, its entailment positive against every in-batch positive and
    every hard negative (contradiction): cross entropy over [cos(h_i, h_j^+), cos(h_i, h_j^-)]_j / temperature.
    Several ranks: the candidates are every rank's positives, then every rank's negatives (the
    one-process order), and anchor i of rank r has its positive at r's offset + i.
    """
    positives, offset = collectives.gather(positive)
    negatives, _ = collectives.gather(negative)
    a = F.normalize(anchor, dim=-1)
    cands = F.normalize(torch.cat([positives, negatives]), dim=-1)
    return _ranked(a @ cands.T / temperature, offset, cands)


def _ranked(logits: torch.Tensor, offset: int, cands: torch.Tensor) -> torch.Tensor:
    """Cross entropy of rows [n, candidates] with row i's target at offset + i, over the global batch.
    A rank with no rows still backpropagates through `cands` (the gather's backward is a collective)."""
    target = torch.arange(offset, offset + len(logits), device=logits.device)
    loss = collectives.global_mean(F.cross_entropy(logits, target, reduction="none"))
    return loss + 0.0 * cands.sum() if len(logits) == 0 else loss
