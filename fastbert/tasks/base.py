"""What every task shares: sentence-embedding pooling and the Task interface.

A task is an nn.Module holding its head's parameters. It turns examples into token sequences
(`encode`), a batch into a loss (`loss`) or predictions (`predict`), and predictions into its metric
(`score`). It is handed `encode`, a function from a tokenized Batch to the encoder's BertOutput, so it
never sees how the encoder runs (precision, frozen or not, backend) nor how its loss is combined with
other tasks' losses.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fastbert import collectives
from fastbert import nn as fnn
from fastbert.config import BertConfig
from fastbert.data import batching
from fastbert.data.readers import Example
from fastbert.model import BertOutput
from fastbert.tokenizer import Batch

POOLING = ("mean", "cls", "pooler")


class Encode:
    """What a task calls to run the encoder: a tokenized Batch -> the encoder's BertOutput; word_embeddings
    is the tied MLM decoder. Frozen: no gradient, no dropout."""

    def __init__(self, encoder: nn.Module, frozen: bool = False):
        self.encoder, self.frozen = encoder, frozen

    def __call__(self, inputs: Batch, delta: torch.Tensor | None = None) -> BertOutput:
        """delta: None, or a perturbation [*inputs.input_ids.shape, hidden] of the embedding output (SMART)."""
        if not self.frozen:
            return self.encoder(**inputs.model_inputs(), embedding_delta=delta)
        was = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                return self.encoder(**inputs.model_inputs(), embedding_delta=delta)
        finally:
            self.encoder.train(was)

    def together(self, parts: Sequence[Batch]) -> list[BertOutput]:
        """One encoder pass over several packed batches, their sequences back to back (batching.concat) -> each
        batch's BertOutput, its share of the pass's ([T_i, hidden], [n_i, hidden]). The pass draws one seed per
        dropout site for all: sequences of different batches need different dropout keys (batching.pack)."""
        out = self(batching.concat(parts))
        tokens, seqs = [len(p.input_ids) for p in parts], [len(p.lengths) for p in parts]
        return [BertOutput(h, pooled) for h, pooled in
                zip(out.last_hidden_state.split(tokens), out.pooler_output.split(seqs))]

    @property
    def word_embeddings(self) -> torch.Tensor:
        w = self.encoder.embeddings.word_embeddings.weight
        return w.detach() if self.frozen else w


def pool(out: BertOutput, inputs: Batch, mode: str) -> torch.Tensor:
    """One embedding per sequence [n, hidden], from a padded or a packed batch.

    mean: the average over real tokens (what all-MiniLM-L6-v2 and Sentence-BERT were trained with);
    cls: the [CLS] token's last hidden state; pooler: BERT's tanh(dense([CLS])), minBERT's pooler_output.
    """
    h = out.last_hidden_state
    if mode == "pooler":
        return out.pooler_output
    if inputs.cu_seqlens is not None:  # packed [T, hidden]
        starts = inputs.cu_seqlens[:-1].long()
        if mode == "cls":
            return h[starts]
        seq = torch.repeat_interleave(torch.arange(len(starts), device=h.device), inputs.lengths.to(h.device).long())
        sums = torch.zeros(len(starts), h.shape[-1], dtype=torch.float32, device=h.device).index_add_(0, seq, h.float())
    else:  # padded [B, S, hidden], zeros at padding
        if mode == "cls":
            return h[:, 0]
        sums = h.float().sum(1)
    if mode != "mean":
        raise ValueError(f"pooling must be one of {POOLING}, got {mode!r}")
    return (sums / inputs.lengths.to(h.device).clamp_min(1)[:, None]).to(h.dtype)


class Task(nn.Module):
    """A task's head and its loss, predictions and metric. Subclasses set `metric` and override.

    A sentence task (classify, pair, similarity) defines its loss on the pooled embeddings (`loss_on`) and
    its raw `outputs` (logits or scores) with the `smoothness` divergence that compares two of them: what
    SMART regularisation (fastbert.tasks.smart) needs. SimCSE has a loss_on but no outputs; MLM overrides
    `loss` (its encoder input is its masked batch) and has neither.
    """

    metric = "accuracy"  # the key of score() that ranks checkpoints (higher is better)
    cross = False  # encode a pair as one sequence (cross-encoder) instead of one sequence per text
    smoothness: str | None = None  # "kl": outputs are logits; "mse": outputs are scores; None: no outputs

    def __init__(self, name: str, cfg: dict, config: BertConfig):
        super().__init__()
        self.name, self.cfg, self.hidden_size = name, cfg, config.hidden_size
        self.pooling = cfg.get("pooling", "mean")
        if self.pooling not in POOLING:
            raise ValueError(f"{name}: pooling must be one of {POOLING}, got {self.pooling!r}")

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> batching.Encoded:
        return batching.encode(examples, tokenizer, max_length, self.cross)

    def embed(self, encode: Encode, batch: batching.TaskBatch, delta: torch.Tensor | None = None) -> torch.Tensor:
        """[views, n, hidden] pooled embeddings, in fp32. delta: a perturbation of the embedding output, which
        `encode` takes as a second argument (Encode does; an encode for inference need not)."""
        out = encode(batch.inputs) if delta is None else encode(batch.inputs, delta)
        return self.pooled(out, batch)

    def pooled(self, out: BertOutput, batch: batching.TaskBatch) -> torch.Tensor:
        """[views, n, hidden] pooled embeddings of the encoder's output `out` on batch.inputs, in fp32."""
        return pool(out, batch.inputs, self.pooling).float().view(batch.views, len(batch), -1)

    @staticmethod
    def dropout_linear(p: float, width: int, out: int) -> nn.Sequential:
        """A head (dropout, linear); `apply_head` runs it."""
        return nn.Sequential(fnn.Dropout(p), nn.Linear(width, out))

    def apply_head(self, x: torch.Tensor, batch: batching.TaskBatch) -> torch.Tensor:
        """self.head (dropout_linear) on x [n, width], one row per example of `batch`: the dropout mask of a row
        is keyed by its example's position in the data (batch.index), as the encoder's (fastbert.ops.philox),
        so ranks sharing a batch draw the one-process masks."""
        dropout, linear = self.head
        return linear(dropout(x, batch.index.to(x.device)))

    def loss(self, encode: Encode, batch: batching.TaskBatch) -> torch.Tensor:
        return self.loss_on(self.embed(encode, batch), batch)

    @property
    def packable(self) -> bool:
        """Whether the loss is Task.loss, loss_on of one encoder pass's pooled embeddings of batch.inputs: then
        that pass may be shared with other tasks' batches (Encode.together; the training loop's pack_tasks)."""
        cls = type(self)
        return cls.loss is Task.loss and cls.embed is Task.embed  # the shared pass calls pooled, not embed

    def loss_on(self, e: torch.Tensor, batch: batching.TaskBatch) -> torch.Tensor:
        """The loss of pooled embeddings e [views, n, hidden] of `batch` against its labels."""
        raise NotImplementedError

    def outputs(self, e: torch.Tensor, batch: batching.TaskBatch) -> torch.Tensor:
        """The raw outputs of pooled embeddings e of `batch` (whose example indices key the head's dropout),
        fp32: logits [n, classes] (smoothness "kl") or scores [n] ("mse")."""
        raise NotImplementedError

    def predict(self, encode: Encode, batch: batching.TaskBatch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, encode: Encode, loader: batching.Loader, progress=None) -> tuple[dict, np.ndarray]:
        """(metrics, predictions in example order) over a loader's examples (no metrics without labels).
        Several ranks: each predicts its shares of the batches, and every rank gets all predictions."""
        index, preds = [np.zeros(0, dtype=np.int64)], []
        for b in loader:
            index.append(b.index.numpy())
            preds.append(self.predict(encode, b).cpu().numpy())
            if progress is not None:
                progress.update(1)
        shares = [s for s in collectives.gather_objects((np.concatenate(index), preds)) if s[1]]
        index = np.concatenate([i for i, _ in shares])
        preds = np.concatenate([p for _, ps in shares for p in ps])[np.argsort(index)]
        metrics = self.score(preds, np.array(loader.data.labels)) if loader.data.labels is not None else {}
        return metrics, preds
