"""Single-sentence classification (SST-5, SST-2, Yelp, CFIMDB): dropout + linear on the sentence
embedding, cross entropy, accuracy."""
from __future__ import annotations

from torch import nn

from fastbert.tasks import losses, metrics
from fastbert.tasks.base import Task

DEFAULTS = {"num_labels": 2, "dropout": 0.1}


class Classify(Task):
    metric = "accuracy"
    smoothness = "kl"

    def __init__(self, name, cfg, config):
        super().__init__(name, cfg, config)
        self.head = nn.Sequential(nn.Dropout(cfg["dropout"]), nn.Linear(self.hidden_size, cfg["num_labels"]))

    def logits(self, encode, batch):
        return self.head(self.embed(encode, batch)[0])

    def outputs(self, e):
        return self.head(e[0]).float()

    def loss_on(self, e, labels):
        return losses.cross_entropy(self.outputs(e), labels)

    def predict(self, encode, batch):
        return self.logits(encode, batch).argmax(-1)

    def proba(self, encode, batch):
        """Class probabilities [n, num_labels], fp32."""
        return self.logits(encode, batch).float().softmax(-1)

    def score(self, pred, gold):
        return {"accuracy": metrics.accuracy(pred, gold)}
