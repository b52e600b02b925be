"""Run settings: defaults < YAML recipe < --key value overrides. The resolved dict is saved with the run.

Top-level keys are the settings below; a key named after a task holds that task's settings
(`quora: {encoder: cross}`, on the command line `--quora.encoder cross`), see fastbert.tasks.
"""
from __future__ import annotations

import copy
import os

import yaml

from fastbert import tasks as tasks_mod
from fastbert.errors import UserError

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")

DEFAULTS = {
    "stage": None,
    # model
    "init": None,  # checkpoint dir: a Hugging Face BERT or a fastbert run's best/last; None: packaged MiniLM
    "model": None,  # BertConfig fields for a randomly initialised encoder instead of `init` (tests, scratch)
    "backend": "auto",  # fastbert op backend: auto | reference | triton | cpu
    "unpad": True,  # padded batches run unpadded inside the encoder
    "packed": False,  # batches built packed (input_ids [T] + cu_seqlens), no padding at all
    "pooling": "mean",  # sentence embedding: mean | cls | pooler (every task's default)
    "max_length": 128,  # tokens per sequence (a pair counts once for a cross-encoder)
    # data
    "data_dir": None,  # None: $FASTBERT_DATA, else ../shared/data from the current dir or the repo root
    "skip_bad_rows": False,  # skip (and count in run.log) malformed rows instead of stopping
    "train_limit": None,  # training examples per task (an int, or {task: int}): a seeded random subset
    "eval_limit": None,  # dev examples per task, likewise (for quick runs; the dev table says so)
    # tasks and how they are combined
    "task": None,  # `single`: the one task (sets tasks: [task])
    "tasks": [],
    "eval_tasks": None,  # tasks evaluated on dev (None: tasks); heads not trained here come from init
    "routine": "additive",  # sequential | additive | parallel | weighted | stochastic | pcgrad
    "standardize": False,  # weighted/stochastic: loss improvements relative to the task's running loss
    "freeze_encoder": False,  # true, or [first_step, end_step): the encoder gets no gradient (per task too)
    # optimisation
    "optimizer": "auto",  # auto (fused_adamw with fastbert's compiled extension, else adamw) | fused_adamw
    #                       (fastbert.optim.FusedAdamW: fused clipping, fp32 master weights) | adamw (torch's fused)
    "lr": 2.0e-5,
    "head_lr": None,  # learning rate of the task heads (None: lr)
    "layer_decay": 1.0,  # layer-wise lr decay: layer i of L at lr * layer_decay ** (L - 1 - i), embeddings ** L
    "weight_decay": 0.01,
    "betas": [0.9, 0.999],
    "eps": 1.0e-8,
    "schedule": "linear",  # linear | cosine | constant, after `warmup`
    "warmup": 0.1,  # a fraction of the steps, or a step count if >= 1
    "max_grad_norm": 1.0,  # None: no clipping
    "batch_size": 32,  # per task, per step
    "eval_batch_size": 128,
    "epochs": 1.0,  # in the routine's epochs (see fastbert.train.routines)
    "max_steps": None,  # overrides epochs
    "precision": "auto",  # one of PRECISIONS below
    "device": "auto",
    "seed": 0,
    "threads": "auto",  # torch CPU threads: auto = the cores not already busy (sampled from /proc/stat), >= 1
    # the run
    "run_dir": None,  # None: runs/<stage>-<time>
    "resume": False,  # continue run_dir (or the newest runs/<stage>-*) from its last checkpoint
    "eval_every": None,  # steps between dev evaluations (None: once per epoch and at the end)
    "save_every": None,  # steps between checkpoints (None: at evaluations); always at the end and on Ctrl-C
    "log_every": 10,
    "progress": True,  # tqdm bars
    "predict": False,  # after training, write CS224N prediction files for dev and test (best checkpoint)
    "chain": None,  # `chain`: a list of stage settings run in order, each starting from the previous best
}

TRAINING_STAGES = ("pretrain", "nli", "contrastive", "single", "multitask")
STAGES = (*TRAINING_STAGES, "evaluate", "predict", "chain")

# precision: what each value runs (fastbert.train.loop.precision resolves auto and checks what a value needs)
PRECISIONS = {
    "bf16": "encoder (and MLM head) weights stored in bf16, no casts per forward; fp32 master weights and Adam "
            "states in fastbert.optim.FusedAdamW (cast_params); sentence heads, pooling sums and losses in fp32; "
            "checkpoints save the fp32 masters. Needs optimizer fused_adamw",
    "bf16-autocast": "fp32 weights under torch.autocast(bf16)",
    "fp32": "fp32 everywhere",
    "fp16": "CUDA only: fp16 autocast with loss scaling (torch.amp.GradScaler)",
    "auto": "bf16 on a CPU with bf16 (bf16-autocast there with optimizer adamw); bf16-autocast on CUDA with "
            "bf16, else fp16; fp32 on other CPUs",
}


class ConfigError(UserError, ValueError):
    """A bad setting or recipe: the message names the key, the value and what is allowed."""


def parse_value(text: str):
    """A command-line value: YAML (numbers, true/false, null, [lists], {maps}), with 1e-5 read as a float."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(argv: list[str]) -> dict:
    """--key value / --key=value / --flag (true); dotted keys nest; hyphens become underscores."""
    out: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"expected --key value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        set_dotted(out, key.replace("-", "_"), parse_value(value))
        i += 1
    return out


def set_dotted(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--{key}: {p} is not a section")
    d[last] = value


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge: `over` wins; sections merge key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_recipe(name_or_path: str) -> dict:
    """A recipe by path, or by name from fastbert/train/recipes (e.g. "multitask", "report1_best")."""
    path = name_or_path
    if not os.path.exists(path):
        packaged = os.path.join(RECIPES, name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
        if not os.path.exists(packaged):
            names = sorted(f[:-5] for f in os.listdir(RECIPES) if f.endswith(".yaml"))
            raise ConfigError(f"no recipe {name_or_path!r}: not a file, nor one of the packaged {names}")
        path = packaged
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings")
    return recipe


def resolve(stage: str, recipe: dict | None = None, overrides: dict | None = None) -> dict:
    """defaults < `recipe` (None: the stage's packaged recipe) < overrides, checked. A recipe is complete
    on its own: it does not inherit the stage's packaged recipe (whose budget is the default run's)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if recipe is None:
        packaged = os.path.join(RECIPES, f"{stage}.yaml")
        recipe = load_recipe(packaged) if os.path.exists(packaged) else {}
    if recipe.get("stage") not in (None, stage):
        raise ConfigError(f"the recipe is for stage {recipe['stage']!r}, not {stage!r}")
    cfg = merge(merge(DEFAULTS, recipe), overrides or {})
    cfg["stage"] = stage
    for layer in (overrides or {}, recipe):  # the last word on `task` / `tasks` wins
        if "task" in layer or "tasks" in layer:
            cfg["task"], cfg["tasks"] = layer.get("task"), layer["tasks"] if "tasks" in layer else []
            break
    if cfg["task"]:
        cfg["tasks"] = [cfg["task"]]
    if isinstance(cfg["tasks"], str):
        cfg["tasks"] = [t for t in cfg["tasks"].split(",") if t]
    if isinstance(cfg.get("eval_tasks"), str):
        cfg["eval_tasks"] = [t for t in cfg["eval_tasks"].split(",") if t]
    check(cfg)
    return cfg


def check(cfg: dict) -> None:
    names = set(cfg["tasks"]) | set(cfg.get("eval_tasks") or [])
    for key, value in cfg.items():
        if key in DEFAULTS:
            continue
        if key in tasks_mod.TASKS or key in names or (isinstance(value, dict) and "kind" in value):
            if not isinstance(value, dict):
                raise ConfigError(f"task settings {key!r} must be a mapping, got {value!r}")
            continue
        raise ConfigError(f"unknown setting {key!r} (not a setting nor a task; see fastbert/train/config.py)")
    if cfg["stage"] not in ("evaluate", "predict", "chain") and not cfg["tasks"]:
        raise ConfigError(f"stage {cfg['stage']!r} needs tasks (--tasks sst,quora,sts)")
    if cfg["stage"] == "single" and len(cfg["tasks"]) != 1:
        raise ConfigError(f"stage 'single' trains one task; got {cfg['tasks']} (use multitask)")


def task_settings(cfg: dict, name: str) -> dict:
    """Task `name`'s settings for this run: its registry row, the run-wide defaults and its section."""
    common = {"pooling": cfg["pooling"], "max_length": cfg["max_length"], "batch_size": cfg["batch_size"],
              "freeze_encoder": cfg["freeze_encoder"]}
    return tasks_mod.task_config(name, cfg.get(name), common)


def data_dir(cfg: dict) -> str:
    """cfg data_dir, else $FASTBERT_DATA, else the nearest shared/data beside the current directory or the
    repository root or one of their parents (../shared/data from a checkout, ../../shared/data from a
    worktree one level deeper)."""
    for source, d in (("data_dir", cfg.get("data_dir")), ("FASTBERT_DATA", os.environ.get("FASTBERT_DATA"))):
        if d:
            if not os.path.isdir(d):
                raise ConfigError(f"{source}={d} is not a directory")
            return os.path.abspath(d)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tried = []
    for start in (os.getcwd(), repo):
        d = os.path.dirname(os.path.abspath(start))
        while True:
            candidate = os.path.join(d, "shared", "data")
            if os.path.isdir(candidate):
                return candidate
            tried.append(candidate)
            if os.path.dirname(d) == d:
                break
            d = os.path.dirname(d)
    raise ConfigError(f"no data directory: set data_dir or FASTBERT_DATA (tried {sorted(set(tried))})")
