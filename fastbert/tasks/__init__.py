"""The named tasks: which data files and columns each reads, and which kind of head it trains.

The reports' tasks come in five shapes, one module each: classify (one sentence -> class), pair
(sentence pair -> class; bi- or cross-encoder), similarity (sentence pair -> score), contrastive
(SimCSE triplets), mlm (masked-LM pretraining). A named task is a row of TASKS: a kind plus its data
(file paths relative to the data directory, column names, label range). A recipe may override any key
of a task (`quora: {encoder: cross}`) or define a new one (`mytask: {kind: classify, train: ...}`).
"""
from __future__ import annotations

import copy
import dataclasses
import os

from fastbert.data.readers import DataError, Example, read_table, read_text
from fastbert.tasks import classify, contrastive, mlm, pair, similarity
from fastbert.tasks.base import POOLING, Task, pool
from fastbert.tasks.classify import Classify
from fastbert.tasks.contrastive import Contrastive
from fastbert.tasks.mlm import MaskedLM
from fastbert.tasks.pair import PairClassify
from fastbert.tasks.similarity import Similarity


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of task: the Task class that trains it, its default settings, and how its data files' label
    column reads ("class": an integer class, "score": a float, None: no labels)."""
    task: type[Task]
    defaults: dict
    label: str | None


KINDS = {
    "classify": Kind(Classify, classify.DEFAULTS, label="class"),
    "pair": Kind(PairClassify, pair.DEFAULTS, label="class"),
    "similarity": Kind(Similarity, similarity.DEFAULTS, label="score"),
    "contrastive": Kind(Contrastive, contrastive.DEFAULTS, label="class"),
    "mlm": Kind(MaskedLM, mlm.DEFAULTS, label=None),
}

_CS = "cs224n/"
_NLI = {"text": ["premise", "hypothesis"], "label": "label", "num_labels": 3}
_SICK = {"train": "nli/SICK.txt", "dev": "nli/SICK.txt", "test": "nli/SICK.txt", "id": "pair_ID",
         "text": ["sentence_A", "sentence_B"], "split_column": "SemEval_set",
         "splits": {"train": "TRAIN", "dev": "TRIAL", "test": "TEST"}}

TASKS = {
    "sst": {"kind": "classify", "num_labels": 5, "train": _CS + "ids-sst-train.csv", "dev": _CS + "ids-sst-dev.csv",
            "test": _CS + "ids-sst-test-student.csv", "text": ["sentence"], "label": "sentiment", "id": "id"},
    # the CS224N quora-test-student.csv is not in the offline data: set quora.test to use one
    "quora": {"kind": "pair", "num_labels": 2, "train": _CS + "quora-train.csv", "dev": _CS + "quora-dev.csv",
              "text": ["sentence1", "sentence2"], "label": "is_duplicate", "id": "id"},
    "sts": {"kind": "similarity", "score_range": [0.0, 5.0], "train": _CS + "sts-train.csv", "dev": _CS + "sts-dev.csv",
            "test": _CS + "sts-test-student.csv", "text": ["sentence1", "sentence2"], "label": "similarity",
            "id": "id"},
    "cfimdb": {"kind": "classify", "num_labels": 2, "train": _CS + "ids-cfimdb-train.csv",
               "dev": _CS + "ids-cfimdb-dev.csv", "test": _CS + "ids-cfimdb-test-student.csv", "text": ["sentence"],
               "label": "sentiment", "id": "id"},
    "sst2": {"kind": "classify", "num_labels": 2, "train": "sst2/train.tsv", "dev": "sst2/dev.tsv",
             "text": ["sentence"], "label": "label"},
    "yelp": {"kind": "classify", "num_labels": 5, "train": "yelp/train.csv", "dev": "yelp/val.csv",
             "test": "yelp/test.csv", "text": ["text"], "label": "label", "id": "id", "delimiter": ",",
             "unescape": True},
    "paws": {"kind": "pair", "num_labels": 2, "train": "paws/dev.tsv", "text": ["sentence1", "sentence2"],
             "label": "label", "id": "id"},
    "snli": {"kind": "pair", "train": "nli/snli-validation.tsv", "dev": "nli/snli-test.tsv", **_NLI},
    "sick": {"kind": "pair", "num_labels": 3, "label": "entailment_label",
             "label_map": {"ENTAILMENT": 0, "NEUTRAL": 1, "CONTRADICTION": 2}, **_SICK},
    "sick_r": {"kind": "similarity", "label": "relatedness_score", "score_range": [1.0, 5.0], **_SICK},
    "simcse": {"kind": "contrastive", "train": "nli/snli-validation.tsv", "dev": "nli/snli-test.tsv", **_NLI},
    "mlm": {"kind": "mlm"},
}


def task_config(name: str, overrides: dict | None = None, common: dict | None = None) -> dict:
    """The full settings of task `name`: kind defaults < common (pooling, ...) < TASKS row < overrides."""
    row = copy.deepcopy(TASKS.get(name, {}))
    row.update(copy.deepcopy(overrides or {}))
    kind = row.get("kind")
    if kind not in KINDS:
        known = ", ".join(TASKS)
        raise ValueError(f"unknown task {name!r} (known: {known}); a new task needs a 'kind' in {list(KINDS)}"
                         if name not in TASKS else f"task {name!r}: kind must be one of {list(KINDS)}, got {kind!r}")
    return {**copy.deepcopy(KINDS[kind].defaults), **(common or {}), **row}


def build(name: str, cfg: dict, config) -> Task:
    return KINDS[cfg["kind"]].task(name, cfg, config)


def resolve_path(path: str, data_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(data_dir, path)


def read_split(name: str, cfg: dict, split: str, data_dir: str, skipped: list | None = None,
               labeled: bool = True) -> list[Example]:
    """The examples of one split ("train", "dev", "test") of a task; train adds cfg["extra_train"] tasks'."""
    if cfg["kind"] == "mlm":
        return _mlm_texts(cfg, data_dir, skipped) if split == "train" else []
    if not cfg.get(split):
        raise DataError(f"task {name!r} has no {split} file (set {name}.{split})")
    kw = {k: cfg[k] for k in ("delimiter", "label_map", "unescape") if cfg.get(k) is not None}
    where = {cfg["split_column"]: cfg["splits"][split]} if cfg.get("split_column") else None
    out = read_table(resolve_path(cfg[split], data_dir), text=cfg["text"], label=cfg.get("label"),
                     id=cfg.get("id"), label_kind=KINDS[cfg["kind"]].label, num_labels=cfg.get("num_labels"),
                     score_range=cfg.get("score_range"), where=where, require_label=labeled,
                     skipped=skipped, **kw)
    if split == "train":
        for extra in cfg.get("extra_train") or []:
            ecfg = task_config(extra)
            out += read_split(extra, ecfg, "train", data_dir, skipped)
    return out


def _mlm_texts(cfg, data_dir, skipped):
    """Text of every source: a task name (its train split's texts) or a path to a plain text file."""
    out = []
    for src in cfg["sources"]:
        if src in TASKS and src != "mlm":
            scfg = task_config(src)
            kw = {k: scfg[k] for k in ("delimiter", "unescape") if scfg.get(k) is not None}
            where = {scfg["split_column"]: scfg["splits"]["train"]} if scfg.get("split_column") else None
            out += read_table(resolve_path(scfg["train"], data_dir), text=scfg["text"], where=where,
                              skipped=skipped, **kw)
        else:
            out += read_text(resolve_path(src, data_dir), skipped)
    return out


__all__ = ["KINDS", "Kind", "POOLING", "TASKS", "Task", "build", "pool", "read_split", "task_config"]
