"""The one training loop: autocast, backward, clipping, optimizer, checkpoints, resume, metrics, progress.

Each step the routine asks for task losses (a batch, the encoder under autocast, the task's loss) and
backpropagates them; then the gradients are unscaled (fp16), clipped, stepped. A routine that sums every
task's loss (additive, weighted) asks for them all at once: with `pack_tasks` the batches of the tasks
that allow it go through the encoder in one pass, each task's loss from its own share of the hidden
states (Trainer.packs says which; the others run one pass each). A non-finite loss or
gradient norm stops the run with the step and task named (fp16 overflow is the loss scaler's business:
it skips that step). Dev evaluation every `eval_every` steps keeps the best checkpoint; checkpoints also
every `save_every` steps, at the end, and on Ctrl-C / SIGTERM (the first one: finish the step, save,
stop). A resumed run restores weights, optimizer, scheduler, scaler, RNG, data positions and routine
state, so it continues with the same losses as a run never stopped. Under torchrun every rank runs this
loop on its share of each batch: the gradients are averaged over the ranks before clipping, the logged
losses are the ranks' means, and a signal on any rank stops all (fastbert.train.distributed).
"""
from __future__ import annotations

import contextlib
import dataclasses
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

from fastbert import backend
from fastbert.data.batching import Loader, Stream, TaskBatch
from fastbert.tasks import smart
from fastbert.tasks.base import Encode
from fastbert.train import checkpoint, distributed, optim, routines
from fastbert.train.config import PRECISIONS
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


def precision(cfg: dict, device: torch.device) -> str:
    """The run's precision on `device`: auto resolved, each value checked for what it needs (config.PRECISIONS
    says what each runs)."""
    p = cfg["precision"]
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}; got {p!r}")
    fused = optim.name(cfg, device) == "fused_adamw"
    if p == "auto":
        if device.type == "cuda":
            return "bf16-autocast" if backend.bf16_matmuls(device) else "fp16"
        if not backend.bf16_matmuls(device):
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


class Interrupts:
    """Inside: the first SIGINT / SIGTERM sets `received` (the loop saves after the step and stops); a second
    SIGINT interrupts at once. Outside: the previous handlers. (Only the main thread may set handlers.)"""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum


@dataclasses.dataclass
class TrainState:
    """What the loop counts. step, best, elapsed and skipped_steps are saved in checkpoints (trainer.pt
    "state", these four keys); tokens and started belong to this process."""
    step: int = 0  # optimizer steps done
    best: dict | None = None  # {"step", "score", "dev"} of the best dev evaluation so far
    elapsed: float = 0.0  # seconds trained before this process started training
    skipped_steps: int = 0  # fp16 steps the loss scaler skipped (overflow)
    tokens: int = 0  # input tokens this process has trained on (tokens_per_s)
    started: float = dataclasses.field(default_factory=time.time)  # when this process started training

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "elapsed": self.elapsed + time.time() - self.started,
                "skipped_steps": self.skipped_steps}

    @classmethod
    def from_state_dict(cls, saved: dict) -> "TrainState":
        return cls(step=int(saved["step"]), best=saved["best"], elapsed=float(saved["elapsed"]),
                   skipped_steps=int(saved.get("skipped_steps", 0)))


class Streams:
    """The data position: one endless Stream per task. state_dict() is what checkpoints save and resume."""

    def __init__(self, loaders: dict[str, Loader]):
        self.streams = {t: Stream(loader) for t, loader in loaders.items()}

    def next(self, task: str) -> TaskBatch:
        return self.streams[task].next()

    def batches_per_epoch(self) -> dict[str, int]:
        return {t: len(s) for t, s in self.streams.items()}

    def key_offsets(self, tasks: list[str]) -> dict[str, int]:
        """{task: what its sequences' dropout keys are moved up by in a packed pass} for `tasks` (those that can
        pack): past every key of the tasks before it (Loader.keys), so that no two tasks' sequences share a key."""
        counts = [self.streams[t].loader.keys for t in tasks]
        return dict(zip(tasks, (int(x) for x in np.cumsum([0, *counts[:-1]]))))

    def state_dict(self) -> dict:
        return {t: s.state_dict() for t, s in self.streams.items()}

    def load_state_dict(self, saved: dict) -> None:
        for t, s in self.streams.items():
            s.load_state_dict(saved[t])


class Trainer:
    """One run's model, optimizer, scheduler, loss scaler, data position and routine, and what a step does.

    `train()` drives it: restore, then step / log / evaluate / save until max_steps. Rank 0 alone writes
    files (`is_main`: run.log, metrics.jsonl, curves.png, checkpoints, progress bars); `_sync_gradients`
    is where the gradients of a step are final, before unscaling and clipping; `data` holds the position.
    """

    def __init__(self, cfg: dict, run: Run, model: Model, loaders: dict[str, Loader],
                 dev_loaders: dict[str, Loader]):
        self.cfg, self.run, self.model, self.dev_loaders = cfg, run, model, dev_loaders
        self.is_main = distributed.is_main()
        self.device = device_of(cfg)
        self.mode = precision(cfg, self.device)
        self.dtype = autocast_dtype(self.mode)
        model.to(self.device).train()
        self.tasks = list(loaders)
        self.data = Streams(loaders)
        self.key_offsets = self.data.key_offsets([t for t in self.tasks if model.tasks[t].packable])
        self.routine = routines.build(cfg["routine"], self.tasks, self.data.batches_per_epoch(), cfg["seed"],
                                      cfg["standardize"])
        epoch = self.routine.steps_per_epoch
        self.total = int(cfg["max_steps"]) if cfg["max_steps"] else max(1, math.ceil(cfg["epochs"] * epoch))
        self.opt = optim.build(optim.param_groups(model.encoder, model.tasks, cfg), cfg, self.device)
        if self.mode == "bf16":  # bf16 weights, their fp32 values kept as the optimizer's master copies
            self.opt.cast_params(torch.bfloat16, low_precision_params(model))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, optim.schedule(cfg, self.total))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.state = TrainState()
        self.eval_every = int(cfg["eval_every"] or epoch)
        self.save_every = int(cfg["save_every"]) if cfg["save_every"] else None
        self.shared = [p for p in model.encoder.parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.window: dict[str, list[float]] = {t: [] for t in self.tasks}  # losses since the last log record
        self.logged = (time.time(), 0)  # (time, state.tokens) at the last log record
        self.bar = None

    # ---- files: rank 0 alone writes them ----

    def _log(self, msg: str) -> None:
        if self.is_main:
            self.run.log(msg)

    def _record(self, rec: dict) -> None:
        if self.is_main:
            self.run.record(rec)

    def save(self, best: bool = False) -> None:
        """A checkpoint of this step (the fp32 master weights, not their bf16 roundings); `best`: its weights
        as run_dir/best too."""
        if not self.is_main:
            return
        with master_weights(self.opt):
            path = checkpoint.save(self.run.path, self.state.step, self.model, self.state_dict(), self.cfg)
        if best:
            checkpoint.save_best(self.run.path, path)
        checkpoint.prune(self.run.path)

    def save_and_stop(self) -> None:
        """After an interrupt (Ctrl-C / SIGTERM): save this step and stop with KeyboardInterrupt."""
        self.save()
        self._log(f"interrupted at step {self.state.step}: saved {self.run.path}/last; continue with "
                  f"--resume --run_dir {self.run.path}")
        raise KeyboardInterrupt

    # ---- resume ----

    def state_dict(self) -> dict:
        """trainer.pt: everything --resume restores besides the weights (keys as in every checkpoint so far)."""
        cuda = self.device.type == "cuda"
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None},
                "streams": self.data.state_dict(), "routine": self.routine.state_dict(),
                "state": self.state.state_dict()}

    def restore(self, directory: str) -> None:
        """Continue from the checkpoint in `directory` (its weights are already in the model)."""
        saved = checkpoint.load_trainer(directory)
        optim.load_state(self.opt, saved["optimizer"])  # whichever optimizer and precision saved it
        self.sched.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if self.device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        self.data.load_state_dict(saved["streams"])
        self.routine.load_state_dict(saved["routine"])
        self.state = TrainState.from_state_dict(saved["state"])
        if self.is_main:
            self.run.begin(self.state.step)
        self._log(f"resumed from {directory} at step {self.state.step} of {self.total}")

    # ---- one step ----

    def loss(self, task: str) -> torch.Tensor:
        """The routine's callback: the next batch of `task` through the encoder (under autocast) and the
        task's loss (with the SMART regulariser, where the `smart` setting adds it), as an fp32 scalar; a
        non-finite loss stops the run."""
        return self._loss(task, self._next(task))

    def losses(self, tasks: list[str]) -> dict[str, torch.Tensor]:
        """The routine's callback for several tasks (given where `packs` allows two or more): {task: what
        loss(task) gives}, the batches drawn in task order; those of the tasks that `packs` allows through
        the encoder in one pass (Encode.together), the others' one pass each."""
        batches = {t: self._next(t) for t in tasks}
        packed = [t for t in tasks if self.packs(t)]
        values = self._packed_losses({t: batches[t] for t in packed}) if packed else {}
        for t in tasks:
            if t not in packed:
                values[t] = self._loss(t, batches[t])
        return {t: values[t] for t in tasks}

    def packs(self, task: str) -> bool:
        """Whether `task`'s batch goes through this step's shared encoder pass: pack_tasks is on, its loss is
        loss_on of pooled embeddings (Task.packable: not MLM), its encoder trains at this step (a frozen one
        runs apart: no gradient, no dropout) and SMART does not apply to it (its perturbed passes are its own)."""
        head = self.model.tasks[task]
        return (self.cfg["pack_tasks"] and head.packable and not frozen_at(head.cfg["freeze_encoder"], self.state.step)
                and not smart.applies(head, Encode(self.model.encoder), self.cfg["smart"]))

    def _next(self, task: str) -> TaskBatch:
        batch = self.data.next(task)
        self.state.tokens += int(batch.inputs.lengths.sum())
        return batch

    def _loss(self, task: str, batch: TaskBatch) -> torch.Tensor:
        """loss(task) of `batch`: its own encoder pass."""
        batch = batch.to(self.device)
        frozen = frozen_at(self.model.tasks[task].cfg["freeze_encoder"], self.state.step)
        with autocast(self.device, self.dtype):
            value = smart.loss(self.model.tasks[task], Encode(self.model.encoder, frozen), batch, self.cfg["smart"])
        return self._checked(task, value)

    def _packed_losses(self, batches: dict[str, TaskBatch]) -> dict[str, torch.Tensor]:
        """{task: loss} of the tasks' batches from one encoder pass over all their sequences, every sequence's
        dropout key moved past the other tasks' (key_offsets: the pass draws one seed per dropout site)."""
        batches = {t: b.packed(self.key_offsets[t]).to(self.device) for t, b in batches.items()}
        heads = [self.model.tasks[t] for t in batches]
        with autocast(self.device, self.dtype):
            outs = Encode(self.model.encoder).together([b.inputs for b in batches.values()])
            values = [head.loss_on(head.pooled(out, b), b) for head, out, b in zip(heads, outs, batches.values())]
        return {t: self._checked(t, v) for t, v in zip(batches, values)}

    def _checked(self, task: str, value: torch.Tensor) -> torch.Tensor:
        """value as an fp32 scalar; a non-finite one stops the run."""
        value = value.float()
        if not torch.isfinite(value):
            raise NonFiniteError(f"step {self.state.step + 1}: task {task} loss is {value.item()} "
                                 f"(lr {self.sched.get_last_lr()[0]:.3g}; last losses {_last(self.window)})")
        return value

    def backward(self, value: torch.Tensor) -> None:
        """The routine's callback: gradients of `value` accumulate into .grad (loss scaling inside)."""
        if value.requires_grad:  # a frozen encoder under a parameter-free head has nothing to learn
            (self.scaler.scale(value) if self.scaler is not None else value).backward()

    def step(self) -> tuple[dict[str, float], float | None]:
        """One optimizer update: the gradients, unscale, clip and check, optimizer and scheduler step. Returns
        ({task: loss}, the gradient norm or None)."""
        values = self.gradients()
        self._sync_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        norm = None
        if not optim.clips_itself(self.opt):
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg["max_grad_norm"] or float("inf")))
            self._check(norm, values)
        self._optimizer_step()
        if norm is None and getattr(self.opt, "grad_norm", None) is not None:
            norm = float(self.opt.grad_norm)  # clipped inside the step, which a non-finite norm skipped
            self._check(norm, values)
        self.sched.step()
        self.state.step += 1
        return values, norm

    def gradients(self) -> dict[str, float]:
        """zero_grad, then the routine's losses and backward passes: this rank's gradients of the step. The
        routine gets `losses` where two or more tasks pack (else one pass per task). Returns {task: loss}."""
        self.opt.zero_grad(set_to_none=True)
        packing = sum(self.packs(t) for t in self.tasks) >= 2
        return self.routine.step(self.state.step, self.loss, self.losses if packing else None, self.backward,
                                 self.shared)

    def _sync_gradients(self) -> None:
        """The step's gradients are final here (before unscaling and clipping): under torchrun, averaged over
        the ranks (once per step, fp32 sums; see distributed.average_gradients). One process: nothing to do."""
        averaged = set(self.shared) if self.routine.averages_shared else set()
        distributed.average_gradients([p for p in self.params if p not in averaged])

    def _check(self, norm: float, values: dict) -> None:
        """fp16 overflow is the loss scaler's to skip; any other non-finite gradient norm stops the run."""
        if not math.isfinite(norm) and self.scaler is None:
            raise NonFiniteError(f"step {self.state.step + 1}: gradient norm is {norm} "
                                 f"(losses {values}; lr {self.sched.get_last_lr()[0]:.3g})")

    def _optimizer_step(self) -> None:
        if self.scaler is None:
            self.opt.step()
            return
        scale = self.scaler.get_scale()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.state.skipped_steps += int(self.scaler.get_scale() < scale)

    # ---- after a step ----

    def log(self, values: dict[str, float], norm: float | None) -> None:
        """The step's losses into the window; every log_every steps (and at the end) a metrics record."""
        for t, v in values.items():
            self.window[t].append(v)
        self.bar.update(1)
        step = self.state.step
        if step % self.cfg["log_every"] and step != self.total:
            return
        now, tokens = time.time(), self.state.tokens
        logged = [t for t in self.tasks if self.window[t]]
        # the ranks' means (a rank's loss is its share of the global batch's) and their tokens since the last record
        *means, new = distributed.average_scalars([float(np.mean(self.window[t])) for t in logged]
                                                  + [tokens - self.logged[1]])
        rec = {"step": step, "epoch": round(step / self.routine.steps_per_epoch, 4),
               "loss": dict(zip(logged, means)),
               "lr": self.sched.get_last_lr()[0], "grad_norm": norm,
               "tokens_per_s": round(new * distributed.world() / max(now - self.logged[0], 1e-9), 1)}
        if self.routine.info:
            rec["routine"] = self.routine.info
        if self.scaler is not None:
            rec["loss_scale"], rec["skipped_steps"] = self.scaler.get_scale(), self.state.skipped_steps
        self._record(rec)
        self.bar.set_postfix({t: f"{v:.3f}" for t, v in rec["loss"].items()}, refresh=False)
        self.window = {t: [] for t in self.tasks}
        self.logged = (now, tokens)

    def evaluate(self) -> None:
        """Dev metrics, recorded; a checkpoint, linked as best when the score (mean of the main metrics of
        select_tasks, else of the trained tasks) improved."""
        step = self.state.step
        dev, _ = evaluate(self.model, self.dev_loaders, self.device, self.dtype, self.cfg["progress"] and self.is_main)
        chosen = [t for t in self.cfg.get("select_tasks") or self.tasks if t in dev]  # none with dev data: newest
        score = float(np.mean([dev[t]["main"] for t in chosen])) if chosen else float(step)
        self._record({"step": step, "dev": dev, "score": score})
        self._log(f"step {step}: dev " + ", ".join(f"{t} {m['main']:.4f}" for t, m in dev.items()))
        best = self.state.best["score"] if self.state.best else math.nan  # (a NaN score is beaten by any other)
        improved = math.isnan(best) or score > best
        if improved:
            self.state.best = {"step": step, "score": score, "dev": dev}
        self.save(best=improved)
        if self.is_main:
            self.run.plot()

    @contextlib.contextmanager
    def running(self):
        """Around the loop: Interrupts (yielded), the clock, gc frozen, the progress bar; all put back after."""
        gc.freeze()  # data, model and optimizer live for the whole run: out of the collector's full passes
        self.state.started = time.time()
        self.logged = (self.state.started, self.state.tokens)
        self.bar = tqdm(total=self.total, initial=self.state.step, desc=self.cfg["stage"], file=sys.stderr,
                        disable=not (self.cfg["progress"] and self.is_main), dynamic_ncols=True, mininterval=1.0)
        try:
            with Interrupts() as interrupts:
                yield interrupts
        finally:
            self.bar.close()
            gc.unfreeze()


def train(cfg: dict, run: Run, model: Model, loaders: dict[str, Loader], dev_loaders: dict[str, Loader],
          resume: str | None = None) -> dict:
    """Train `model` on the tasks of `loaders`; returns {"step", "best": {step, score, dev}, "elapsed",
    "skipped_steps"}."""
    trainer = Trainer(cfg, run, model, loaders, dev_loaders)
    if resume:
        trainer.restore(resume)
    start = trainer.state.step
    with trainer.running() as interrupted:
        while trainer.state.step < trainer.total:
            values, norm = trainer.step()
            trainer.log(values, norm)
            step = trainer.state.step
            if step % trainer.eval_every == 0 or step == trainer.total:
                trainer.evaluate()
            elif trainer.save_every and step % trainer.save_every == 0:
                trainer.save()
            if distributed.any_rank(interrupted.received is not None):  # Ctrl-C / SIGTERM on any rank stops all
                trainer.save_and_stop()
    if trainer.state.step == start and trainer.state.best is None:  # resumed a finished run that never evaluated
        trainer.evaluate()
    return trainer.state.state_dict()


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
