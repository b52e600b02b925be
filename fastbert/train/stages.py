"""The stages: pretrain, nli, contrastive, single, multitask (training), evaluate, predict, chain.

Every training stage is the same thing with different tasks (see the recipes): build the encoder
(from `init`, a Hugging Face BERT directory or a fastbert checkpoint, else the packaged MiniLM) and
one head per task (heads found in `init` are loaded), read and tokenize the data, run the loop, print
the dev table of the best checkpoint. Python API:

    from fastbert.train import config, stages
    stages.train(config.resolve("multitask", overrides={"max_steps": 100}))
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
import time
import zlib

import numpy as np
import torch

from fastbert import _extension, malloc
from fastbert import tasks as tasks_mod
from fastbert._io import atomic_write
from fastbert.config import BertConfig
from fastbert.data.batching import BATCHING, Encoded, Loader
from fastbert.errors import CheckpointError, RunDirError
from fastbert.model import BertModel
from fastbert.pretrained import default_path
from fastbert.tasks import pair as pair_task
from fastbert.tokenizer import BertTokenizer
from fastbert.train import checkpoint, config, distributed, lock, loop, optim
from fastbert.train.run import Run, default_dir, dev_table, open_run

# CS224N submission files: task -> (file prefix, header column)
CS224N_FILES = {"sst": ("sst", "Predicted_Sentiment"), "quora": ("para", "Predicted_Is_Paraphrase"),
                "sts": ("sts", "Predicted_Similiarity")}  # [sic]: the starter code's spelling


def _seed(cfg: dict, name: str) -> int:
    return zlib.crc32(f"{name}:{cfg['seed']}".encode())


def _limit(cfg: dict, key: str, name: str):
    v = cfg[key]
    return v.get(name) if isinstance(v, dict) else v


def _subset(data: Encoded, n, seed) -> Encoded:
    return _split(data, n, seed)[0]


def _split(data: Encoded, n, seed) -> tuple[Encoded, Encoded | None]:
    """(a seeded random subset of n examples, in file order, the others): (data, None) when n is None or
    not below len(data)."""
    if n is None or n >= len(data):
        return data, None
    chosen = np.sort(np.random.default_rng(seed).choice(len(data), int(n), replace=False))
    return data.subset(chosen), data.subset(np.setdiff1d(np.arange(len(data)), chosen))


def build(cfg: dict, names: list[str], source: str | None = None) -> loop.Model:
    """Encoder + tokenizer + a head per task. source: a checkpoint to start from (default cfg init)."""
    source = source or (checkpoint.resolve_dir(cfg["init"]) if cfg["init"] else None)
    torch.manual_seed(cfg["seed"])
    if source is None and cfg["model"]:  # a randomly initialised encoder (tests, scratch runs)
        encoder = BertModel(BertConfig(**cfg["model"]), backend=cfg["backend"], unpad=cfg["unpad"])
    else:
        encoder = BertModel.from_pretrained(source, backend=cfg["backend"], unpad=cfg["unpad"])
    tok_dir = source if source and any(os.path.exists(os.path.join(source, f))
                                       for f in ("tokenizer.json", "vocab.txt")) else default_path()
    tokenizer = BertTokenizer.from_pretrained(tok_dir)
    if tokenizer.vocab_size > encoder.config.vocab_size:
        raise ValueError(f"the tokenizer ({tok_dir}) has {tokenizer.vocab_size} tokens, the encoder "
                         f"{encoder.config.vocab_size}")
    saved = checkpoint.saved_config(source) if source else None
    heads = {name: tasks_mod.build(name, head_settings(cfg, saved, name), encoder.config) for name in names}
    model = loop.Model(encoder, heads, tokenizer)
    loaded = checkpoint.load_heads(source, model) if source else []
    model.untrained = [n for n in names if n not in loaded and n not in cfg["tasks"]
                       and any(True for _ in model.tasks[n].parameters())]
    return model


def check_lengths(cfg: dict, names: list[str], source: str | None) -> None:
    """Every task's max_length within the encoder's position embeddings (its config read, nothing loaded)."""
    if source is None and cfg["model"]:
        try:
            limit = BertConfig(**cfg["model"]).max_position_embeddings
        except (TypeError, ValueError) as e:
            raise config.ConfigError(f"setting model: {cfg['model']!r}: {e}") from None
    else:
        try:
            limit = BertConfig.from_json(source or default_path()).max_position_embeddings
        except ValueError as e:  # a truncated or hand-edited config.json
            raise CheckpointError(str(e)) from None
    origin = source or ("setting model" if cfg["model"] else "the packaged MiniLM")
    for name in names:
        n = config.task_settings(cfg, name)["max_length"]
        if n > limit:
            key = f"{name}.max_length" if "max_length" in (cfg.get(name) or {}) else "max_length"
            raise config.ConfigError(f"setting {key}: {n} is beyond the encoder's {limit} positions ({origin}); "
                                     f"expected an integer in 1..{limit}")


def check_resumable(cfg: dict, resume: str) -> None:
    """The settings a checkpoint's trainer state is made of (data positions per task in the batch order
    `batching` makes, the routine's state, the best score so far) are the run's: a resume cannot change them."""
    saved = checkpoint.saved_config(resume) or {}
    if saved:  # select_tasks made the saved best's score (a checkpoint from before the setting: None)
        saved = {"select_tasks": None, **saved}
    for key in ("tasks", "routine", "batching", "select_tasks"):
        if key in saved and saved[key] != cfg.get(key):
            raise config.ConfigError(f"setting {key}: {cfg[key]!r} is not the resumed run's {saved[key]!r} "
                                     f"({resume}); resume with it, or start a new run from it with --init {resume}")


# what makes a head: a checkpoint's head keeps these; other task settings (data files, columns, max_length)
# may come from this run's settings
HEAD_KEYS = ("kind", "encoder", "loss", "num_labels", "pooling", "score_max", "margin", "mnr_scale")


def head_settings(cfg: dict, saved: dict | None, name: str) -> dict:
    """Task `name`'s settings. A task this run trains, or one the checkpoint (settings `saved`) has no head
    for: this run's. A head the checkpoint has: its HEAD_KEYS from the checkpoint, the rest from this run's
    task section over the checkpoint's; asking for another head (`--sts.encoder cross` on a bi-encoder
    head) is a ConfigError."""
    trains = name in cfg["tasks"] and cfg.get("stage") not in ("evaluate", "predict")
    if not saved or trains or name not in _eval_names(saved):
        return config.task_settings(cfg, name)
    trained = config.task_settings(saved, name)
    asked = cfg.get(name) or {}
    for key in HEAD_KEYS:
        if key in asked and asked[key] != trained.get(key):
            raise config.ConfigError(f"task {name!r}: the checkpoint's head has {key} {trained.get(key)!r}, "
                                     f"not {asked[key]!r} ({name}.{key}); evaluate the head it has, or train one")
    return {**trained, **asked}


def _encode(model, name, examples):
    task = model.tasks[name]
    return task.encode(examples, model.tokenizer, task.cfg["max_length"])


def load_data(cfg: dict, model: loop.Model, run: Run | None, train: list[str], evaluate: list[str],
              splits=("dev",)) -> tuple[dict, dict]:
    """(train loaders, {split: {task: loader}}) with bad rows raised or, with skip_bad_rows, logged. Under
    torchrun every loader yields this rank's share of each batch."""
    shard = (distributed.rank(), distributed.world())
    ddir = config.data_dir(cfg)
    log = run.log if run else print

    def read(name, split, labeled=True):
        skipped = [] if cfg["skip_bad_rows"] else None
        ex = tasks_mod.read_split(name, model.tasks[name].cfg, split, ddir, skipped, labeled)
        if skipped:
            log(f"{name} {split}: skipped {len(skipped)} bad rows: " + "; ".join(skipped[:5])
                + (" ..." if len(skipped) > 5 else ""))
            if run:
                run.record({"event": "skipped_rows", "task": name, "split": split, "count": len(skipped),
                            "rows": skipped})
        return ex

    loaders, held_out = {}, {}
    for name in train:
        s = model.tasks[name].cfg
        # limits count what the task trains on (SimCSE triplets, MLM blocks), so they apply after encoding
        data, left_out = _split(_encode(model, name, read(name, "train")), _limit(cfg, "train_limit", name),
                                _seed(cfg, name))
        if s["kind"] == "mlm":  # dev: a held-out share of the blocks
            n_dev = max(1, int(round(s["holdout"] * len(data)))) if s["holdout"] > 0 and len(data) > 1 else 0
            order = np.random.default_rng(_seed(cfg, name)).permutation(len(data))
            held_out[name], data = data.subset(np.sort(order[:n_dev])), data.subset(np.sort(order[n_dev:]))
        loaders[name] = Loader(data, model.tokenizer, s["batch_size"], shuffle=True, seed=_seed(cfg, name),
                               bucket=BATCHING[cfg["batching"]], packed=cfg["packed"], shard=shard)
        _set_calibration(cfg, model, name, data, left_out, run)
        log(f"{name}: {len(data)} training examples, {len(loaders[name])} batches of {s['batch_size']}")
    out = {}
    for split in splits:
        out[split] = {}
        for name in evaluate:
            s = model.tasks[name].cfg
            if s["kind"] == "mlm":
                data = held_out.get(name) if split == "dev" else None
                if not data:
                    continue
            elif not s.get(split):
                log(f"{name}: no {split} file, not evaluated")
                continue
            else:
                data = _encode(model, name, read(name, split, labeled=split != "test"))
                if split == "dev":  # test predictions are always complete
                    data = _subset(data, _limit(cfg, "eval_limit", name), _seed(cfg, name))
            out[split][name] = Loader(data, model.tokenizer, cfg["eval_batch_size"], shuffle=False,
                                      seed=_seed(cfg, name), packed=cfg["packed"], shard=shard)
    return loaders, out


def _set_calibration(cfg: dict, model: loop.Model, name: str, trained: Encoded, left_out: Encoded | None,
                     run: Run | None) -> None:
    """A task that picks its decision threshold on labelled training pairs (pair: cosine losses) gets a seeded
    slice of up to CALIBRATION of them, in evaluation batches: pairs of the training file the run does not
    train on (train_limit left them out) where there are as many as the trained ones would give, else
    trained pairs. Where it was chosen goes to run.log and metrics.jsonl (event "calibration")."""
    task = model.tasks[name]
    if not getattr(task, "calibrates", False):
        return
    held_out = left_out is not None and len(left_out) >= min(pair_task.CALIBRATION, len(trained))
    part = _subset(left_out if held_out else trained, pair_task.CALIBRATION, _seed(cfg, name) + 1)
    task.calibration = Loader(part, model.tokenizer, cfg["eval_batch_size"], shuffle=False, packed=cfg["packed"])
    task.threshold_origin = f"chosen on {len(part)} {'held-out ' if held_out else ''}training pairs"
    if run:
        run.log(f"{name}: decision threshold {task.threshold_origin}")
        run.record({"event": "calibration", "task": name, "pairs": len(part), "held_out": held_out})


def _eval_names(cfg: dict, saved: dict | None = None) -> list[str]:
    """The tasks trained, then those evaluated (eval_tasks, else those of the checkpoint's own run)."""
    extra = cfg.get("eval_tasks") or (_eval_names(saved) if saved else [])
    return list(dict.fromkeys([*cfg["tasks"], *extra]))


def set_threads(cfg: dict) -> int:
    """torch's CPU threads. "auto": the idle cores, shared equally by the ranks torchrun starts on this
    machine. On a shared machine a thread per core runs several times slower than one thread (OpenMP
    threads wait on each other's descheduled peers)."""
    n = cfg["threads"]
    if n == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, (cores - int(round(busy_cores()))) // distributed.detect().local_world)
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def busy_cores(window: float = 0.5) -> float:
    """Cores other processes keep busy, sampled from /proc/stat over `window` seconds (this process is
    idle meanwhile). Not the load average: it lags by a minute, so right after `scripts/setup.sh` it
    still counts the compilers. Elsewhere (no /proc/stat), the load average."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4]

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpus = os.cpu_count() or 1
    return 0.0 if total1 <= total0 else cpus * (1 - (idle1 - idle0) / (total1 - total0))


def _run_dir(cfg: dict) -> tuple[str, str | None]:
    """(run directory, checkpoint to resume from)."""
    path = cfg["run_dir"] or default_dir(cfg["stage"], cfg["resume"])
    last = checkpoint.find_last(path)
    if last and not cfg["resume"]:
        raise RunDirError(f"{path} holds checkpoints already: --resume continues it, or pick another --run_dir")
    return path, last if cfg["resume"] else None


def check_device(cfg: dict) -> None:
    """The device exists here, and the precision runs on it with the optimizer (before anything loads)."""
    device = cfg["device"]
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device[5:]) if ":" in device else 0
        if index >= count:
            raise config.ConfigError(f"setting device: {device!r} is not available here ({count} CUDA devices); "
                                     "expected auto or cpu" + (f", or cuda:0..cuda:{count - 1}" if count else ""))
    try:
        loop.precision(cfg, loop.device_of(cfg))
    except ValueError as e:
        raise config.ConfigError(f"setting precision: {cfg['precision']!r} is not allowed here: {e}") from None


def locked(stage):
    """The stage, once torchrun's process group is joined (if any) and the device checked, with its run
    directory (rank 0's choice) locked while it runs by rank 0: two runs never share a directory."""
    @functools.wraps(stage)
    def run(cfg: dict) -> dict:
        check_device(cfg)
        cfg = _join(cfg)
        set_threads(cfg)
        if cfg["malloc"] == "keep" and not malloc.configure("keep") and distributed.is_main():
            print("note: malloc keep does nothing here (not glibc, or glibc refused the thresholds)", file=sys.stderr)
        path = distributed.broadcast_object(cfg["run_dir"] or default_dir(cfg["stage"], cfg.get("resume", False)))
        with lock.held(path) if distributed.is_main() else contextlib.nullcontext():
            return stage({**cfg, "run_dir": path})

    return run


def _join(cfg: dict) -> dict:
    """Join torchrun's process group, if any (each rank on its own GPU): the settings with this rank's device."""
    env, device = distributed.init(loop.device_of(cfg))
    return {**cfg, "device": str(device)} if env.distributed else cfg


def _check_shares(cfg: dict, names: list[str]) -> None:
    world = distributed.world()
    for name in names:
        size = config.task_settings(cfg, name)["batch_size"]
        if size % world:
            raise config.ConfigError(f"batch_size {size} (task {name}) does not divide by the {world} ranks: each "
                                     f"rank takes an equal share of the global batch (use a multiple of {world})")


@locked
def train(cfg: dict) -> dict:
    """Run a training stage (pretrain, nli, contrastive, single, multitask); returns its result. Under
    torchrun every rank runs this; rank 0 alone writes the run directory."""
    path, resume = _run_dir(cfg)
    config.data_dir(cfg)  # fail before the model loads
    _check_shares(cfg, cfg["tasks"])
    names = _eval_names(cfg)
    if resume:
        check_resumable(cfg, resume)
    check_lengths(cfg, names, resume or (checkpoint.resolve_dir(cfg["init"]) if cfg["init"] else None))
    model = build(cfg, names, source=resume)
    distributed.broadcast_params(model)  # the same start on every rank, whatever initialised it
    # the run's settings, with every task's in full: a checkpoint rebuilds its heads from them alone
    cfg = {**cfg, "run_dir": path, **{n: dict(model.tasks[n].cfg) for n in names}}
    run = open_run(path, cfg, distributed.is_main(), deferred=True)
    if resume is None:  # else the loop begins the run once it has restored the checkpoint
        run.begin(0)
    if cfg["resume"] and resume is None:
        run.log(f"--resume: nothing saved in {path} yet, starting from the beginning")
    for n in model.untrained:
        run.log(f"warning: task {n} is evaluated but neither trained here nor found in init: its head is random")
    device = loop.device_of(cfg)
    run.log(f"{cfg['stage']}: tasks {cfg['tasks']} (evaluated: {names}), routine {cfg['routine']}, "
            f"precision {cfg['precision']} -> {loop.precision(cfg, device)}, optimizer {cfg['optimizer']} -> "
            f"{optim.name(cfg, device)}, device {device}, "
            f"backend {cfg['backend']}, {torch.get_num_threads()} CPU threads, run dir {run.path}")
    if cfg["optimizer"] == "auto" and optim.name(cfg, device) == "adamw":
        run.log(f"notice: fastbert's fused AdamW needs the compiled extension ({_extension.status()}): "
                "using torch.optim.AdamW (and bf16-autocast instead of bf16 weights)")
    for line in smart_notes(cfg, model, loop.precision(cfg, device)):
        run.log(line)
    loaders, evals = load_data(cfg, model, run, cfg["tasks"], names)
    no_dev = [t for t in cfg.get("select_tasks") or [] if t not in evals["dev"]]
    if no_dev:
        raise config.ConfigError(f"setting select_tasks: {no_dev} have no dev data to choose the best checkpoint "
                                 f"by (evaluated: {', '.join(evals['dev'])})")
    state = loop.train(cfg, run, model, loaders, evals["dev"], resume)
    best = state["best"]
    note = (f"best checkpoint: step {best['step']} of {state['step']}"
            + (f", chosen on the dev mean of {', '.join(cfg['select_tasks'])}" if cfg.get("select_tasks") else "")
            + (f"; dev limited to {cfg['eval_limit']} examples per task" if cfg["eval_limit"] else "")
            + "".join(f"; {t}: same when cos(u, v) > {m['threshold']:.4f} ({model.tasks[t].threshold_origin})"
                      for t, m in best["dev"].items() if "threshold" in m))
    table = dev_table(best["dev"], {t: model.tasks[t].metric for t in best["dev"]}, note)
    if distributed.is_main():
        atomic_write(os.path.join(run.path, "dev_table.md"), table)
        print(table)
    run.record({"step": state["step"], "final": best})
    run.log("dev results (best checkpoint):\n" + table, echo=False)
    distributed.barrier()  # rank 0's checkpoints are complete before any rank reads them
    if cfg["predict"]:
        checkpoint.load_weights(os.path.join(run.path, "best"), model)
        write_predictions(cfg, model, run, names)
    return {"run_dir": run.path, **state}


def smart_notes(cfg: dict, model: loop.Model, mode: str) -> list[str]:
    """What run.log says of the `smart` setting: where it applies, and where bf16 weights round it away."""
    s = cfg["smart"]
    if not s["weight"]:
        return []
    on = [t for t in cfg["tasks"] if model.tasks[t].smoothness is not None]
    off = [t for t in cfg["tasks"] if t not in on]
    notes = [f"smart: weight {s['weight']:g}, eps {s['eps']:g}, step {s['step']:g}, noise {s['noise']:g}, "
             f"{s['steps']} ascent step(s) on tasks {on}" + (f"; not on {off} (no outputs to smooth)" if off else "")]
    rounding = {"bf16": 2 ** -8, "bf16-autocast": 2 ** -8, "fp16": 2 ** -11}.get(mode, 0.0)  # half an ulp at 1
    if min(s["noise"], s["eps"]) < rounding:
        notes.append(f"notice: smart's noise {s['noise']:g} or eps {s['eps']:g} is below {mode}'s rounding of "
                     "values near 1: the perturbation is mostly lost to rounding and the regulariser measures "
                     "rounding and dropout differences (fastbert.tasks.smart); precision fp32 keeps it")
    return notes


def _for_checkpoint(cfg: dict) -> tuple[dict, loop.Model, Run, list[str]]:
    """(settings, model, run, tasks) of evaluate / predict; skip_bad_rows unset (null) takes the checkpoint's
    (its run skipped bad rows in the same data files), an explicit true or false stays."""
    source = checkpoint.resolve_dir(cfg["init"]) if cfg["init"] else None
    saved = checkpoint.saved_config(source) if source else None
    if cfg["skip_bad_rows"] is None:
        cfg = {**cfg, "skip_bad_rows": bool((saved or {}).get("skip_bad_rows"))}
    # MLM is evaluated on blocks held out of its training data only: a checkpoint is evaluated on the others
    names = [n for n in _eval_names(cfg, saved) if head_settings(cfg, saved, n)["kind"] != "mlm"]
    names = names or ["sst", "quora", "sts"]
    check_lengths(cfg, names, source)
    model = build(cfg, names)
    path = cfg["run_dir"] or default_dir(cfg["stage"], False)
    run = open_run(path, {**cfg, "init": source}, distributed.is_main())
    for n in model.untrained:
        run.log(f"warning: {source or 'the packaged checkpoint'} has no head for task {n}: it is random")
    return cfg, model, run, names


@locked
def evaluate(cfg: dict) -> dict:
    """Dev metrics of a checkpoint (`init`: a checkpoint or run directory; none: the packaged MiniLM)."""
    cfg, model, run, names = _for_checkpoint(cfg)
    _, evals = load_data(cfg, model, run, [], names)
    device = loop.device_of(cfg)
    dev, _ = _evaluate(cfg, model, evals["dev"], device)
    table = dev_table(dev, {t: model.tasks[t].metric for t in dev})
    if distributed.is_main():
        atomic_write(os.path.join(run.path, "dev_table.md"), table)
        print(table)
    run.record({"step": 0, "dev": dev})
    return {"run_dir": run.path, "dev": dev}


@locked
def predict(cfg: dict) -> dict:
    """Prediction files (CS224N format) for the dev and test files of a checkpoint's tasks."""
    cfg, model, run, names = _for_checkpoint(cfg)
    return {"run_dir": run.path, "files": write_predictions(cfg, model, run, names)}


def _evaluate(cfg: dict, model: loop.Model, loaders: dict, device: torch.device) -> tuple[dict, dict]:
    """loop.evaluate in the run's precision (precision bf16: the encoder in bf16)."""
    mode = loop.precision(cfg, device)
    return loop.evaluate(loop.to_precision(model.to(device), mode), loaders, device, loop.autocast_dtype(mode),
                         cfg["progress"])


def write_predictions(cfg: dict, model: loop.Model, run: Run, names: list[str]) -> list[str]:
    """<run>/predictions/{sst,para,sts}-{dev,test}-output.csv ("id \\t Predicted_... " then "id , value")."""
    _, evals = load_data({**cfg, "eval_limit": None}, model, run, [], names, splits=("dev", "test"))  # complete files
    device = loop.device_of(cfg)
    out_dir = os.path.join(run.path, "predictions")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for split, loaders in evals.items():
        loaders = {t: ld for t, ld in loaders.items() if model.tasks[t].cfg["kind"] != "mlm"}
        dev, preds = _evaluate(cfg, model, loaders, device)
        for t, p in preds.items():
            prefix, column = CS224N_FILES.get(t, (t, "Predicted"))
            path = os.path.join(out_dir, f"{prefix}-{split}-output.csv")
            lines = [f"id \t {column} \n"]
            lines += [f"{i} , {_fmt(t, v)} \n" for i, v in zip(loaders[t].data.ids, p)]
            if distributed.is_main():
                atomic_write(path, "".join(lines))
            written.append(path)
        if split == "dev" and dev:
            run.log("dev results:\n" + dev_table(dev, {t: model.tasks[t].metric for t in dev}))
    run.log("predictions: " + ", ".join(written))
    return written


def _fmt(task: str, v) -> str:
    if task == "quora":
        return f"{float(v):.1f}"  # the starter code writes paraphrase labels as 0.0 / 1.0
    return str(int(v)) if isinstance(v, (int, np.integer)) else f"{float(v):.6g}"


CHAIN_KEYS = ("chain", "stage", "resume", "run_dir", "init")  # settings of the chain itself, not of its links


def chain(recipe: dict, overrides: dict | None = None) -> dict:
    """Stages in a row, each starting from the previous one's best checkpoint.

    recipe: shared settings plus `chain`, a list of stage settings (each with `stage`). Each link runs in
    <run_dir>/<i>-<stage>; a finished link (dev_table.md written) is skipped when the chain resumes.
    Settings: the recipe's shared ones < the link's < `overrides` (the command line wins everywhere).
    """
    merged = config.merge(recipe, overrides or {})
    link_overrides = {k: v for k, v in (overrides or {}).items() if k not in CHAIN_KEYS}
    links = merged.pop("chain", None)
    if not links:
        raise config.ConfigError("a chain recipe needs `chain: [{stage: ...}, ...]`")
    merged.pop("stage", None)
    resume = bool(merged.pop("resume", False))
    distributed.init(loop.device_of({"device": merged.get("device", "auto")}))
    root = distributed.broadcast_object(merged.pop("run_dir", None) or default_dir("chain", resume))
    init = merged.pop("init", None)
    planned = []  # every link's settings, checked before the first link trains
    for i, link in enumerate(links):
        link = copy.deepcopy(link)
        stage = link.pop("stage", None)
        if stage not in config.TRAINING_STAGES:
            raise config.ConfigError(f"chain link {i}: stage must be a training stage, got {stage!r}")
        path = os.path.join(root, f"{i}-{stage}")
        try:
            cfg = config.resolve(stage, config.merge(merged, link),
                                 {**link_overrides, "run_dir": path, "init": link.get("init", init),
                                  "resume": resume and bool(checkpoint.find_last(path))})
        except config.ConfigError as e:
            raise config.ConfigError(f"chain link {i} ({stage}): {e}") from None
        planned.append((cfg, i > 0 and "init" not in link))
        init = os.path.join(path, "best")
    result = None
    for cfg, from_previous in planned:
        if os.path.exists(os.path.join(cfg["run_dir"], "dev_table.md")):
            if distributed.is_main():
                print(f"chain: {cfg['run_dir']} is done, skipping")
            continue
        if from_previous:  # the previous link's best, now that it has trained
            cfg = {**cfg, "init": os.path.realpath(cfg["init"])}
        result = train(cfg)
    if distributed.is_main():
        with open(os.path.join(root, f"{len(links) - 1}-{links[-1]['stage']}", "dev_table.md"),
                  encoding="utf-8") as f:
            atomic_write(os.path.join(root, "dev_table.md"), f.read())
    return {"run_dir": root, "last": result}


STAGES = {**{stage: train for stage in config.TRAINING_STAGES}, "evaluate": evaluate, "predict": predict}
