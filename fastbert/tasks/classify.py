"""Single-sentence classification (SST-5, SST-2, Yelp, CFIMDB): dropout + linear on the sentence
embedding, cross entropy, accuracy."""
from __future__ import annotations

from fastbert.tasks import losses, metrics
from fastbert.tasks.base import Task

DEFAULTS = {"num_labels": 2, "dropout": 0.1}


class Classify(Task):
    metric = "accuracy"
    smoothness = "kl"

    def __init__(self, name, cfg, config):
        super().__init__(name, cfg, config)
        self.head = self.dropout_linear(cfg["dropout"], self.hidden_size, cfg["num_labels"])

    def logits(self, encode, batch):
        return self.outputs(self.embed(encode, batch), batch)

    def outputs(self, e, batch):
        return self.apply_head(e[0], batch).float()

    def loss_on(self, e, batch):
        return losses.cross_entropy(self.outputs(e, batch), batch.labels)

    def predict(self, encode, batch):
        return self.logits(encode, batch).argmax(-1)

    def proba(self, encode, batch):
        """Class probabilities [n, num_labels], fp32."""
        return self.logits(encode, batch).float().softmax(-1)

    def score(self, pred, gold):
        return {"accuracy": metrics.accuracy(pred, gold)}
