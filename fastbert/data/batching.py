"""Examples -> tokenized batches (length-bucketed, or random), padded to their longest sequence or packed.

Examples are tokenized once (Encoded). A Loader cuts them into batches whose order is a pure function
of (seed, epoch): shuffle, then sort each window of `bucket` batches' worth by length so a batch holds
sequences of similar length (little padding), then shuffle the batches. Bucketing has a price: a batch's
in-batch negatives (MNR, SimCSE) are all of one length, and the same examples meet again epoch after
epoch; the `batching` setting (BATCHING) chooses bucket 1, a plain shuffle, instead. A Stream walks a
Loader epoch after epoch; its position (epoch, index) is all a checkpoint needs to resume the data exactly.

Several ranks (`shard=(rank, world)`): the batches, their order and their seeds are the one-process
ones (global batches of `batch_size` examples); each rank takes a contiguous slice of every global
batch (its share, sizes within one of each other), padded or packed on its own. The position (epoch,
index) counts global batches, so a run resumes with any number of ranks.

A batch of a bi-encoder task holds all its texts in one tokenized batch, view-major: the first texts
of every example, then the second texts (one encoder call for u and v).

Dropout: a batch keys each sequence by its example's position in the data and its view (dropout_keys,
fastbert.ops.philox), and a TaskBatch's `index` keys a head's rows, so an example draws the same masks
whichever batch share, rank or packing it lands in: N ranks train with the one-process masks.

Several tasks' batches in one encoder pass (the training loop's packed multitask step): `pack` lays a
batch's sequences back to back and moves its dropout keys past those of the tasks before it (each task
uses keys 0 .. Loader.keys - 1), `concat` joins the packed batches into one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from fastbert.data.readers import Example
from fastbert.ops.padding import seqlens_to_cu
from fastbert.tokenizer import Batch, BertTokenizer

Seq = tuple[list[int], list[int]]  # (input ids, token type ids)

BUCKET = 50  # batches' worth of shuffled examples sorted by length together (training, length-bucketed)
# the `batching` setting -> bucket: length-bucketed batches (little padding), or random ones (a plain shuffle)
BATCHING = {"bucketed": BUCKET, "random": 1}


@dataclasses.dataclass
class Encoded:
    """A task's examples, tokenized: seqs[i] holds example i's `views` sequences."""
    seqs: list[tuple[Seq, ...]]
    labels: list | None
    ids: list[str]

    def __len__(self):
        return len(self.seqs)

    @property
    def views(self) -> int:
        return len(self.seqs[0]) if self.seqs else 0

    def lengths(self) -> np.ndarray:
        return np.array([max(len(s[0]) for s in views) for views in self.seqs])

    def subset(self, idx) -> "Encoded":
        return Encoded([self.seqs[i] for i in idx], None if self.labels is None else [self.labels[i] for i in idx],
                       [self.ids[i] for i in idx])


def encode(examples: Sequence[Example], tokenizer: BertTokenizer, max_length: int, cross: bool) -> Encoded:
    """cross: a pair becomes one sequence [CLS] a [SEP] b [SEP]; else each text is its own sequence."""
    k = len(examples[0].texts)
    if any(len(e.texts) != k for e in examples):
        raise ValueError("examples mix different numbers of texts")
    if cross and k == 2:
        seqs = [(s,) for s in tokenizer.encode([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                                               max_length=max_length)]
    else:
        cols = [tokenizer.encode([e.texts[v] for e in examples], max_length=max_length) for v in range(k)]
        seqs = list(zip(*cols))
    labels = [e.label for e in examples]
    return Encoded(seqs, None if any(x is None for x in labels) else labels, [e.id for e in examples])


@dataclasses.dataclass
class TaskBatch:
    inputs: Batch  # views * n sequences, view-major
    views: int
    labels: torch.Tensor | None  # [n] (int64 classes or fp32 scores)
    index: torch.Tensor  # [n] positions of the examples in their Encoded
    seed: int  # for per-batch randomness (MLM masks): fixed by (loader seed, epoch, batch)

    def __len__(self):
        return len(self.index)

    def to(self, device) -> "TaskBatch":
        return dataclasses.replace(self, inputs=self.inputs.to(device),
                                   labels=None if self.labels is None else self.labels.to(device))

    def packed(self, key_offset: int = 0) -> "TaskBatch":
        """This batch with its inputs packed (`pack`) and their dropout keys moved up by key_offset."""
        return dataclasses.replace(self, inputs=pack(self.inputs, key_offset))


class Loader:
    """Batches of one task's Encoded examples, in an order fixed by (seed, epoch)."""

    def __init__(self, data: Encoded, tokenizer: BertTokenizer, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, bucket: int = BUCKET, packed: bool = False, shard: tuple[int, int] = (0, 1)):
        if len(data) == 0:
            raise ValueError("no examples to batch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rank, world = shard
        if shuffle and batch_size % world:
            raise ValueError(f"batch_size {batch_size} does not divide by the {world} ranks: the global batch "
                             f"is shared equally (use a multiple of {world})")
        self.data, self.tokenizer, self.batch_size = data, tokenizer, batch_size
        self.shuffle, self.seed, self.bucket, self.packed = shuffle, seed, bucket, packed
        self.rank, self.world = rank, world
        self._lengths = data.lengths()

    def __len__(self) -> int:
        n = len(self.data)
        short = self.shuffle and 0 < n % self.batch_size < self.world  # a last batch some rank has no share of
        return n // self.batch_size + int(n % self.batch_size > 0 and not short)

    def order(self, epoch: int) -> list[np.ndarray]:
        """Every batch of `epoch`, as arrays of example positions."""
        n, bs = len(self.data), self.batch_size
        if not self.shuffle:  # evaluation: longest first, for the least padding
            idx = np.argsort(-self._lengths, kind="stable")
            return [idx[i:i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, epoch])
        idx = rng.permutation(n)
        if self.bucket > 1:
            window = bs * self.bucket
            idx = np.concatenate([w[np.argsort(self._lengths[w], kind="stable")]
                                  for w in np.split(idx, range(window, n, window))])
        batches = [idx[i:i + bs] for i in range(0, n, bs)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return [b for b in batches if len(b) >= self.world]  # training: every rank needs a share

    @property
    def keys(self) -> int:
        """How many dropout keys its sequences use: 0 .. keys - 1 (sequence_keys)."""
        return len(self.data) * self.data.views

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch."""
        return idx if self.world == 1 else np.array_split(idx, self.world)[self.rank]

    def batch(self, idx: np.ndarray, seed: int = 0) -> TaskBatch:
        """The TaskBatch of examples `idx` (this rank's share of a global batch; seed: the global batch's)."""
        seqs = [self.data.seqs[i] for i in idx]
        views = self.data.views
        flat = [ex[v] for v in range(views) for ex in seqs]
        labels = None
        if self.data.labels is not None:
            values = [self.data.labels[i] for i in idx]
            labels = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], float) else torch.long)
        inputs = dataclasses.replace(self.tokenizer.collate(flat, packed=self.packed),
                                     dropout_keys=sequence_keys(idx, views))
        return TaskBatch(inputs, views, labels, torch.as_tensor(idx, dtype=torch.long), seed)

    def __iter__(self):
        """One epoch (epoch 0) of this rank's shares; a rank with no share of a batch skips it (evaluation)."""
        for i, idx in enumerate(self.order(0)):
            mine = self.share(idx)
            if len(mine):
                yield self.batch(mine, seed=mix(self.seed, 0, i))


def sequence_keys(idx: np.ndarray, views: int) -> torch.Tensor:
    """int64 [views * len(idx)], view-major as a batch's sequences: example idx[e]'s view v has key idx[e] * views + v,
    unique within a data set."""
    idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return (idx[None, :] * views + torch.arange(views)[:, None]).reshape(-1)


def pack(inputs: Batch, key_offset: int = 0) -> Batch:
    """`inputs` packed (input_ids [T] + cu_seqlens: a padded batch's real tokens back to back, sequence after
    sequence), the dropout keys (default: the sequences' positions, as BertModel's) plus key_offset."""
    n = len(inputs.lengths)
    keys = inputs.dropout_keys if inputs.dropout_keys is not None else torch.arange(n, device=inputs.lengths.device)
    keys = keys + key_offset
    if inputs.cu_seqlens is not None:
        return dataclasses.replace(inputs, dropout_keys=keys)
    real = inputs.attention_mask.bool()  # right-padded (collate): row-major order is sequence order
    return Batch(inputs.input_ids[real], inputs.token_type_ids[real], None, inputs.lengths,
                 seqlens_to_cu(inputs.lengths), int(inputs.lengths.max()) if n else 0, keys)


def concat(parts: Sequence[Batch]) -> Batch:
    """Packed batches as one packed batch, their sequences in order; every part needs dropout keys (`pack`)."""
    lengths = torch.cat([p.lengths for p in parts])
    return Batch(torch.cat([p.input_ids for p in parts]), torch.cat([p.token_type_ids for p in parts]), None,
                 lengths, seqlens_to_cu(lengths), max(p.max_seqlen for p in parts),
                 torch.cat([p.dropout_keys for p in parts]))


def mix(*xs: int) -> int:
    return int(np.random.SeedSequence([int(x) for x in xs]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class Stream:
    """Endless batches from a Loader, epoch after epoch. state_dict() = the position (epoch, index)."""

    def __init__(self, loader: Loader):
        self.loader, self.epoch, self.index = loader, 0, 0
        self._order, self._order_epoch = None, None

    def __len__(self) -> int:
        return len(self.loader)

    def next(self) -> TaskBatch:
        if self.index >= len(self.loader):
            self.epoch, self.index = self.epoch + 1, 0
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self.loader.order(self.epoch), self.epoch
        idx = self.loader.share(self._order[self.index])
        b = self.loader.batch(idx, seed=mix(self.loader.seed, self.epoch, self.index))
        self.index += 1
        return b

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
