"""Checkpoints: Hugging Face weights, task heads and the trainer state, each written atomically.

    run_dir/checkpoints/step-00000120/
        config.json, model.safetensors  the encoder in the Hugging Face layout (BertModel; BertForMaskedLM,
                                        head included, when the run trains an MLM head), tokenizer.json
        heads.safetensors               the other task heads, keys "<task>.<parameter>"
        trainer.pt                      step, optimizer, scheduler, loss scaler, RNG states, data positions,
                                        routine state, best score (what --resume needs)
        fastbert.yaml                   the run's resolved settings (evaluate / predict rebuild tasks from it)
    run_dir/checkpoints/best-00000120/  the same files but trainer.pt (hard links where the file system has
                                        them): the weights alone
    run_dir/last, run_dir/best          symlinks to a step directory and to a best directory

A step or best directory is written under a temporary name and renamed when complete; the links are
replaced with os.replace. A run killed at any moment leaves a complete `last` (or, between two renames, a
complete newest step directory, which `find_last` falls back to).
"""
from __future__ import annotations

import os
import re
import shutil

import torch
import yaml
from safetensors.torch import load_file, save_file

from fastbert import pretrained
from fastbert._io import atomic_write
from fastbert.errors import CheckpointError, NotFoundError, WriteError
from fastbert.model import BertForMaskedLM


RESUME_ONLY = ("trainer.pt",)  # what a resume needs besides the weights: in step directories, never in best/


def _step_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step-{step:08d}")


def save(run_dir: str, step: int, model, trainer: dict, cfg: dict) -> str:
    """Write step `step` (unless already written) and point `last` at it."""
    final = _step_dir(run_dir, step)
    _write_dir(final, f"checkpoint step {step}", _step_files, model, trainer, cfg)
    link(run_dir, "last", final)
    return final


def _step_files(directory: str, model, trainer: dict, cfg: dict) -> None:
    save_weights(directory, model)
    save_torch(trainer, os.path.join(directory, "trainer.pt"))
    with open(os.path.join(directory, "fastbert.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def save_best(run_dir: str, step_dir: str) -> str:
    """Point `best` at a weights-only copy of the step directory `step_dir` (written unless already there):
    its files but RESUME_ONLY, hard-linked (copied where the file system has no hard links)."""
    final = os.path.join(run_dir, "checkpoints", "best-" + os.path.basename(step_dir).removeprefix("step-"))
    _write_dir(final, f"the best checkpoint {final}", _weight_links, step_dir)
    link(run_dir, "best", final)
    return final


def _weight_links(directory: str, step_dir: str) -> None:
    for name in os.listdir(step_dir):
        if name not in RESUME_ONLY:
            _link_or_copy(os.path.join(step_dir, name), os.path.join(directory, name))


def _write_dir(final: str, what: str, fill, *args) -> None:
    """Unless `final` exists: fill(tmp, *args) a temporary directory beside it, renamed to `final` when complete.
    An OSError (a full disk, a read-only directory) leaves no partial directory and the earlier checkpoints as
    they are, and becomes one WriteError naming `what`."""
    if os.path.isdir(final):
        return
    tmp = os.path.join(os.path.dirname(final), ".tmp-" + os.path.basename(final))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        fill(tmp, *args)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"cannot save {what}: " + _cause(e)) from e
    os.rename(tmp, final)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _cause(e: OSError) -> str:
    return str(e) if isinstance(e, WriteError) or not e.strerror else f"{e.filename}: {e.strerror}"


class _Recorder:
    """A file whose write errors are kept: torch.save reports them only as "unexpected pos"."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj, path: str) -> None:
    """torch.save, with a failed write raised as WriteError naming `path` and the cause (e.g. a full disk)."""
    with open(path, "wb") as f:
        recorder = _Recorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError as e:
            cause = recorder.error.strerror if recorder.error is not None else str(e)
            raise WriteError(f"{path}: cannot write ({cause})") from e


def save_weights(directory: str, model) -> None:
    """The encoder (HF layout) and the heads; an MLM head goes with the encoder as BertForMaskedLM."""
    os.makedirs(directory, exist_ok=True)
    mlm = [t for t in model.tasks.values() if t.cfg["kind"] == "mlm"]
    if mlm:
        with torch.random.fork_rng(devices=[]):  # building the view initialises a head: keep the RNG as it was
            view = BertForMaskedLM(model.encoder.config, bert=model.encoder)
        view.cls = mlm[0].head
        pretrained.save_model(view, directory)
    else:
        pretrained.save_model(model.encoder, directory)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory)
    heads = {f"{name}.{k}": v.detach().cpu().contiguous() for name, task in model.tasks.items()
             if task.cfg["kind"] != "mlm" for k, v in task.state_dict().items()}
    path = os.path.join(directory, "heads.safetensors")
    try:
        save_file(heads, path)
    except Exception as e:  # noqa: BLE001 - safetensors reports I/O errors as SafetensorError
        raise WriteError(f"{path}: cannot write ({e})") from e


def load_heads(directory: str, model) -> list[str]:
    """Load saved heads into the model's tasks; returns the tasks that got weights."""
    path = os.path.join(directory, "heads.safetensors")
    state = read_heads(path) if os.path.exists(path) else {}
    loaded = []
    for name, task in model.tasks.items():
        if task.cfg["kind"] == "mlm":  # BertForMaskedLM layout: the head sits with the encoder
            raw = pretrained.to_fastbert(pretrained.read_state_dict(directory))
            part = {"head." + k[len("cls."):]: v for k, v in raw.items() if k.startswith("cls.")}
        else:
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        if not part:
            continue
        optional = {k: v for k, v in task.state_dict().items() if k in getattr(task, "optional_state", ())}
        part = {**optional, **part}
        try:
            task.load_state_dict(part)
        except RuntimeError as e:
            raise CheckpointError(f"{directory}: the saved head of task {name!r} does not fit its settings "
                                  f"(trained with another encoder/loss?): {e}") from None
        loaded.append(name)
    return loaded


def read_heads(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a heads.safetensors file, each finite (else CheckpointError naming the file)."""
    try:
        state = load_file(path)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which one
        raise CheckpointError(f"{path}: cannot read task heads ({type(e).__name__}: {e})") from None
    pretrained.check_finite(state, path)
    return state


_CHAIN_LINK = re.compile(r"^(\d+)-\w+$")


def resolve_dir(path: str | os.PathLike) -> str:
    """The checkpoint a path names: itself (config.json inside), a run directory's best/ (else last/), or a
    chain root's last link's."""
    path = os.fspath(path)
    for sub in ("", "best", "last"):
        d = os.path.join(path, sub)
        if os.path.exists(os.path.join(d, "config.json")):
            return os.path.realpath(d)
    links = sorted((int(m[1]), name) for name in (os.listdir(path) if os.path.isdir(path) else [])
                   if (m := _CHAIN_LINK.match(name)) and os.path.isdir(os.path.join(path, name)))
    if links:
        return resolve_dir(os.path.join(path, links[-1][1]))
    raise NotFoundError(f"{path}: not a checkpoint (no config.json), a run directory with best/ or last/, "
                        "nor a chain root with <i>-<stage>/ links")


def link(run_dir: str, name: str, target: str) -> None:
    atomic_write(os.path.join(run_dir, name), lambda tmp: os.symlink(os.path.relpath(target, run_dir), tmp))


def prune(run_dir: str) -> None:
    """Delete the directories that neither `last` nor `best` points at; a `best` that is an older run's step
    directory (written before best/ had its own) loses its trainer state: only `last` is resumed."""
    last, best = (os.path.realpath(os.path.join(run_dir, n)) for n in ("last", "best"))
    root = os.path.join(run_dir, "checkpoints")
    for d in os.listdir(root):
        path = os.path.join(root, d)
        if os.path.realpath(path) not in (last, best):
            shutil.rmtree(path, ignore_errors=True)
    if best != last:
        for name in RESUME_ONLY:
            if os.path.exists(os.path.join(best, name)):
                os.unlink(os.path.join(best, name))


def find_last(run_dir: str) -> str | None:
    """The checkpoint to resume from: `last`, else the newest complete step directory."""
    last = os.path.join(run_dir, "last")
    if os.path.isdir(last):
        return os.path.realpath(last)
    root = os.path.join(run_dir, "checkpoints")
    steps = sorted(d for d in os.listdir(root) if d.startswith("step-")) if os.path.isdir(root) else []
    return os.path.join(root, steps[-1]) if steps else None


def load_trainer(directory: str) -> dict:
    path = os.path.join(directory, "trainer.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a checkpoint without its trainer state cannot be resumed)") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which one
        raise CheckpointError(f"{path}: cannot read the trainer state ({type(e).__name__}: {e})") from None


def saved_config(directory: str) -> dict | None:
    path = os.path.join(directory, "fastbert.yaml")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_weights(directory: str, model) -> None:
    """Weights of a checkpoint into a model built with the same settings (encoder, then heads)."""
    state = pretrained.to_fastbert(pretrained.read_state_dict(directory))
    model.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("cls.")})
    load_heads(directory, model)
