"""Sentence-embedding losses (Sentence-BERT, SimCSE) on pooled embeddings u, v [n, hidden], fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[u, v, |u - v|]: the input of Sentence-BERT's softmax classifier."""
    return torch.cat([u, v, (u - v).abs()], dim=-1)


def cosine_mse(u, v, target, scale: float = 1.0) -> torch.Tensor:
    """mean (target - scale * cos(u, v))^2; scale 5 matches STS scores in [0, 5]."""
    return F.mse_loss(scale * F.cosine_similarity(u, v, dim=-1), target.float())


def margin_contrastive(u, v, target, margin: float = 0.5) -> torch.Tensor:
    """Hadsell et al.: l * d + (1 - l) * max(0, margin - d) with d = 1 - cos(u, v), l in [0, 1]."""
    d = 1.0 - F.cosine_similarity(u, v, dim=-1)
    t = target.float()
    return (t * d + (1.0 - t) * F.relu(margin - d)).mean()


def multiple_negatives_ranking(u, v, positive: torch.Tensor | None = None, scale: float = 20.0) -> torch.Tensor:
    """Cross entropy of scale * cos(u_i, v_j) over j with target i: in-batch negatives.

    positive: a bool mask [n]; only positive pairs take part, as rows and as candidates (report 2's
    form; scale 1 is its formula, 20 is sentence-transformers' default). No positive pair: zero loss.
    """
    if positive is not None:
        u, v = u[positive], v[positive]
    if len(u) == 0:
        return v.sum() * 0.0
    sim = scale * F.cosine_similarity(u[:, None, :], v[None, :, :], dim=-1)
    return F.cross_entropy(sim, torch.arange(len(u), device=u.device))


def simcse(anchor, positive, negative, temperature: float = 0.05) -> torch.Tensor:
    """Supervised SimCSE: for anchor i, its entailment positive against every in-batch positive and
    every hard negative (contradiction): cross entropy over [cos(h_i, h_j^+), cos(h_i, h_j^-)]_j / temperature."""
    a = F.normalize(anchor, dim=-1)
    cands = F.normalize(torch.cat([positive, negative]), dim=-1)
    logits = a @ cands.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))
