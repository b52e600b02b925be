"""Masked-language-model pretraining on any text (task sentences, CFIMDB, Yelp, plain text files).

Texts are tokenized as [CLS] text [SEP], concatenated and cut into blocks of `block_size` tokens.
Each time a block is seen, 15% of its non-special tokens are chosen (a fresh draw each time, fixed by
the batch's seed and the block's index, so the same however batches are shared between ranks): 80%
become [MASK], 10% a random token, 10% stay; the model predicts the originals. The head (dense + GELU +
LayerNorm + decoder tied to the word embeddings) runs only at chosen positions. The metric is
masked-token accuracy.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from fastbert import collectives
from fastbert.data import batching
from fastbert.model import BertMLMHead
from fastbert.tasks import losses
from fastbert.tasks.base import Task

DEFAULTS = {"block_size": 128, "mask_prob": 0.15, "holdout": 0.05,
            "sources": ["sst", "quora", "sts", "cfimdb", "yelp"]}


def chunk(ids: list[list[int]], block: int) -> list[list[int]]:
    stream = [t for seq in ids for t in seq]
    return [stream[i:i + block] for i in range(0, len(stream), block)]


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, p: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking: (inputs, labels) with labels -100 at unchosen positions.
    `special` [vocab] is True for ids never chosen ([CLS], [SEP], [PAD], ...)."""
    u = torch.rand(input_ids.shape, generator=generator)
    r = torch.rand(input_ids.shape, generator=generator)
    rand_tok = torch.randint(vocab_size, input_ids.shape, generator=generator)
    chosen = (u < p) & ~special[input_ids]
    labels = torch.where(chosen, input_ids, -100)
    out = torch.where(chosen & (r < 0.8), mask_id, input_ids)
    out = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, out)
    return out, labels


def _spans(inputs) -> list[tuple[int, int]]:
    """(first token, real tokens) of each sequence: offsets into a packed [T] batch, 0 in a padded one."""
    lengths = inputs.lengths.cpu().tolist()
    starts = inputs.cu_seqlens[:-1].cpu().tolist() if inputs.cu_seqlens is not None else [0] * len(lengths)
    return list(zip(starts, lengths))


class MaskedLM(Task):
    metric = "accuracy"

    def __init__(self, name, cfg, config):
        super().__init__(name, cfg, config)
        self.head = BertMLMHead(config)
        self.vocab_size = config.vocab_size
        self._special = self._mask_id = None

    def encode(self, examples, tokenizer, max_length):
        special = torch.zeros(max(self.vocab_size, tokenizer.vocab_size), dtype=torch.bool)
        special[list(tokenizer.special_ids)] = True
        self._special, self._mask_id = special, tokenizer.mask_id
        texts = [t for e in examples for t in e.texts]
        ids = [s for s, _ in tokenizer.encode(texts, truncation=False, max_length=1 << 30)]
        blocks = chunk(ids, self.cfg["block_size"])
        return batching.Encoded([((b, [0] * len(b)),) for b in blocks], None, [str(i) for i in range(len(blocks))])

    def _masked(self, batch):
        """Each sequence masked by its own draw, keyed by (batch seed, example index): the same masks
        however the batch is padded, packed or shared between ranks."""
        ids = batch.inputs.input_ids
        inputs, labels = ids.cpu().clone(), torch.full(ids.shape, -100, dtype=ids.dtype)
        for j, (start, span) in enumerate(_spans(batch.inputs)):
            g = torch.Generator().manual_seed(batching.mix(batch.seed, int(batch.index[j])))
            row = (j, slice(0, span)) if ids.dim() == 2 else slice(start, start + span)
            inputs[row], labels[row] = mask_tokens(inputs[row], self._special, self._mask_id, self.vocab_size,
                                                   self.cfg["mask_prob"], g)
        return dataclasses.replace(batch.inputs, input_ids=inputs.to(ids.device)), labels.to(ids.device)

    def _logits(self, encode, batch):
        inputs, labels = self._masked(batch)
        h = encode(inputs).last_hidden_state
        sel = labels.reshape(-1) != -100
        logits = self.head(h.reshape(-1, h.shape[-1])[sel], encode.word_embeddings)
        return logits.float(), labels.reshape(-1)[sel]

    def loss(self, encode, batch):
        logits, target = self._logits(encode, batch)
        return losses.cross_entropy(logits, target)

    @torch.no_grad()
    def evaluate(self, encode, loader, progress=None):
        correct = total = 0
        nll = 0.0
        for b in loader:
            logits, target = self._logits(encode, b)
            correct += int((logits.argmax(-1) == target).sum())
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            total += len(target)
            if progress is not None:
                progress.update(1)
        correct, nll, total = collectives.sum_([correct, nll, total])  # every rank's share of the dev blocks
        total = max(total, 1)
        return {"accuracy": correct / total, "loss": nll / total}, np.array([])
