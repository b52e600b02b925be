"""Supervised SimCSE on NLI triplets (premise, entailment, contradiction) with in-batch negatives.

Triplets come from an NLI data set (label 0 entailment, 2 contradiction): every entailment hypothesis
of a premise is paired with one of its contradictions. The metric is triplet accuracy: how often
cos(premise, entailment) > cos(premise, contradiction).
"""
from __future__ import annotations

import torch.nn.functional as F

from fastbert.data import batching
from fastbert.data.readers import DataError, Example
from fastbert.tasks import losses, metrics
from fastbert.tasks.base import Task

DEFAULTS = {"temperature": 0.05, "entailment": 0, "contradiction": 2}


def triplets(examples, entailment: int = 0, contradiction: int = 2) -> list[Example]:
    groups: dict[str, tuple[list, list]] = {}
    for e in examples:
        pos, neg = groups.setdefault(e.texts[0], ([], []))
        if e.label == entailment:
            pos.append(e)
        elif e.label == contradiction:
            neg.append(e)
    out = [Example(p.id, (premise, p.texts[1], neg[i % len(neg)].texts[1]), 1)
           for premise, (pos, neg) in groups.items() if neg for i, p in enumerate(pos)]
    if not out:
        raise DataError("no (premise, entailment, contradiction) triplets in the NLI data")
    return out


class Contrastive(Task):
    metric = "accuracy"

    def encode(self, examples, tokenizer, max_length):
        return batching.encode(triplets(examples, self.cfg["entailment"], self.cfg["contradiction"]), tokenizer,
                               max_length, cross=False)

    def loss_on(self, e, batch):
        a, p, n = e
        return losses.simcse(a, p, n, self.cfg["temperature"])

    def predict(self, encode, batch):
        a, p, n = self.embed(encode, batch)
        return (F.cosine_similarity(a, p, dim=-1) > F.cosine_similarity(a, n, dim=-1)).long()

    def score(self, pred, gold):
        return {"accuracy": metrics.accuracy(pred, gold)}
