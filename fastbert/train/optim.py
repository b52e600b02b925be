"""The optimizer (by name), its parameter groups (weight decay, layer-wise lr decay) and the lr schedule."""
from __future__ import annotations

import math
import re

import torch

from fastbert.errors import CheckpointError


def _adamw(groups, cfg):
    # torch's own fused kernel (CPU and CUDA): several times faster than its per-tensor loop on CPU
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                             weight_decay=cfg["weight_decay"], fused=True)


def _fused_adamw(groups, cfg):
    from fastbert.optim import FusedAdamW  # fastbert's fused kernels, gradient clipping inside the step

    return FusedAdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                      weight_decay=cfg["weight_decay"], max_grad_norm=cfg["max_grad_norm"])


# name -> (parameter groups, run settings) -> optimizer. An optimizer with a `max_grad_norm` clips the
# gradients itself (the loop then does not) and reports the norm as `grad_norm`.
OPTIMIZERS = {"adamw": _adamw, "fused_adamw": _fused_adamw}
SCHEDULES = ("linear", "cosine", "constant")  # see schedule()


def name(cfg: dict, device: torch.device) -> str:
    """The optimizer's name; auto: fused_adamw where fastbert's compiled kernels run on `device`, else adamw."""
    if cfg["optimizer"] == "auto":
        return "fused_adamw" if has_fused_kernels(device) else "adamw"
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg['optimizer']!r}; choose one of auto, {', '.join(OPTIMIZERS)}")
    return cfg["optimizer"]


def has_fused_kernels(device: torch.device) -> bool:
    from fastbert import _extension

    return _extension.cuda() is not None if device.type == "cuda" else _extension.has("adam_step")


def build(groups: list[dict], cfg: dict, device: torch.device) -> torch.optim.Optimizer:
    return OPTIMIZERS[name(cfg, device)](groups, cfg)


def load_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Load a state_dict saved by any optimizer of OPTIMIZERS into `opt` (another one, or another precision).

    Per parameter: a state without "step" (a parameter that never had a gradient: only a master copy, e.g.
    the pooler's) is dropped; an fp32 master copy ("master_param") is kept where `opt` keeps one (bf16
    weights), taken from `opt` itself when the saved state has none (its parameters hold the checkpoint's
    fp32 values), and dropped where `opt` keeps none. Each group keeps its own keys (torch's `fused`,
    fastbert's `decoupled_weight_decay`), with the saved values of the keys both have (lr, betas, ...)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    if len(ids) != len(params) or len(saved["param_groups"]) != len(opt.param_groups):
        raise CheckpointError(f"the saved optimizer state has {len(ids)} parameters in {len(saved['param_groups'])} "
                         f"groups; this model has {len(params)} in {len(opt.param_groups)}")
    state = {}
    for i, p in zip(ids, params):
        s = dict(saved["state"].get(i, {})) if "step" in saved["state"].get(i, {}) else {}
        master = opt.state.get(p, {}).get("master_param")
        if master is not None:
            s.setdefault("master_param", master)
        else:
            s.pop("master_param", None)
        if s:
            state[i] = s
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               **{k: v for k, v in sg.items() if k in g and k != "params"}, "params": sg["params"]}
              for g, sg in zip(opt.param_groups, saved["param_groups"])]
    opt.load_state_dict({"state": state, "param_groups": groups})


def clips_itself(opt: torch.optim.Optimizer) -> bool:
    return getattr(opt, "max_grad_norm", None) is not None


_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def param_groups(encoder: torch.nn.Module, heads: torch.nn.Module, cfg: dict) -> list[dict]:
    """Encoder layer i of L at lr * layer_decay ** (L - 1 - i), embeddings at lr * layer_decay ** L, the
    pooler at lr, heads at head_lr (default lr). No weight decay on biases and LayerNorm weights."""
    L, d = encoder.config.num_hidden_layers, cfg["layer_decay"]
    head_lr = cfg["head_lr"] if cfg["head_lr"] is not None else cfg["lr"]
    groups: dict[tuple, dict] = {}

    def add(p, lr):
        wd = 0.0 if p.ndim < 2 else cfg["weight_decay"]
        groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})["params"].append(p)

    for name, p in encoder.named_parameters():
        m = _LAYER.match(name)
        depth = int(m[1]) + 1 if m else (0 if name.startswith("embeddings.") else L)
        add(p, cfg["lr"] * d ** (L - depth))
    for name, p in heads.named_parameters():
        add(p, head_lr)
    return list(groups.values())


def schedule(cfg: dict, total_steps: int):
    """lr multiplier per step: linear warmup, then linear decay to 0, cosine decay, or constant."""
    warmup = cfg["warmup"]
    warm = int(warmup) if warmup >= 1 else int(round(warmup * total_steps))
    kind = cfg["schedule"]
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {kind!r}")

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return f
