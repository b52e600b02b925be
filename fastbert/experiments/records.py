"""Run records: what a finished run measured, read from its run directory, plus where and how it ran.

results/records/<table>/<row>.json (seed 0) or <row>-seed<k>.json; small enough to commit.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import subprocess

import yaml

from fastbert.experiments.specs import TASKS

ATTEMPTS = "experiment.json"  # in the run directory: one entry per launch (command, times, commit)
_IGNORED = ("results/", "RESULTS.md")  # written by the experiments themselves: not "dirty"


def record_name(row: str, seed: int) -> str:
    return f"{row}.json" if seed == 0 else f"{row}-seed{seed}.json"


def record_path(root: str, table: str, row: str, seed: int) -> str:
    return os.path.join(root, "results", "records", table, record_name(row, seed))


def git_state(repo: str) -> dict:
    """{commit, dirty, changed: [paths]} of the code that runs (experiment outputs excluded)."""
    def git(*args):
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False).stdout

    commit = git("rev-parse", "HEAD").strip() or None
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line[3:].startswith(_IGNORED)]
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def machine() -> dict:
    """Where a run ran. `isa`: the widest x86 vector extension (avx512 / avx2 / None), because virtual machines
    often name their CPU no more precisely than 'AMD EPYC'; `bf16`: whether it has bf16 matmuls (AMX or
    AVX512-BF16), which decides precision auto."""
    cpu, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = [line.split(":", 1) for line in f if ":" in line]
        cpu = next((v.strip() for k, v in info if k.strip() == "model name"), cpu)
        flags = set(next((v.split() for k, v in info if k.strip() == "flags"), []))
    except OSError:
        pass
    import torch

    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "isa": "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else None,
            "bf16": bool(flags & {"amx_bf16", "avx512_bf16"}), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def read_attempts(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, ATTEMPTS)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def add_attempt(run_dir: str, attempt: dict) -> None:
    _write_attempts(run_dir, read_attempts(run_dir) + [attempt])


def _write_attempts(run_dir: str, attempts: list[dict]) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, ATTEMPTS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(attempts, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, ATTEMPTS))


def set_last_attempt(run_dir: str, attempt: dict | None) -> None:
    """Replaces the last entry (the attempt added when it started) with its final state (None: drops it)."""
    _write_attempts(run_dir, read_attempts(run_dir)[:-1] + ([attempt] if attempt else []))


def stage_dirs(run_dir: str) -> list[str]:
    """The run directories holding metrics.jsonl: the run itself, or a chain's links in order."""
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return [run_dir]
    links = glob.glob(os.path.join(run_dir, "[0-9]*-*"))
    return sorted((d for d in links if os.path.exists(os.path.join(d, "metrics.jsonl"))),
                  key=lambda d: int(os.path.basename(d).split("-", 1)[0]))


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _log_times(path: str) -> tuple[float, dict[int, float]]:
    """run.log: (seconds it ran, {step: seconds into the run at its dev line}); the time between an
    "interrupted" line and the next start (a resume) does not count."""
    first = prev = None
    paused, stopped = 0.0, False
    dev: dict[int, float] = {}
    if not os.path.exists(path):
        return 0.0, dev
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                t = datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()
            except ValueError:
                continue
            first = t if first is None else first
            if stopped:
                paused += t - prev
            prev = t
            words = line[20:].split()
            stopped = words[:1] == ["interrupted"]
            if len(words) > 2 and words[0] == "step" and words[2] == "dev" and words[1].rstrip(":").isdigit():
                dev[int(words[1].rstrip(":"))] = t - first - paused
    return (prev - first - paused) if first is not None else 0.0, dev


def mean3(dev: dict) -> float | None:
    """Mean of SST accuracy, Quora accuracy and STS Pearson; None unless all three were evaluated."""
    vals = [dev.get(t) for t in TASKS]
    return None if any(v is None for v in vals) else sum(vals) / 3


def results(run_dir: str) -> dict:
    """Dev metrics of the final model (the last stage's best checkpoint), steps, and the dev curve against
    wall-clock (from run.log timestamps; a chain's stages one after the other, pauses between attempts left out)."""
    dirs = stage_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (the run did not start)")
    steps, curve, offset, final = [], [], 0.0, None
    for d in dirs:
        recs = _jsonl(os.path.join(d, "metrics.jsonl"))
        finals = [r["final"] for r in recs if "final" in r]
        devs = [r for r in recs if "dev" in r]
        final = finals[-1]["dev"] if finals else (devs[-1]["dev"] if devs else None)
        steps.append(max((r.get("step", 0) for r in recs), default=0))
        ran, times = _log_times(os.path.join(d, "run.log"))
        for r in devs:
            if r["step"] in times:
                m = mean3({t: v["main"] for t, v in r["dev"].items()})
                curve.append([round(offset + times[r["step"]], 1), sum(steps[:-1]) + r["step"], m])
        offset += ran
    if final is None:
        raise FileNotFoundError(f"{run_dir}: no dev evaluation recorded")
    dev = {t: m["main"] for t, m in final.items()}
    with open(os.path.join(dirs[-1], "config.yaml"), encoding="utf-8") as f:
        last = yaml.safe_load(f)
    return {"dev": dev, "dev_mean": mean3(dev), "steps": sum(steps), "stage_steps": steps, "curve": curve,
            "train_limit": last.get("train_limit"), "eval_limit": last.get("eval_limit")}


def write(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def load_all(root: str) -> dict[str, dict[str, list[dict]]]:
    """{table: {row: [records, by seed]}} of everything under results/records."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(glob.glob(os.path.join(root, "results", "records", "*", "*.json"))):
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
        out.setdefault(rec["table"], {}).setdefault(rec["row"], []).append(rec)
    for rows in out.values():
        for recs in rows.values():
            recs.sort(key=lambda r: r["seed"])
    return out
