"""Sentence-pair classification (Quora, PAWS: paraphrase; SNLI, SICK: entailment), accuracy.

encoder: "cross"  one sequence [CLS] a [SEP] b [SEP] -> dropout + linear -> cross entropy
         "bi"     Sentence-BERT: u, v embedded separately, with loss
                    softmax      linear on [u, v, |u - v|] -> cross entropy (any number of classes)
                    cosine_mse   (cos(u, v) - label)^2                      (binary labels)
                    contrastive  margin loss on cosine distance             (binary labels)
                    mnr          multiple negatives ranking over positive pairs (binary labels)
The cosine losses predict "same" when cos(u, v) > threshold: a fixed `threshold` setting, else the one
with the best accuracy on up to CALIBRATION labelled training pairs (`calibration`, set by the training
driver: pairs the run does not train on where train_limit leaves enough), chosen again before each
evaluation and saved with the head (buffer `threshold`; before any choice: 0.5, or for the margin loss
halfway between the positives' distance 0 and the margin, 1 - margin / 2); `threshold_origin` says which.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fastbert.tasks import losses, metrics
from fastbert.tasks.base import Task

DEFAULTS = {"num_labels": 2, "encoder": "bi", "loss": "softmax", "dropout": 0.1, "margin": 0.5, "mnr_scale": 20.0,
            "threshold": None}
# loss name -> the loss of a PairClassify task, its embeddings e ((u, v); (pair,) for a cross-encoder), the batch b
LOSSES = {
    "softmax": lambda task, e, b: losses.cross_entropy(task._logits(e, b), b.labels),
    "cosine_mse": lambda task, e, b: losses.cosine_mse(e[0], e[1], b.labels),
    "contrastive": lambda task, e, b: losses.margin_contrastive(e[0], e[1], b.labels, task.cfg["margin"]),
    "mnr": lambda task, e, b: losses.multiple_negatives_ranking(e[0], e[1], b.labels == 1, task.cfg["mnr_scale"]),
}
CALIBRATION = 2000  # training pairs a cosine loss's threshold is chosen on


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The cut t with the highest accuracy of (scores > t) against binary labels [n]: the midpoint
    between two neighbouring scores (ties: the highest such cut)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # k top scores called positive: correct = positives among them + negatives after them
    correct = np.concatenate([[0], np.cumsum(y)]) + np.concatenate([[(~y).sum()], (~y).sum() - np.cumsum(~y)])
    distinct = np.concatenate([[True], s[1:] < s[:-1], [True]])  # a cut must fall between different scores
    k = int(np.argmax(np.where(distinct, correct, -1)))
    if k == 0:
        return float(s[0]) + 1e-6
    if k == len(s):
        return float(s[-1]) - 1e-6
    return float((s[k - 1] + s[k]) / 2)


class PairClassify(Task):
    metric = "accuracy"
    optional_state = ("threshold",)  # checkpoints from before the threshold was saved keep the default

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
            self.head = self.dropout_linear(cfg["dropout"], width, n)
        threshold = cfg.get("threshold")
        self.fixed_threshold = threshold is not None
        self.calibration = None  # a Loader of training pairs the threshold is chosen on (cosine losses)
        self.threshold_origin = f"set by {name}.threshold" if self.fixed_threshold else "as loaded, else the default"
        if self.loss_name != "softmax":
            default = threshold if threshold is not None else (
                1.0 - cfg["margin"] / 2 if self.loss_name == "contrastive" else 0.5)
            self.register_buffer("threshold", torch.tensor(float(default)))

    def _logits(self, e, batch):
        return self.apply_head(e[0] if self.cross else losses.pair_features(e[0], e[1]), batch).float()

    @property
    def smoothness(self) -> str:
        """SMART's divergence: of the logits (softmax loss), else of the cosine (a score)."""
        return "kl" if self.loss_name == "softmax" else "mse"

    def outputs(self, e, batch):
        return self._logits(e, batch) if self.loss_name == "softmax" else F.cosine_similarity(e[0], e[1], dim=-1)

    def loss_on(self, e, batch):
        return LOSSES[self.loss_name](self, e, batch)

    def predict(self, encode, batch):
        e = self.embed(encode, batch)
        if self.loss_name == "softmax":
            return self._logits(e, batch).argmax(-1)
        return (F.cosine_similarity(e[0], e[1], dim=-1) > self.threshold).long()

    def proba(self, encode, batch):
        """Class probabilities [n, num_labels], fp32 (softmax loss only)."""
        return self._logits(self.embed(encode, batch), batch).softmax(-1)

    @property
    def calibrates(self) -> bool:
        """Whether the threshold is chosen on training data (a cosine loss without a fixed threshold)."""
        return self.loss_name != "softmax" and not self.fixed_threshold

    @torch.no_grad()
    def choose_threshold(self, encode, loader) -> float:
        """Set the threshold to the best cut of cos(u, v) on a loader's labelled pairs; returns it."""
        cos, gold = [], []
        for b in loader:
            e = self.embed(encode, b.to(self.threshold.device))
            cos.append(F.cosine_similarity(e[0], e[1], dim=-1).float().cpu().numpy())
            gold.append(b.labels.cpu().numpy())
        self.threshold.fill_(best_threshold(np.concatenate(cos), np.concatenate(gold)))
        return float(self.threshold)

    def evaluate(self, encode, loader, progress=None):
        if self.calibrates and self.calibration is not None:
            self.choose_threshold(encode, self.calibration)
        metrics, preds = super().evaluate(encode, loader, progress)
        if self.loss_name != "softmax" and metrics:
            metrics["threshold"] = float(self.threshold)
        return metrics, preds

    def score(self, pred, gold):
        return {"accuracy": metrics.accuracy(pred, gold)}

