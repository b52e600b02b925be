"""Run settings: defaults < YAML recipe < --key value overrides. The resolved dict is saved with the run.

Top-level keys are the settings below; a key named after a task holds that task's settings
(`quora: {encoder: cross}`, on the command line `--quora.encoder cross`), see fastbert.tasks. RULES holds
each setting's type and range; resolve() checks them all before anything loads (stages.check_device the
device and precision on this machine).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Callable

import torch
import yaml

from fastbert import tasks as tasks_mod
from fastbert.backend import BACKENDS
from fastbert.config import BertConfig
from fastbert.data.batching import BATCHING
from fastbert.errors import UserError
from fastbert.malloc import MODES as MALLOC_MODES
from fastbert.tasks.base import POOLING
from fastbert.train.optim import OPTIMIZERS, SCHEDULES
from fastbert.train.routines import ROUTINES

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
    "skip_bad_rows": None,  # skip (and count in run.log) malformed rows; null: no (evaluate/predict: as the checkpoint)
    "train_limit": None,  # training examples per task (an int, or {task: int}): a seeded random subset
    "eval_limit": None,  # dev examples per task, likewise (for quick runs; the dev table says so)
    "batching": "bucketed",  # training batches: bucketed (similar lengths, little padding) | random (a plain
    #                          shuffle: mixed lengths, co-batched examples rarely meet again); see data.batching
    # tasks and how they are combined
    "task": None,  # `single`: the one task (sets tasks: [task])
    "tasks": [],
    "eval_tasks": None,  # tasks evaluated on dev (None: tasks); heads not trained here come from init
    "select_tasks": None,  # tasks whose dev mean picks the best checkpoint (None: the trained tasks; an
    #                        auxiliary task trained beside them need not count)
    "routine": "additive",  # sequential | additive | parallel | weighted | stochastic | pcgrad
    "standardize": False,  # weighted/stochastic: loss improvements relative to the task's running loss
    "freeze_encoder": False,  # true, or [first_step, end_step): the encoder gets no gradient (per task too)
    # pack_tasks: bigger matmuls and fewer launches for the same losses and gradients (other dropout draws),
    # holding every task's activations until one backward; a task runs its own pass where its encoder is
    # frozen, SMART applies, or it is MLM (fastbert.train.loop.Trainer.packs)
    "pack_tasks": True,  # additive / weighted: one encoder pass per step over every task's batch, not one each
    # SMART regularisation (fastbert.tasks.smart): task loss + weight * divergence of the outputs at the most
    # divergent perturbation of the embedding output within eps (noise: its start's std, `steps` ascent steps
    # of size `step`); the paper's eps, step, noise and steps, weight 0: off
    "smart": {"weight": 0.0, "eps": 1.0e-5, "step": 1.0e-3, "noise": 1.0e-5, "steps": 1},
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
    "malloc": "keep",  # freed host memory: keep (reused, no page faults; glibc only) | system (see fastbert.malloc)
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


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting may hold: `allowed` says it in words, `test(value)` checks it."""
    allowed: str
    test: Callable[[object], bool]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _or_null(null: str | None) -> str:
    return f", or null ({null})" if null else ""


def _int(lo: int, null: str | None = None) -> Rule:
    return Rule(f"an integer >= {lo}" + _or_null(null),
                lambda v: (null is not None and v is None) or (_is_int(v) and v >= lo))


def _number(lo: float, above: bool, null: str | None = None) -> Rule:
    return Rule(f"a number {'>' if above else '>='} {lo}" + _or_null(null),
                lambda v: (null is not None and v is None) or (_is_number(v) and (v > lo if above else v >= lo)))


def _one_of(choices, null: str | None = None) -> Rule:
    return Rule(f"one of {', '.join(choices)}" + _or_null(null),
                lambda v: (null is not None and v is None) or (isinstance(v, str) and v in choices))


def _text(null: str) -> Rule:
    return Rule("a string" + _or_null(null), lambda v: v is None or isinstance(v, str))


def _limit(v) -> bool:
    return v is None or (_is_int(v) and v >= 1) or (isinstance(v, dict) and all(
        isinstance(k, str) and (x is None or (_is_int(x) and x >= 1)) for k, x in v.items()))


def _freeze(v) -> bool:
    return v is None or isinstance(v, bool) or (
        isinstance(v, list) and len(v) == 2 and _is_int(v[0]) and v[0] >= 0 and (v[1] is None or _is_int(v[1])))


def _device(v) -> bool:
    return v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())


def _names(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _section(rules: dict[str, Rule]) -> Rule:
    """A mapping of the keys of `rules` (check() checks each value against its rule)."""
    return Rule(f"a mapping with keys among {', '.join(rules)}",
                lambda v: isinstance(v, dict) and all(k in rules and rules[k].test(x) for k, x in v.items()))


_BOOL = Rule("true or false", lambda v: isinstance(v, bool))
_LIMIT = Rule("an integer >= 1, a mapping {task: integer >= 1}, or null (all)", _limit)

# The keys of the settings that are mappings (`--smart.weight 1`), each with its rule
SECTIONS: dict[str, dict[str, Rule]] = {
    "smart": {"weight": _number(0, above=False), "eps": _number(0, above=True), "step": _number(0, above=True),
              "noise": _number(0, above=True), "steps": _int(1)},
}

# The type and range of every setting in DEFAULTS (a test checks that each has one); task names are checked
# against the tasks in check(), a task section's keys by fastbert.tasks (and these rules, for the shared ones).
RULES: dict[str, Rule] = {
    "stage": _one_of(STAGES, "set by the command"),
    "init": _text("the packaged MiniLM"),
    "model": Rule("a mapping of BertConfig fields, or null", lambda v: v is None or isinstance(v, dict)),
    "backend": _one_of(BACKENDS),
    "unpad": _BOOL,
    "packed": _BOOL,
    "pooling": _one_of(POOLING),
    "max_length": _int(1),
    "data_dir": _text("$FASTBERT_DATA or shared/data"),
    "skip_bad_rows": Rule("true, false, or null (false; evaluate / predict: the checkpoint's)",
                          lambda v: v is None or isinstance(v, bool)),
    "train_limit": _LIMIT,
    "eval_limit": _LIMIT,
    "batching": _one_of(BATCHING),
    "task": _text("no single task"),
    "tasks": Rule("a list of task names (or a comma-separated string)", _names),
    "eval_tasks": Rule("a list of task names, or null (the trained tasks)", lambda v: v is None or _names(v)),
    "select_tasks": Rule("a list of evaluated task names, or null (the trained tasks)",
                         lambda v: v is None or _names(v)),
    "routine": _one_of(ROUTINES),
    "standardize": _BOOL,
    "freeze_encoder": Rule("true, false, or [first_step >= 0, end_step or null]", _freeze),
    "pack_tasks": _BOOL,
    "smart": _section(SECTIONS["smart"]),
    "optimizer": _one_of(("auto", *OPTIMIZERS)),
    "lr": _number(0, above=False),  # 0: the weights stay as loaded (a checkpoint re-saved, a frozen baseline)
    "head_lr": _number(0, above=False, null="lr"),
    "layer_decay": _number(0, above=True),
    "weight_decay": _number(0, above=False),
    "betas": Rule("[beta1, beta2], each a number in [0, 1)",
                  lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)),
    "eps": _number(0, above=False),
    "schedule": _one_of(SCHEDULES),
    "warmup": _number(0, above=False),
    "max_grad_norm": _number(0, above=True, null="no clipping"),
    "batch_size": _int(1),
    "eval_batch_size": _int(1),
    "epochs": _number(0, above=True),
    "max_steps": _int(1, "epochs decides"),
    "precision": _one_of(PRECISIONS),
    "device": Rule("auto, cpu, cuda or cuda:<index>", _device),
    "seed": _int(0),
    "threads": Rule("auto, an integer >= 1, or null (torch's default)",
                    lambda v: v in ("auto", None) or (_is_int(v) and v >= 1)),
    "malloc": _one_of(MALLOC_MODES),
    "run_dir": _text("runs/<stage>-<time>"),
    "resume": _BOOL,
    "eval_every": _int(1, "once per epoch"),
    "save_every": _int(1, "at evaluations"),
    "log_every": _int(1),
    "progress": _BOOL,
    "predict": _BOOL,
    "chain": Rule("a list of stage settings, or null", lambda v: v is None or isinstance(v, list)),
}


def _fraction(closed_low: bool) -> Rule:
    return Rule(f"a number in {'[' if closed_low else '('}0, 1)",
                lambda v: _is_number(v) and (0 <= v if closed_low else 0 < v) and v < 1)


# The type and range of the settings of a task section (`quora: {...}`) that its kind's DEFAULTS hold
# (fastbert/tasks/<kind>.py; a test checks each has one); the kind's class checks how they combine (a
# cross-encoder's loss), the readers the data layout (train, text, label, ...). Shared keys (max_length,
# batch_size, pooling, freeze_encoder) follow RULES.
TASK_RULES: dict[str, Rule] = {
    "num_labels": _int(2),
    "dropout": _fraction(closed_low=True),
    "encoder": _one_of(("bi", "cross")),
    "loss": Rule("a loss name (see the task's kind)", lambda v: isinstance(v, str)),
    "margin": _number(0, above=False),
    "mnr_scale": _number(0, above=True),
    "threshold": Rule("a number, or null (the loss's default)", lambda v: v is None or _is_number(v)),
    "score_max": _number(0, above=True),
    "temperature": _number(0, above=True),
    "entailment": _int(0),
    "contradiction": _int(0),
    "block_size": _int(2),
    "mask_prob": _fraction(closed_low=False),
    "holdout": _fraction(closed_low=True),
    "sources": Rule("a list of task names or text files", _names),
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
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a YAML recipe ({' '.join(str(e).split())})") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings")
    return _floats(recipe)


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _floats(value):
    """`value` with the strings YAML 1.1 leaves unparsed that are floats (1e-5, written without a dot) as
    floats, as on the command line."""
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value) else value


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
    for key in ("eval_tasks", "select_tasks"):
        if isinstance(cfg.get(key), str):
            cfg[key] = [t for t in cfg[key].split(",") if t]
    check(cfg)
    return cfg


def check(cfg: dict) -> None:
    """Every setting against its rule (RULES), task sections and task names, before anything loads."""
    names = set(cfg["tasks"]) | set(cfg.get("eval_tasks") or [])
    for key, value in cfg.items():
        if key in DEFAULTS:
            check_value(key, value)
            continue
        if key in tasks_mod.TASKS or key in names or (isinstance(value, dict) and "kind" in value):
            if not isinstance(value, dict):
                raise ConfigError(f"task settings {key!r} must be a mapping, got {value!r}")
            for k, v in value.items():
                if k in RULES or k in TASK_RULES:
                    check_value(f"{key}.{k}", v, RULES.get(k) or TASK_RULES[k])
            continue
        raise ConfigError(f"unknown setting {key!r} (not a setting nor a task; see fastbert/train/config.py)")
    for key in ("task", "tasks", "eval_tasks", "select_tasks"):
        for name in [cfg[key]] if isinstance(cfg[key], str) else cfg[key] or []:
            if name not in tasks_mod.TASKS and "kind" not in (cfg.get(name) or {}):
                raise ConfigError(f"setting {key}: unknown task {name!r}; allowed: {', '.join(tasks_mod.TASKS)}, "
                                  f"or a task defined by a section with a `kind` ({name}: {{kind: classify, ...}})")
    check_tasks(cfg, [*cfg["tasks"], *(cfg.get("eval_tasks") or [])])
    outside = [t for t in cfg.get("select_tasks") or [] if t not in names]
    if outside and cfg["tasks"]:  # (a chain is checked link by link)
        raise ConfigError(f"setting select_tasks: {outside} not evaluated in this stage; allowed: the tasks and "
                          f"eval_tasks ({', '.join(sorted(names))})")
    for name in cfg.get("select_tasks") or []:
        s = task_settings(cfg, name) if name in names else None
        if s and (s["holdout"] == 0 if s["kind"] == "mlm" else not s.get("dev")):
            raise ConfigError(f"setting select_tasks: {name!r} has no dev data to choose the best checkpoint by "
                              f"({f'{name}.holdout is 0' if s['kind'] == 'mlm' else f'{name}.dev is not set'})")
    if cfg["stage"] not in ("evaluate", "predict", "chain") and not cfg["tasks"]:
        raise ConfigError(f"stage {cfg['stage']!r} needs tasks (--tasks sst,quora,sts)")
    if cfg["stage"] == "single" and len(cfg["tasks"]) != 1:
        raise ConfigError(f"stage 'single' trains one task; got {cfg['tasks']} (use multitask)")


_PROBE = BertConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4)


def check_tasks(cfg: dict, names: list[str]) -> None:
    """Each task's settings as its head takes them (encoder, loss, labels, ...): the head is built on a tiny
    stand-in encoder config, so nothing loads and the RNG is left as it was."""
    for name in dict.fromkeys(names):
        try:
            with torch.random.fork_rng(devices=[]):
                tasks_mod.build(name, task_settings(cfg, name), _PROBE)
        except (ValueError, TypeError, KeyError) as e:
            msg = " ".join(str(e).split())
            raise ConfigError(f"setting {msg if msg.startswith(name) else f'{name}: {msg}'}") from None


def check_value(key: str, value, rule: Rule | None = None) -> None:
    """ConfigError naming the key, the value and what is allowed, unless `value` follows the key's rule."""
    rule = rule or RULES[key]
    if key in SECTIONS and isinstance(value, dict):  # the offending key, by name
        for k, v in value.items():
            if k not in SECTIONS[key]:
                raise ConfigError(f"setting {key}.{k}: unknown; expected one of {', '.join(SECTIONS[key])}")
            check_value(f"{key}.{k}", v, SECTIONS[key][k])
    if not rule.test(value):
        raise ConfigError(f"setting {key}: {value!r} is not allowed; expected {rule.allowed}")


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
