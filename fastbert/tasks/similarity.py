"""Sentence-pair similarity scores (STS, SICK relatedness), Pearson correlation.

encoder: "bi"     Sentence-BERT, no parameters: predict score_max * cos(u, v); loss
                    cosine_mse   (score_max * cos(u, v) - score)^2
                    contrastive  margin loss on cosine distance with label score / score_max
         "cross"  one sequence [CLS] a [SEP] b [SEP] -> dropout + linear -> one score, squared error
Predictions are clipped to the task's score_range (else [0, score_max]).
"""
from __future__ import annotations

import torch.nn.functional as F

from fastbert import collectives
from fastbert.tasks import losses, metrics
from fastbert.tasks.base import Task

DEFAULTS = {"encoder": "bi", "loss": "cosine_mse", "dropout": 0.1, "margin": 0.5, "score_max": 5.0}
# loss name -> the loss of a bi-encoder Similarity task, its embeddings e = (u, v), scores y (a cross-encoder's
# loss is the squared error of its head's score)
LOSSES = {
    "cosine_mse": lambda task, e, y: losses.cosine_mse(e[0], e[1], y, task.score_max),
    "contrastive": lambda task, e, y: losses.margin_contrastive(e[0], e[1], y / task.score_max, task.cfg["margin"]),
}


class Similarity(Task):
    metric = "pearson"
    smoothness = "mse"

    def __init__(self, name, cfg, config):
        super().__init__(name, cfg, config)
        self.kind, self.loss_name, self.score_max = cfg["encoder"], cfg["loss"], float(cfg["score_max"])
        if self.kind not in ("bi", "cross"):
            raise ValueError(f"{name}: encoder must be 'bi' or 'cross', got {self.kind!r}")
        if self.kind == "bi" and self.loss_name not in LOSSES:
            raise ValueError(f"{name}: a bi-encoder takes a loss in {tuple(LOSSES)}, got {self.loss_name!r}")
        self.cross = self.kind == "cross"
        self.head = self.dropout_linear(cfg["dropout"], self.hidden_size, 1) if self.cross else None
        self.score_range = tuple(float(x) for x in (cfg.get("score_range") or (0.0, self.score_max)))

    def outputs(self, e, batch):
        """Unclipped scores [n]: the head's (cross-encoder), else score_max * cos(u, v)."""
        if self.cross:
            return self.apply_head(e[0], batch).float().squeeze(-1)
        return self.score_max * F.cosine_similarity(e[0], e[1], dim=-1)

    def loss_on(self, e, batch):
        if self.cross:
            return collectives.global_mean((self.outputs(e, batch) - batch.labels).square())
        return LOSSES[self.loss_name](self, e, batch.labels)

    def predict(self, encode, batch):
        """Scores [n] in score_range."""
        return self.outputs(self.embed(encode, batch), batch).clamp(*self.score_range)

    def score(self, pred, gold):
        return {"pearson": metrics.pearson(pred, gold)}
