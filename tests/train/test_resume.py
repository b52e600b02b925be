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

from fastbert.train import routines, run_stage
from tests.train.conftest import TINY_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    out = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    assert [s for s, _ in out] == list(range(1, len(out) + 1))  # every step once, in order
    return dict(out)


def killed_run(settings, run_dir, after_step):
    """The run in a subprocess, SIGKILLed once a checkpoint exists and step `after_step` is logged."""
    recipe = run_dir + ".yaml"
    with open(recipe, "w") as f:
        yaml.safe_dump({**settings, "run_dir": run_dir}, f)
    proc = subprocess.Popen([sys.executable, "-m", "fastbert.train", "multitask", "--config", recipe], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.islink(os.path.join(run_dir, "last")) and os.path.exists(metrics):
            steps = [json.loads(line).get("step", 0) for line in open(metrics) if line.strip()]
            if steps and max(steps) >= after_step:
                proc.kill()
                break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err


@pytest.fixture
def settings(tiny):
    return {**tiny, "model": {**TINY_MODEL, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1},
            "tasks": ["sst", "quora", "sts"], "routine": "stochastic", "max_steps": 14, "save_every": 3,
            "skip_bad_rows": True, "warmup": 0.2, "precision": "bf16"}  # bf16 weights: masters saved, resumed


def test_resume_after_sigkill_and_sigint_matches_uninterrupted(settings, tmp_path, monkeypatch):
    # the settings as the whole recipe, as the subprocess gets them
    reference = losses(run_stage("multitask", {**settings, "run_dir": str(tmp_path / "ref")})["run_dir"])
    assert len(reference) == 14

    killed = str(tmp_path / "killed")
    killed_run(settings, killed, after_step=4)
    start = int(os.path.basename(os.path.realpath(os.path.join(killed, "last"))).split("-")[1])
    assert 0 < start < 14 and start % 4  # mid-epoch: 4 batches per task and epoch
    result = run_stage("multitask", {**settings, "run_dir": killed, "resume": True})
    assert result["step"] == 14
    assert f"resumed from {os.path.realpath(os.path.join(killed, 'checkpoints'))}" in open(
        os.path.join(killed, "run.log")).read()
    assert losses(killed) == reference

    # Ctrl-C (in this process: the signal arrives during step 3): the step finishes, is saved, the run stops
    stopped = str(tmp_path / "stopped")
    build = routines.build

    def interrupting(*args, **kw):
        routine = build(*args, **kw)
        step = routine.step

        def step_and_signal(i, *a):
            if i == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return step(i, *a)

        routine.step = step_and_signal
        return routine

    monkeypatch.setattr(routines, "build", interrupting)
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where pytest runs as a background job of a script)
    with pytest.raises(KeyboardInterrupt):
        run_stage("multitask", {**settings, "run_dir": stopped})
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    assert os.path.realpath(os.path.join(stopped, "last")).endswith("step-00000003")
    assert "interrupted at step 3" in open(os.path.join(stopped, "run.log")).read()
    monkeypatch.setattr(routines, "build", build)
    run_stage("multitask", {**settings, "run_dir": stopped, "resume": True})
    assert losses(stopped) == reference
