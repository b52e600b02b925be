"""A run killed mid-epoch (SIGKILL) or stopped with Ctrl-C (SIGINT) and resumed logs the same losses as a
run never interrupted: weights, optimizer, scheduler, RNG (dropout), data positions, routine state."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from fastbert.train import run_stage
from tests.train.conftest import TINY_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    out = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    assert [s for s, _ in out] == list(range(1, len(out) + 1))  # every step once, in order
    return dict(out)


def interrupted(settings, run_dir, sig, after_step):
    """Start the run in a subprocess; send `sig` once a checkpoint exists and `after_step` is logged."""
    recipe = os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + ".yaml")
    with open(recipe, "w") as f:
        yaml.safe_dump({**settings, "run_dir": run_dir}, f)
    proc = subprocess.Popen([sys.executable, "-m", "fastbert.train", "multitask", "--config", recipe], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.islink(os.path.join(run_dir, "last")) and os.path.exists(metrics):
            steps = [json.loads(line).get("step", 0) for line in open(metrics) if line.strip()]
            if steps and max(steps) >= after_step:
                proc.send_signal(sig)
                break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture
def settings(tiny):
    return {**tiny, "model": {**TINY_MODEL, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1},
            "routine": "stochastic", "max_steps": 14, "save_every": 3, "skip_bad_rows": True, "warmup": 0.2}


def test_resume_after_sigkill_and_sigint_matches_uninterrupted(settings, tmp_path):
    reference = losses(run_stage("multitask", **{**settings, "run_dir": str(tmp_path / "ref")})["run_dir"])
    assert len(reference) == 14

    killed = str(tmp_path / "killed")
    code, err = interrupted(settings, killed, signal.SIGKILL, after_step=4)
    assert code == -signal.SIGKILL, err
    start = int(os.path.basename(os.path.realpath(os.path.join(killed, "last"))).split("-")[1])
    assert 0 < start < 14 and start % 4  # mid-epoch: 4 batches per task and epoch
    result = run_stage("multitask", **{**settings, "run_dir": killed, "resume": True})
    assert result["step"] == 14
    assert f"resumed from {os.path.realpath(os.path.join(killed, 'checkpoints'))}" in open(
        os.path.join(killed, "run.log")).read()
    assert losses(killed) == reference

    stopped = str(tmp_path / "stopped")
    code, err = interrupted(settings, stopped, signal.SIGINT, after_step=2)
    assert code == 130, err
    assert "interrupted at step" in err and "--resume" in err
    run_stage("multitask", **{**settings, "run_dir": stopped, "resume": True})
    assert losses(stopped) == reference
