"""Sentence-pair classification (Quora, PAWS: paraphrase; SNLI, SICK: entailment), accuracy.

encoder: "cross"  one sequence [CLS] a [SEP] b [SEP] -> dropout + linear -> cross entropy
         "bi"     Sentence-BERT: u, v embedded separately, with loss
                    softmax      linear on [u, v, |u - v|] -> cross entropy (any number of classes)
                    cosine_mse   (cos(u, v) - label)^2                      (binary labels)
                    contrastive  margin loss on cosine distance             (binary labels)
                    mnr          multiple negatives ranking over positive pairs (binary labels)
The cosine losses predict "same" when cos(u, v) > threshold (default: 0.5, or for the margin loss
halfway between the positives' distance 0 and the margin: 1 - margin / 2).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from fastbert.tasks import losses, metrics
from fastbert.tasks.base import Task

DEFAULTS = {"num_labels": 2, "encoder": "bi", "loss": "softmax", "dropout": 0.1, "margin": 0.5, "mnr_scale": 20.0,
            "threshold": None}
# loss name -> the loss of a PairClassify task, its embeddings e ((u, v); (pair,) for a cross-encoder), labels y
LOSSES = {
    "softmax": lambda task, e, y: F.cross_entropy(task._logits(e), y),
    "cosine_mse": lambda task, e, y: losses.cosine_mse(e[0], e[1], y),
    "contrastive": lambda task, e, y: losses.margin_contrastive(e[0], e[1], y, task.cfg["margin"]),
    "mnr": lambda task, e, y: losses.multiple_negatives_ranking(e[0], e[1], y == 1, task.cfg["mnr_scale"]),
}


class PairClassify(Task):
    metric = "accuracy"

    def __init__(self, name, cfg, config):
        super().__init__(name, cfg, config)
        self.kind, self.loss_name, n = cfg["encoder"], cfg["loss"], cfg["num_labels"]
        if self.kind not in ("bi", "cross"):
            raise ValueError(f"{name}: encoder must be 'bi' or 'cross', got {self.kind!r}")
        if self.loss_name not in LOSSES or (self.kind == "cross" and self.loss_name != "softmax"):
            raise ValueError(f"{name}: loss {self.loss_name!r} is not one of {tuple(LOSSES)} "
                             "(a cross-encoder takes 'softmax' only)")
        if self.loss_name != "softmax" and n != 2:
            raise ValueError(f"{name}: loss {self.loss_name!r} needs binary labels, the task has {n} classes")
        self.cross = self.kind == "cross"
        self.head = None
        if self.loss_name == "softmax":
            width = self.hidden_size if self.cross else 3 * self.hidden_size
            self.head = nn.Sequential(nn.Dropout(cfg["dropout"]), nn.Linear(width, n))
        threshold = cfg.get("threshold")
        self.threshold = threshold if threshold is not None else (
            1.0 - cfg["margin"] / 2 if self.loss_name == "contrastive" else 0.5)

    def _logits(self, e):
        return self.head(e[0] if self.cross else losses.pair_features(e[0], e[1])).float()

    def loss(self, encode, batch):
        return LOSSES[self.loss_name](self, self.embed(encode, batch), batch.labels)

    def predict(self, encode, batch):
        e = self.embed(encode, batch)
        if self.loss_name == "softmax":
            return self._logits(e).argmax(-1)
        return (F.cosine_similarity(e[0], e[1], dim=-1) > self.threshold).long()

    def score(self, pred, gold):
        return {"accuracy": metrics.accuracy(pred, gold)}

