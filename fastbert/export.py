"""Export a run for other libraries (offline, fp32 weights).

    python -m fastbert.export sentence-transformers RUN OUT
        a directory sentence_transformers.SentenceTransformer(OUT) loads: the encoder (transformers
        BertModel), its tokenizer, the run's pooling (mean | cls; pooler as cls + a tanh Dense layer) and
        max_length (sentence_bert_config.json). It embeds like MultitaskModel.encode.
    python -m fastbert.export hf RUN OUT --task sst
        a directory transformers.AutoModelForSequenceClassification loads with the task's logits: a
        single-sentence classifier or a cross-encoder pair task (classes, or one unclipped score for
        STS). Pooling "pooler" is BertForSequenceClassification itself (it classifies tanh(dense([CLS])));
        no transformers class pools by mean or takes [CLS] without that layer, so mean or cls pooling is
        written as model type "fastbert" with its class beside the weights (modeling_fastbert.py): load
        with trust_remote_code=True (without it transformers refuses, instead of loading the wrong
        function); the export says so in one line. A bi-encoder head (Sentence-BERT), an MLM or SimCSE
        head is not a sequence classifier: export sentence-transformers for the embeddings instead.

RUN: a run directory (its best/ checkpoint), a chain's root or a checkpoint directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
from safetensors.torch import save_file

from fastbert import pretrained
from fastbert.errors import UserError
from fastbert.model import BertModel
from fastbert.tokenizer import BertTokenizer

ST_POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "pooler": "pooling_mode_cls_token"}
_TOKENIZER_CONFIG = {"tokenizer_class": "BertTokenizer", "unk_token": "[UNK]",
                     "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
                     "model_max_length": 512}


class ExportError(UserError, ValueError):
    pass


class RemoteCodeNotice(UserWarning):
    """An export that transformers loads only with trust_remote_code=True (the CLI prints it as one line)."""


def _source(run: str) -> tuple[str, dict]:
    """(checkpoint directory, the run's settings: pooling, max_length, tasks)."""
    from fastbert.train import checkpoint

    src = checkpoint.resolve_dir(run)
    saved = checkpoint.saved_config(src) or {}
    return src, {"pooling": saved.get("pooling", "mean"), "max_length": int(saved.get("max_length", 128)), **saved}


def _empty_dir(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ExportError(f"{out} exists and is not an empty directory: pick a new one")
    os.makedirs(out, exist_ok=True)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _encoder_files(src: str, out: str, max_length: int) -> BertModel:
    """config.json + model.safetensors (a transformers BertModel, fp32) and the tokenizer files."""
    encoder = BertModel.from_pretrained(src)
    encoder.save_pretrained(out)
    BertTokenizer.from_pretrained(src).save_pretrained(out)
    with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
        norm = json.load(f).get("normalizer") or {}
    _write_json(os.path.join(out, "tokenizer_config.json"), {  # as tokenizer.json normalizes (transformers checks)
        **_TOKENIZER_CONFIG, "model_max_length": max_length, "do_lower_case": bool(norm.get("lowercase", True)),
        "strip_accents": norm.get("strip_accents"), "tokenize_chinese_chars": norm.get("handle_chinese_chars", True)})
    return encoder


def sentence_transformers(run: str, out: str) -> str:
    """Write a sentence-transformers model directory for the run's encoder; returns `out`."""
    src, cfg = _source(run)
    if cfg["pooling"] not in ST_POOLING:
        raise ExportError(f"pooling {cfg['pooling']!r} has no sentence-transformers form (known: {list(ST_POOLING)})")
    _empty_dir(out)
    encoder = _encoder_files(src, out, cfg["max_length"])
    hidden = encoder.config.hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    _write_json(os.path.join(out, "sentence_bert_config.json"), {"max_seq_length": cfg["max_length"],
                                                                 "do_lower_case": False})
    _write_json(os.path.join(out, "1_Pooling", "config.json"),
                {"word_embedding_dimension": hidden, **{m: False for m in set(ST_POOLING.values())},
                 ST_POOLING[cfg["pooling"]]: True})
    if cfg["pooling"] == "pooler":  # BERT's pooler: tanh(dense([CLS]))
        _write_json(os.path.join(out, "2_Dense", "config.json"), {
            "in_features": hidden, "out_features": hidden, "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh"})
        save_file({"linear.weight": encoder.pooler.dense.weight.detach().contiguous(),
                   "linear.bias": encoder.pooler.dense.bias.detach().contiguous()},
                  os.path.join(out, "2_Dense", "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    _write_json(os.path.join(out, "modules.json"), modules)
    _write_json(os.path.join(out, "config_sentence_transformers.json"), {"similarity_fn_name": "cosine"})
    return out


def _classifier(src: str, cfg: dict, task: str):
    """The task's head, rebuilt and loaded; an ExportError for heads that are no sequence classifier."""
    from fastbert import tasks as tasks_mod
    from fastbert.config import BertConfig
    from fastbert.train import checkpoint, config

    known = list(dict.fromkeys([*cfg.get("tasks", []), *(cfg.get("eval_tasks") or [])]))
    if task not in known:
        raise ExportError(f"the run has no head for task {task!r} (it has: {', '.join(known) or 'none'})")
    settings = config.task_settings(cfg, task)
    if settings["kind"] not in ("classify", "pair", "similarity"):
        raise ExportError(f"task {task!r} is a {settings['kind']} head, not a sequence classifier: export "
                          "sentence-transformers for the encoder's embeddings")
    head = tasks_mod.build(task, settings, BertConfig.from_json(src))
    if settings["kind"] != "classify" and not head.cross:
        raise ExportError(f"task {task!r} is a bi-encoder {settings['kind']} head (Sentence-BERT): transformers' "
                          "sequence classification has no form for it; export sentence-transformers for its "
                          "embeddings, or use fastbert.MultitaskModel")
    holder = torch.nn.Module()
    holder.tasks = torch.nn.ModuleDict({task: head})
    if task not in checkpoint.load_heads(src, holder):
        raise ExportError(f"{src}: no saved weights for the head of task {task!r}")
    return head, settings


_MODELING = '''"""Written by fastbert.export: BERT, {pooling} pooling, a linear classifier (as fastbert trained it).

Model type "fastbert" (not "bert"): transformers' own BertForSequenceClassification classifies
tanh(dense([CLS])), another function of the same weights; loading this directory needs trust_remote_code=True.
"""
import torch
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FastbertConfig(BertConfig):
    model_type = "fastbert"


class FastbertForSequenceClassification(BertPreTrainedModel):
    config_class = FastbertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        h = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      **kwargs).last_hidden_state
        if self.config.fastbert_pooling == "cls":
            pooled = h[:, 0]
        else:  # mean over real tokens
            mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids))[..., None].to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


def hf(run: str, out: str, task: str) -> str:
    """Write a transformers sequence-classification directory for one task's head; returns `out`. Pooling
    mean or cls: a RemoteCodeNotice says that loading it needs trust_remote_code=True."""
    src, cfg = _source(run)
    head, settings = _classifier(src, cfg, task)
    linear = head.head[-1]
    pooling = settings.get("pooling", cfg["pooling"])
    if pooling not in ("mean", "cls", "pooler"):
        raise ExportError(f"pooling {pooling!r} cannot be exported")
    _empty_dir(out)
    encoder = _encoder_files(src, out, int(settings.get("max_length", cfg["max_length"])))
    n = linear.out_features
    weights = pretrained.to_hf({k: v.detach() for k, v in encoder.state_dict().items()}, "bert.")
    if pooling != "pooler":
        weights = {k: v for k, v in weights.items() if not k.startswith("bert.pooler.")}
    weights.update({"classifier.weight": linear.weight.detach().contiguous(),
                    "classifier.bias": linear.bias.detach().contiguous()})
    save_file({k: v.float().contiguous() for k, v in weights.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    conf = {**encoder.config.to_dict(), "num_labels": n, "problem_type":
            "regression" if settings["kind"] == "similarity" else "single_label_classification",
            "id2label": {str(i): str(i) for i in range(n)}, "label2id": {str(i): i for i in range(n)}}
    if pooling == "pooler":
        conf["architectures"] = ["BertForSequenceClassification"]
    else:
        conf.update(model_type="fastbert", architectures=["FastbertForSequenceClassification"],
                    fastbert_pooling=pooling, auto_map={
                        "AutoConfig": "modeling_fastbert.FastbertConfig",
                        "AutoModelForSequenceClassification": "modeling_fastbert.FastbertForSequenceClassification"})
        with open(os.path.join(out, "modeling_fastbert.py"), "w", encoding="utf-8") as f:
            f.write(_MODELING.replace("{pooling}", pooling))
    _write_json(os.path.join(out, "config.json"), conf)
    if pooling != "pooler":
        warnings.warn(RemoteCodeNotice(
            f"{out}: pooling {pooling!r} has no transformers class (BertForSequenceClassification classifies "
            "tanh(dense([CLS])), fastbert's pooling 'pooler'): load it with AutoModelForSequenceClassification."
            f"from_pretrained({out!r}, trust_remote_code=True) (model type 'fastbert', modeling_fastbert.py)"),
            stacklevel=2)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fastbert.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    st = sub.add_parser("sentence-transformers", help="a SentenceTransformer directory (embeddings)")
    h = sub.add_parser("hf", help="a transformers sequence-classification directory (one task's head)")
    for s in (st, h):
        s.add_argument("run", help="a run directory, a chain's root or a checkpoint directory")
        s.add_argument("out", help="the new directory to write (must not hold files)")
    h.add_argument("--task", required=True, help="the task whose head to export (sst, a cross-encoder quora, ...)")
    args = p.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as notices:
            warnings.simplefilter("always", RemoteCodeNotice)
            if args.format == "hf":
                out = hf(args.run, args.out, args.task)
            else:
                out = sentence_transformers(args.run, args.out)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in notices:
        if issubclass(n.category, RemoteCodeNotice):
            print(f"note: {n.message}", file=sys.stderr)
        else:
            warnings.showwarning(n.message, n.category, n.filename, n.lineno)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
