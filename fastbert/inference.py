"""Use a trained run: classify, score and embed new text with its encoder, tokenizer and heads.

    model = fastbert.MultitaskModel.from_pretrained("runs/multitask-20250101-120000")
    model.predict("sst", ["a gorgeous film", "a mess"])            # class ids, tensor [2]
    model.predict("quora", [("How old are you?", "What is your age?")])
    model.predict_proba("sst", ["a gorgeous film"])                 # [1, 5]
    model.encode(["a sentence", "another"], normalize=True)         # [2, hidden] fp32
    model.similarity(["a cat"], ["a dog", "a car"])                 # cosine matrix [1, 2]

Inputs are tokenized as in training: each sequence (a pair is one sequence for a cross-encoder) is
truncated to the run's max_length tokens (longest-first for pairs). Batches are packed (no padding),
built from length-sorted inputs, and results come back in input order. The encoder runs in the run's
precision (bf16 weights where it trained in bf16) under torch.inference_mode; heads run in fp32.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fastbert import tasks as tasks_mod
from fastbert.data import batching
from fastbert.data.readers import Example

PREDICTABLE = ("classify", "pair", "similarity")  # task kinds with a head for new text (not MLM, SimCSE)
PROGRESS_MIN = 2048  # inputs from which a progress bar is shown (progress=None)


class _Encoder:
    """What a task calls to run the encoder on a Batch (inference: no dropout, no autograd)."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder

    def __call__(self, inputs):
        return self.encoder(**inputs.model_inputs())

    @property
    def word_embeddings(self) -> torch.Tensor:
        return self.encoder.embeddings.word_embeddings.weight


class MultitaskModel(nn.Module):
    """A run's encoder, tokenizer and trained heads, in eval mode. Build with from_pretrained."""

    def __init__(self, model, settings: dict, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.encoder, self.heads, self.tokenizer = model.encoder, model.tasks, model.tokenizer
        self.settings, self.device, self.dtype = settings, device, dtype
        self.pooling, self.max_length = settings["pooling"], int(settings["max_length"])
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
                        precision: str | None = None, backend: str = "auto") -> "MultitaskModel":
        """Load a run directory (its best/ checkpoint, else last/), a chain's root (its last link) or a
        checkpoint directory; None: the packaged all-MiniLM-L6-v2 (no heads).

        precision: None (the run's: bf16 weights where it trained in bf16 or bf16-autocast, else fp32),
        "fp32", "bf16" or "fp16". device: None (CUDA if available, else CPU). backend: fastbert's op backend.
        """
        from fastbert.pretrained import default_path
        from fastbert.train import checkpoint, config, loop, stages

        source = checkpoint.resolve_dir(path) if path is not None else default_path()
        saved = checkpoint.saved_config(source)
        cfg = config.resolve("evaluate", None, {"init": source, "backend": backend,
                                                **_trained_settings(saved)})
        names = _head_names(saved)
        with torch.random.fork_rng(devices=[]):
            model = stages.build(cfg if saved is None else {**saved, "backend": backend, "unpad": True},
                                 names, source=source)
        for name in model.untrained:  # a head neither trained in the run nor loaded: random, not usable
            del model.tasks[name]
        dev = torch.device(device) if device is not None else loop.device_of({"device": "auto"})
        dtype = _dtype(precision, saved, dev)
        model.encoder.to(dev, dtype)
        model.tasks.to(dev)
        return cls(model, saved or cfg, dev, dtype)

    @property
    def tasks(self) -> list[str]:
        """The tasks this model has heads for (predict's `task`)."""
        return list(self.heads)

    def _task(self, task: str):
        if task not in self.heads:
            known = ", ".join(self.heads) or "none (an encoder only: use encode / similarity)"
            raise ValueError(f"unknown task {task!r}; this model has heads for: {known}")
        return self.heads[task]

    def takes_pairs(self, task: str) -> bool:
        """Whether predict(task, ...) takes (sentence, sentence) pairs (else single sentences)."""
        return _arity(self._task(task)) == 2

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = False,
               progress: bool | None = None) -> torch.Tensor:
        """Sentence embeddings [N, hidden] (fp32, on the model's device) with the run's pooling; each text
        truncated to the run's max_length tokens. normalize: unit length (cosine = dot product)."""
        texts = _texts(texts, "encode")
        if not texts:
            return torch.zeros(0, self.encoder.config.hidden_size, device=self.device)
        loader = self._loader([Example(str(i), (t,), None) for i, t in enumerate(texts)], batch_size, cross=False)
        out = self._map(loader, self._embed, progress)
        return F.normalize(out, dim=-1) if normalize else out

    def _embed(self, batch) -> torch.Tensor:
        return tasks_mod.pool(self.encoder(**batch.inputs.model_inputs()), batch.inputs, self.pooling).float()

    @torch.inference_mode()
    def similarity(self, a: Sequence[str], b: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Cosine similarity matrix [len(a), len(b)] of the texts' embeddings."""
        return self.encode(a, batch_size, normalize=True) @ self.encode(b, batch_size, normalize=True).T

    @torch.inference_mode()
    def predict(self, task: str, inputs: Sequence, batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        """The task head's predictions [N], on the model's device: class ids (int64; SST 0-4, Quora 0/1)
        or scores (fp32; STS clipped to [0, 5]). inputs: sentences for a single-sentence task, (sentence,
        sentence) pairs for a pair task. Texts are truncated to the run's max_length tokens."""
        head = self._task(task)
        examples = _examples(head, task, inputs)
        if not examples:
            return torch.zeros(0, dtype=torch.float32 if head.metric == "pearson" else torch.long, device=self.device)
        loader = self._loader(examples, batch_size, head.cross)
        return self._map(loader, lambda b: head.predict(_Encoder(self.encoder), b), progress)

    @torch.inference_mode()
    def predict_proba(self, task: str, inputs: Sequence, batch_size: int = 64,
                      progress: bool | None = None) -> torch.Tensor:
        """Class probabilities [N, classes] (fp32) of a task with a softmax head (classification, pair
        classification with loss softmax or a cross-encoder)."""
        head = self._task(task)
        if not hasattr(head, "proba") or getattr(head, "head", None) is None:
            raise ValueError(f"task {task!r} has no class probabilities (its head is not a softmax classifier)")
        examples = _examples(head, task, inputs)
        if not examples:
            return torch.zeros(0, head.cfg["num_labels"], device=self.device)
        loader = self._loader(examples, batch_size, head.cross)
        return self._map(loader, lambda b: head.proba(_Encoder(self.encoder), b), progress)

    def _loader(self, examples: list[Example], batch_size: int, cross: bool) -> batching.Loader:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        data = batching.encode(examples, self.tokenizer, self.max_length, cross)
        return batching.Loader(data, self.tokenizer, int(batch_size), shuffle=False, packed=True)

    def _map(self, loader: batching.Loader, fn, progress: bool | None) -> torch.Tensor:
        """fn over the loader's (length-sorted) batches, results back in input order."""
        show = len(loader.data) >= PROGRESS_MIN if progress is None else progress
        parts, index = [], []
        for b in tqdm(loader, total=len(loader), disable=not show, file=sys.stderr, leave=False, dynamic_ncols=True):
            parts.append(fn(b.to(self.device)))
            index.append(b.index)
        order = torch.cat(index).argsort().to(self.device)
        return torch.cat(parts)[order]


def _texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} takes a list of texts, got a single string; wrap it in a list")
    if not isinstance(texts, Iterable):
        raise TypeError(f"{what} takes a list of texts, got {type(texts).__name__}")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{what}: input {bad} is a {type(texts[bad]).__name__}, not a string")
    return texts


def _examples(head, task: str, inputs) -> list[Example]:
    """Examples of the head's shape: one text (classify) or two (pair / similarity)."""
    k = _arity(head)
    takes = f"task {task!r} takes a list of {'sentences' if k == 1 else '(sentence, sentence) pairs'}"
    if isinstance(inputs, (str, tuple)) and not (k == 1 and isinstance(inputs, tuple)):
        raise TypeError(f"{takes}, got a single {type(inputs).__name__}; wrap it in a list")
    if not isinstance(inputs, Iterable):
        raise TypeError(f"{takes}, got {type(inputs).__name__}")
    out = []
    for i, x in enumerate(inputs):
        texts = (x,) if isinstance(x, str) else tuple(x) if isinstance(x, (list, tuple)) else None
        if texts is None or len(texts) != k or not all(isinstance(t, str) for t in texts):
            want = "a sentence (str)" if k == 1 else "a (sentence, sentence) pair"
            raise TypeError(f"task {task!r}: input {i} must be {want}, got {x!r:.80}")
        out.append(Example(str(i), texts, None))
    return out


def _arity(head) -> int:
    """Texts per input: 1 (classify) or 2 (pair, similarity)."""
    return 1 if head.cfg["kind"] == "classify" else 2


def _head_names(saved: dict | None) -> list[str]:
    """The tasks a checkpoint has heads for new text: those its run trained and evaluated, of PREDICTABLE kinds."""
    if not saved:
        return []
    names = dict.fromkeys([*saved.get("tasks", []), *(saved.get("eval_tasks") or [])])
    kind = lambda n: (saved.get(n) or {}).get("kind", tasks_mod.TASKS.get(n, {}).get("kind"))  # noqa: E731
    return [n for n in names if kind(n) in PREDICTABLE]


def _trained_settings(saved: dict | None) -> dict:
    return {k: saved[k] for k in ("pooling", "max_length") if saved and k in saved}


def _dtype(precision: str | None, saved: dict | None, device: torch.device) -> torch.dtype:
    from fastbert.train import loop

    if precision is None:
        if saved is None:
            return torch.float32
        try:
            precision = loop.precision({**saved, "precision": saved.get("precision", "auto")}, device)
        except ValueError:
            precision = "fp32"
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-autocast": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
    return dtypes[precision]


__all__ = ["MultitaskModel"]
