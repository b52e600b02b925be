"""The one training loop: autocast, backward, clipping, optimizer, checkpoints, resume, metrics, progress.

Each step the routine asks for task losses (a batch, the encoder under autocast, the task's loss) and
backpropagates them; then the gradients are unscaled (fp16), clipped, stepped. A non-finite loss or
gradient norm stops the run with the step and task named (fp16 overflow is the loss scaler's business:
it skips that step). Dev evaluation every `eval_every` steps keeps the best checkpoint; checkpoints also
every `save_every` steps, at the end, and on Ctrl-C / SIGTERM (the first one: finish the step, save,
stop). A resumed run restores weights, optimizer, scheduler, scaler, RNG, data positions and routine
state, so it continues with the same losses as a run never stopped.
"""
from __future__ import annotations

import contextlib
import gc
import math
import signal
import sys
import threading
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fastbert.data.batching import Loader, Stream
from fastbert.train import checkpoint, optim, routines
from fastbert.train.run import Run


class NonFiniteError(FloatingPointError):
    pass


class Model(nn.Module):
    """The shared encoder, one head per task, and the tokenizer that feeds them."""

    def __init__(self, encoder: nn.Module, tasks: dict, tokenizer=None):
        super().__init__()
        self.encoder = encoder
        self.tasks = nn.ModuleDict(tasks)
        self.tokenizer = tokenizer
        self.untrained: list[str] = []  # evaluated tasks whose heads are neither trained nor loaded


class Encode:
    """What a task calls to run the encoder on a Batch. Frozen: no gradient, no dropout."""

    def __init__(self, encoder, frozen: bool = False):
        self.encoder, self.frozen = encoder, frozen

    def __call__(self, inputs):
        if not self.frozen:
            return self.encoder(**inputs.model_inputs())
        was = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                return self.encoder(**inputs.model_inputs())
        finally:
            self.encoder.train(was)

    @property
    def word_embeddings(self) -> torch.Tensor:
        w = self.encoder.embeddings.word_embeddings.weight
        return w.detach() if self.frozen else w


def frozen_at(setting, step: int) -> bool:
    """freeze_encoder: a bool, or [first_step, end_step) with end null for 'to the end'."""
    if setting is None or isinstance(setting, bool):
        return bool(setting)
    start, end = setting
    return start <= step and (end is None or step < end)


def device_of(cfg: dict) -> torch.device:
    if cfg["device"] == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg["device"])


PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast", "fp16")


def precision(cfg: dict, device: torch.device) -> str:
    """The run's precision (see config.py): fp32 | bf16 | bf16-autocast | fp16. auto: bf16 (bf16 weights,
    fp32 masters in fastbert's FusedAdamW) on a CPU with bf16 support when the optimizer is fused_adamw,
    bf16-autocast there with torch's AdamW and on CUDA with bf16, else fp16 on CUDA, fp32 on CPU."""
    p = cfg["precision"]
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {p!r}")
    fused = optim.name(cfg, device) == "fused_adamw"
    if p == "auto":
        if device.type == "cuda":
            return "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp16"
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return "fp32"
        return "bf16" if fused else "bf16-autocast"
    if p == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA (on CPU use bf16)")
    if p == "bf16" and not fused:
        raise ValueError("precision bf16 keeps fp32 master weights in fastbert's FusedAdamW: use optimizer "
                         "fused_adamw (or auto), or precision bf16-autocast with adamw")
    return p


def autocast_dtype(p: str) -> torch.dtype | None:
    return {"bf16-autocast": torch.bfloat16, "fp16": torch.float16}.get(p)


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def low_precision_params(model: "Model") -> list[nn.Parameter]:
    """What precision bf16 stores in bf16: the encoder and the MLM head (it takes the encoder's bf16 hidden
    states and its tied word embeddings). Sentence heads stay fp32: they take fp32 pooled embeddings."""
    mlm = [p for t in model.tasks.values() if t.cfg["kind"] == "mlm" for p in t.parameters()]
    return [*model.encoder.parameters(), *mlm]


def to_precision(model: "Model", p: str) -> "Model":
    """For evaluation: the low-precision parameters cast to bf16 under precision bf16 (training casts them
    through the optimizer, which keeps their fp32 values)."""
    if p == "bf16":
        for param in low_precision_params(model):
            param.data = param.data.to(torch.bfloat16)
    return model


@torch.no_grad()
def evaluate(model: Model, loaders: dict[str, Loader], device, dtype, progress: bool = True) -> tuple[dict, dict]:
    """({task: {"main": its ranking metric, **metrics}}, {task: predictions in example order}); dtype: the
    autocast dtype (None: the model's own dtypes)."""
    was = model.training
    model.eval()
    dev, preds = {}, {}
    total = sum(len(loader) for loader in loaders.values())
    with torch.random.fork_rng(devices=[]), tqdm(total=total, desc="eval", leave=False, disable=not progress,
                                                 file=sys.stderr, dynamic_ncols=True) as bar:
        for name, loader in loaders.items():
            task = model.tasks[name]
            with autocast(device, dtype):
                metrics, p = task.evaluate(Encode(model.encoder), _OnDevice(loader, device), bar)
            dev[name] = {"main": metrics.get(task.metric, float("nan")), **metrics}
            preds[name] = p
    model.train(was)
    return dev, preds


class _OnDevice:
    """A Loader whose batches arrive on `device`."""

    def __init__(self, loader, device):
        self.loader, self.device, self.data = loader, device, loader.data

    def __iter__(self):
        return (b.to(self.device) for b in self.loader)

    def __len__(self):
        return len(self.loader)


def _interrupts():
    """A flag set by the first SIGINT / SIGTERM (the second SIGINT interrupts at once)."""
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        return flag, {}

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    return flag, {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def train(cfg: dict, run: Run, model: Model, loaders: dict[str, Loader], dev_loaders: dict[str, Loader],
          resume: str | None = None) -> dict:
    """Train `model` on the tasks of `loaders`; returns {"step", "best": {step, score, dev}}."""
    device = device_of(cfg)
    mode = precision(cfg, device)
    dtype = autocast_dtype(mode)
    model.to(device).train()
    streams = {t: Stream(loader) for t, loader in loaders.items()}
    routine = routines.build(cfg["routine"], list(loaders), {t: len(s) for t, s in streams.items()}, cfg["seed"],
                             cfg["standardize"])
    total = int(cfg["max_steps"]) if cfg["max_steps"] else max(1, math.ceil(cfg["epochs"] * routine.steps_per_epoch))
    opt = optim.build(optim.param_groups(model.encoder, model.tasks, cfg), cfg, device)
    if mode == "bf16":  # bf16 weights, their fp32 values kept as the optimizer's master copies
        opt.cast_params(torch.bfloat16, low_precision_params(model))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, optim.schedule(cfg, total))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    state = {"step": 0, "best": None, "elapsed": 0.0, "skipped_steps": 0}
    if resume:
        saved = checkpoint.load_trainer(resume)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        for t, s in streams.items():
            s.load_state_dict(saved["streams"][t])
        routine.load_state_dict(saved["routine"])
        state = saved["state"]
        run.truncate(state["step"])
        run.log(f"resumed from {resume} at step {state['step']} of {total}")
    step = state["step"]
    eval_every = int(cfg["eval_every"] or routine.steps_per_epoch)
    save_every = int(cfg["save_every"]) if cfg["save_every"] else None
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    settings = {t: model.tasks[t].cfg for t in loaders}
    window: dict[str, list[float]] = {t: [] for t in loaders}
    tokens = 0

    def loss(t: str) -> torch.Tensor:
        nonlocal tokens
        batch = streams[t].next()
        tokens += int(batch.inputs.lengths.sum())
        batch = batch.to(device)
        with autocast(device, dtype):
            value = model.tasks[t].loss(Encode(model.encoder, frozen_at(settings[t]["freeze_encoder"], step)), batch)
        value = value.float()
        if not torch.isfinite(value):
            raise NonFiniteError(f"step {step + 1}: task {t} loss is {value.item()} "
                                 f"(lr {sched.get_last_lr()[0]:.3g}; last losses {_last(window)})")
        return value

    def backward(value: torch.Tensor) -> None:
        if value.requires_grad:  # a frozen encoder under a parameter-free head has nothing to learn
            (scaler.scale(value) if scaler is not None else value).backward()

    def trainer_state() -> dict:
        return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
                "streams": {t: s.state_dict() for t, s in streams.items()}, "routine": routine.state_dict(),
                "state": {**state, "step": step, "elapsed": state["elapsed"] + time.time() - started}}

    def save() -> None:  # the fp32 master weights, not their bf16 roundings
        with master_weights(opt):
            checkpoint.save(run.path, step, model, trainer_state(), cfg)
        checkpoint.prune(run.path)

    def evaluate_and_save() -> None:
        dev, _ = evaluate(model, dev_loaders, device, dtype, cfg["progress"])
        trained = [t for t in loaders if t in dev]  # no dev data for any trained task: the newest is best
        score = float(np.mean([dev[t]["main"] for t in trained])) if trained else float(step)
        run.record({"step": step, "dev": dev, "score": score})
        run.log(f"step {step}: dev " + ", ".join(f"{t} {m['main']:.4f}" for t, m in dev.items()))
        improved = state["best"] is None or score > state["best"]["score"]
        if improved:
            state["best"] = {"step": step, "score": score, "dev": dev}
        save()
        if improved:
            checkpoint.link(run.path, "best", checkpoint.find_last(run.path))
            checkpoint.prune(run.path)
        run.plot()

    def check(norm: float, values: dict) -> None:  # fp16 overflow is the scaler's to skip; else stop
        if not math.isfinite(norm) and scaler is None:
            raise NonFiniteError(f"step {step + 1}: gradient norm is {norm} "
                                 f"(losses {values}; lr {sched.get_last_lr()[0]:.3g})")

    flag, old_handlers = _interrupts()
    gc.freeze()  # data, model and optimizer live for the whole run: out of the collector's full passes (~5% a step)
    started, t_log, tokens_log = time.time(), time.time(), 0
    bar = tqdm(total=total, initial=step, desc=cfg["stage"], disable=not cfg["progress"], file=sys.stderr,
               dynamic_ncols=True, mininterval=1.0)
    try:
        while step < total:
            opt.zero_grad(set_to_none=True)
            values = routine.step(step, loss, backward, shared)
            if scaler is not None:
                scaler.unscale_(opt)
            norm = None
            if not optim.clips_itself(opt):
                norm = float(torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"] or float("inf")))
                check(norm, values)
            if scaler is not None:
                scale = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                state["skipped_steps"] += int(scaler.get_scale() < scale)
            else:
                opt.step()
            if norm is None and getattr(opt, "grad_norm", None) is not None:
                norm = float(opt.grad_norm)  # clipped inside the step, which a non-finite norm skipped
                check(norm, values)
            sched.step()
            step += 1
            for t, v in values.items():
                window[t].append(v)
            bar.update(1)
            if step % cfg["log_every"] == 0 or step == total:
                now = time.time()
                rec = {"step": step, "epoch": round(step / routine.steps_per_epoch, 4),
                       "loss": {t: float(np.mean(w)) for t, w in window.items() if w},
                       "lr": sched.get_last_lr()[0], "grad_norm": norm,
                       "tokens_per_s": round((tokens - tokens_log) / max(now - t_log, 1e-9), 1)}
                if routine.info:
                    rec["routine"] = routine.info
                if scaler is not None:
                    rec["loss_scale"], rec["skipped_steps"] = scaler.get_scale(), state["skipped_steps"]
                run.record(rec)
                bar.set_postfix({t: f"{v:.3f}" for t, v in rec["loss"].items()}, refresh=False)
                window = {t: [] for t in loaders}
                t_log, tokens_log = now, tokens
            if step % eval_every == 0 or step == total:
                evaluate_and_save()
            elif save_every and step % save_every == 0:
                save()
            if flag["signal"] is not None:
                save()
                run.log(f"interrupted at step {step}: saved {run.path}/last; continue with "
                        f"--resume --run_dir {run.path}")
                raise KeyboardInterrupt
    finally:
        bar.close()
        gc.unfreeze()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if step == state["step"] and state["best"] is None:  # resumed a finished run that never evaluated
        evaluate_and_save()
    state["step"] = step
    return state


@contextlib.contextmanager
def master_weights(opt: torch.optim.Optimizer):
    """Inside: every parameter with an fp32 master copy in `opt` holds that copy (what checkpoints save)."""
    swapped = [(p, p.data) for p, s in opt.state.items() if "master_param" in s]
    for p, _ in swapped:
        p.data = opt.state[p]["master_param"]
    try:
        yield
    finally:
        for p, data in swapped:
            p.data = data


def _last(window: dict) -> dict:
    return {t: round(w[-1], 4) for t, w in window.items() if w}
