"""The training workload the benchmarks time: real batches, the models (fastbert, its reference backend, Hugging
Face), the training-step Runner of each variant, and model FLOPs.

  FASTBERT_BENCH_QUICK=1                           quick mode: tiny model (also set by pytest --benchmark-disable)
  FASTBERT_DATA=DIR                                the data directory (default ../shared/data)

Real batches come from the CS224N SST / Quora / STS training files, sampled with a fixed seed, so a
benchmark sees their true length distribution; they are read by fastbert.data, as the driver reads them.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import random
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbert
from fastbert import BertConfig, BertModel, backend
from fastbert.data.readers import read_table
from fastbert.pretrained import to_hf
from fastbert.tokenizer import Batch
from fastbert.tasks import read_split, task_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FASTBERT_DATA", os.path.join(ROOT, "..", "shared", "data"))
QUICK = os.environ.get("FASTBERT_BENCH_QUICK", "0") not in ("", "0")  # also set by --benchmark-disable


def set_quick(on: bool) -> None:
    """Quick mode for the whole session (bench/conftest.py turns it on for --benchmark-disable); read QUICK after."""
    global QUICK
    QUICK = QUICK or on


# -- real data -----------------------------------------------------------------------------------------

def load_tasks(data_dir: str) -> dict[str, list[tuple]]:
    """task -> [(text, pair text or None, label)] from the CS224N training files (STS scores scaled to 0-1),
    read by the training driver's readers (malformed rows skipped, as the default run does)."""
    out = {}
    for name in ("sst", "quora", "sts"):
        rows = read_split(name, task_config(name), "train", data_dir, skipped=[])
        scale = 5.0 if name == "sts" else 1.0
        out[name] = [(e.texts[0], e.texts[1] if len(e.texts) > 1 else None,
                      e.label if name == "sst" else float(e.label) / scale) for e in rows]
    return out


PAD_MULTIPLE = 8  # the hf-*-pad8 baselines' padded length: a multiple of this (fewer distinct matmul shapes)


def pad_to_multiple(batch: Batch, multiple: int, pad_id: int) -> Batch:
    """A padded batch ([B, S] tensors) widened with pad tokens (attention mask 0) to S rounded up to `multiple`."""
    extra = -batch.input_ids.shape[1] % multiple
    return dataclasses.replace(batch, input_ids=F.pad(batch.input_ids, (0, extra), value=pad_id),
                               token_type_ids=F.pad(batch.token_type_ids, (0, extra)),
                               attention_mask=F.pad(batch.attention_mask, (0, extra)))


@dataclasses.dataclass
class LayoutBatch:
    """One real batch in three layouts: packed (what fastbert takes), padded to its longest sequence and padded to
    a multiple of PAD_MULTIPLE (what Hugging Face takes); the layouts are built before any timing."""
    task: str
    packed: Batch
    padded: Batch
    padded8: Batch
    labels: torch.Tensor

    @classmethod
    def collate(cls, task: str, tokenizer, encoded, labels: torch.Tensor) -> "LayoutBatch":
        padded = tokenizer.collate(encoded)
        return cls(task, tokenizer.collate(encoded, packed=True), padded,
                   pad_to_multiple(padded, PAD_MULTIPLE, tokenizer.pad_id), labels)

    @property
    def tokens(self) -> int:
        return int(self.packed.lengths.sum())

    def layout(self, name: str) -> Batch:
        """The batch in layout `name`: "packed", "padded" or "padded8"."""
        return getattr(self, name)

    def processed_tokens(self, layout: str) -> int:
        """Tokens a model runs in this layout, padding included."""
        return self.tokens if layout == "packed" else self.layout(layout).input_ids.numel()

    def to(self, device) -> "LayoutBatch":
        return LayoutBatch(self.task, self.packed.to(device), self.padded.to(device), self.padded8.to(device),
                         self.labels.to(device))


def real_batches(tasks, tokenizer, n: int, batch_size: int, seed: int = 0) -> list[LayoutBatch]:
    """n batches, tasks in turn (SST, Quora, STS, SST, ...), examples sampled without replacement,
    untruncated (up to 512 tokens): the data's own lengths."""
    rng = random.Random(seed)
    pools = {t: rng.sample(rows, len(rows)) for t, rows in tasks.items()}
    out = []
    for i in range(n):
        task = list(pools)[i % len(pools)]
        rows = [pools[task].pop() for _ in range(batch_size)]
        texts, pairs = [r[0] for r in rows], [r[1] for r in rows]
        enc = tokenizer.encode(texts, None if pairs[0] is None else pairs)
        labels = torch.tensor([r[2] for r in rows], dtype=torch.long if task == "sst" else torch.float32)
        out.append(LayoutBatch.collate(task, tokenizer, enc, labels))
    return out


def long_batch(data_dir, tokenizer, batch_size: int, seqlen: int) -> LayoutBatch:
    """batch_size sequences of exactly seqlen tokens cut from the running text of CFIMDB movie reviews."""
    rows = [(e.texts[0], e.label) for e in read_table(os.path.join(data_dir, "cs224n", "ids-cfimdb-train.csv"),
                                                       text=["sentence"], label="sentiment", num_labels=2)]
    stream, body = [], seqlen - 2
    for ids, _ in tokenizer.encode([r[0] for r in rows[: 4 * batch_size * seqlen // 200 + 8]]):
        stream += ids[1:-1]
        if len(stream) >= batch_size * body:
            break
    seqs = [[tokenizer.cls_id, *stream[i * body:(i + 1) * body], tokenizer.sep_id] for i in range(batch_size)]
    enc = [(s, [0] * len(s)) for s in seqs]
    labels = torch.tensor([int(r[1]) for r in rows[:batch_size]], dtype=torch.long)
    return LayoutBatch.collate("sst", tokenizer, enc, labels)


# -- the models and the training workload --------------------------------------------------------------

MODEL_SHAPES = ("minilm", "bert-base")


def model_config(name: str) -> BertConfig:
    """all-MiniLM-L6-v2 and bert-base shapes; in quick mode a one-layer, 64-wide model stands in for both."""
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {name!r}")
    if QUICK:
        return BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256)
    return BertConfig.from_json(fastbert.pretrained.default_path()) if name == "minilm" else BertConfig.bert_base()


def quick_skip(shape: str) -> None:
    if QUICK and shape != MODEL_SHAPES[0]:
        pytest.skip(f"quick mode runs the {MODEL_SHAPES[0]} row only (the same tiny model stands in for every shape)")


def model_weights(name: str) -> dict[str, torch.Tensor]:
    """fastbert state dict: the packaged all-MiniLM-L6-v2 for "minilm", a seeded random init otherwise."""
    torch.manual_seed(0)
    if name == "minilm" and not QUICK:
        return BertModel.from_pretrained().state_dict()
    return BertModel(model_config(name)).state_dict()


def hf_model(config: BertConfig, weights: dict[str, torch.Tensor]):
    """transformers.BertModel (SDPA attention) holding the same weights as a fastbert model."""
    import transformers

    cfg = transformers.BertConfig(**config.to_dict(), attn_implementation="sdpa")
    model = transformers.BertModel(cfg, add_pooling_layer=True)
    missing, unexpected = model.load_state_dict(to_hf(weights), strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing), (missing, unexpected)
    return model


def make_optimizer(params, kind: str, lr: float = 5e-5, weight_decay: float = 0.01):
    """kind "fastbert": fastbert.optim.FusedAdamW; kind "torch": torch.optim.AdamW(fused=True), the strongest
    stock baseline."""
    params = list(params)
    if kind == "fastbert":
        from fastbert.optim import FusedAdamW
        return FusedAdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


class TaskHeads(nn.Module):
    """The CS224N multitask heads on the pooled output: SST 5-way, Quora paraphrase logit, STS score."""

    def __init__(self, hidden: int):
        super().__init__()
        self.sst, self.quora, self.sts = nn.Linear(hidden, 5), nn.Linear(hidden, 1), nn.Linear(hidden, 1)

    def loss(self, task: str, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = getattr(self, task)(pooled.float())
        if task == "sst":
            return F.cross_entropy(out, labels)
        if task == "quora":
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), labels)
        return F.mse_loss(out.squeeze(-1), labels)


class Variant(NamedTuple):
    """What a benchmark variant runs. precision: the training driver's precision mode of that name (bf16,
    bf16-autocast or fp32; what each runs: fastbert/train/config.py), the same for every implementation;
    layout: the LayoutBatch layout it trains on (fastbert: packed; Hugging Face: padded, or padded8)."""
    impl: str  # fastbert | reference | hf | hf-compile
    precision: str
    layout: str


# fastbert, the default fast path, trains bf16 weights on packed batches (fp32 where the device has no bf16
# matmuls: see precision_of).
VARIANTS = {
    "fastbert": Variant("fastbert", "bf16", "packed"),
    "fastbert-bf16-autocast": Variant("fastbert", "bf16-autocast", "packed"),
    "fastbert-fp32": Variant("fastbert", "fp32", "packed"),
    "reference-fp32": Variant("reference", "fp32", "packed"),
    "reference-bf16": Variant("reference", "bf16-autocast", "packed"),
    "hf-fp32": Variant("hf", "fp32", "padded"),
    "hf-bf16": Variant("hf", "bf16-autocast", "padded"),
    "hf-bf16-pad8": Variant("hf", "bf16-autocast", "padded8"),
    "hf-bf16-compile": Variant("hf-compile", "bf16-autocast", "padded"),
}


NO_BF16 = ("this CPU has no bf16 matmul instructions (no AVX512-BF16 / AMX / AVX-512): a bf16 matmul runs a "
           "reference loop far slower than fp32, so fastbert trains in fp32 here (the driver's precision auto)")


def precision_of(variant: str, device: torch.device) -> str:
    """The precision a variant runs on `device`: its own, except that "fastbert" (bf16 weights) runs in fp32 on a
    device without bf16 matmuls, as the training driver's precision auto does."""
    p = VARIANTS[variant].precision
    return "fp32" if variant == "fastbert" and not backend.bf16_matmuls(device) else p


def skips_bf16(device: torch.device) -> bool:
    """Whether a timed run leaves bf16 work out on `device`: one without bf16 matmuls, outside quick mode."""
    return not QUICK and not backend.bf16_matmuls(device)


def timed_skip(variant: str, device: torch.device) -> str | None:
    """Why a timed run leaves `variant` out on `device` (None: it runs): on a device without bf16 matmuls, every
    bf16 variant (nothing a user would train with there) and fastbert-fp32 (the same as fastbert there).
    Quick mode runs every variant (it checks that each works, not how fast)."""
    if not skips_bf16(device):
        return None
    if variant == "fastbert-fp32":
        return "the same as fastbert on this device (no bf16 matmuls: fastbert trains in fp32)"
    return NO_BF16 if precision_of(variant, device) != "fp32" else None


class Runner:
    """One model variant with its task heads and optimizer: train steps and inference on LayoutBatches."""

    def __init__(self, variant: str, shape: str, device: torch.device, weights=None, precision: str | None = None):
        """precision: the variant's own where not given (precision_of)."""
        impl, _, self.layout = VARIANTS[variant]
        self.precision = precision or precision_of(variant, device)
        self.amp = torch.bfloat16 if self.precision == "bf16-autocast" else None
        self.variant, self.device = variant, device
        config = model_config(shape)
        weights = weights if weights is not None else model_weights(shape)
        if impl in ("fastbert", "reference"):
            self.model = BertModel(config, backend="auto" if impl == "fastbert" else "reference")
            self.model.load_state_dict(weights)
        else:
            self.model = hf_model(config, weights)
        self.model.to(device)
        self.forward = torch.compile(self.model, dynamic=True) if impl == "hf-compile" else self.model
        torch.manual_seed(1)
        self.heads = TaskHeads(config.hidden_size).to(device)
        self.config = config
        self.optimizer_kind = "fastbert" if impl == "fastbert" else "torch"
        self.opt = make_optimizer([*self.model.parameters(), *self.heads.parameters()], self.optimizer_kind)
        if self.precision == "bf16":  # the encoder in bf16, its fp32 values kept as the optimizer's masters
            self.opt.cast_params(torch.bfloat16, list(self.model.parameters()))
        gc.freeze()  # data and models set up so far live on: out of the collector's full passes, as the driver does

    def weights(self) -> list[torch.Tensor]:
        """The encoder's parameters as trained: the fp32 master copies where the optimizer keeps them."""
        return [self.opt.state[p].get("master_param", p).detach() for p in self.model.parameters()]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def pooled(self, b: LayoutBatch) -> torch.Tensor:
        return self.forward(**b.layout(self.layout).model_inputs()).pooler_output

    def train_step(self, b: LayoutBatch) -> torch.Tensor:
        self.model.train()
        with self.autocast():
            loss = self.heads.loss(b.task, self.pooled(b), b.labels)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.inference_mode()
    def infer(self, b: LayoutBatch) -> torch.Tensor:
        self.model.eval()
        with self.autocast():
            return self.pooled(b)

    def state_bytes(self) -> int:
        """Bytes held between steps: parameters and optimizer state (gradients are freed each step)."""
        tensors = [*self.model.parameters(), *self.heads.parameters()]
        tensors += [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)


def train_flops(config: BertConfig, lengths: list[int]) -> float:
    """Model FLOPs of one training step (forward + 2x for backward) over sequences of these real lengths:
    the encoder's matmuls (QKV, output, FFN) and attention (QK^T, PV); embeddings and heads left out."""
    return 3 * forward_flops(config, lengths)


def forward_flops(config: BertConfig, lengths: list[int]) -> float:
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens, sq = sum(lengths), sum(n * n for n in lengths)
    return n_layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * sq * h)
