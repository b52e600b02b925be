"""The `batching` and `smart` settings through the driver: random batches are what a run trains on, SMART adds a
positive term to the logged losses of the sentence tasks, and a run with both, stopped mid-epoch, resumes with
the losses of a run never stopped."""
import json
import os

import pytest

from fastbert.train import config, run_stage

SENTENCE_TASKS = ["sst", "quora", "sts"]
LARGE = {"weight": 5.0, "eps": 0.1, "step": 0.1, "noise": 0.01, "steps": 1}  # well above rounding: visible


def losses(run_dir) -> dict:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture
def base(tiny, tmp_path):
    """fp32, constant lr, no head dropout: a step's loss depends on its batch and the weights alone."""
    return {**tiny, "tasks": SENTENCE_TASKS, "routine": "additive", "skip_bad_rows": True, "schedule": "constant",
            "precision": "fp32", "sst": {"dropout": 0.0}, "quora": {"dropout": 0.0}}


def test_random_batches_and_smart_change_the_first_step(base, tmp_path):
    first = {}
    for name, extra in (("plain", {}), ("random", {"batching": "random"}), ("smart", {"smart": LARGE})):
        result = run_stage("multitask", **{**base, **extra, "run_dir": str(tmp_path / name)}, max_steps=2)
        first[name] = losses(result["run_dir"])[1]
    for t in SENTENCE_TASKS:
        assert first["random"][t] != first["plain"][t]  # other examples in the first batch (tiny data: one bucket)
        assert first["smart"][t] > first["plain"][t]  # the same batch and weights, plus weight * divergence
    log = open(tmp_path / "smart" / "run.log").read()
    assert "smart: weight 5, eps 0.1, step 0.1, noise 0.01, 1 ascent step(s) on tasks ['sst', 'quora', 'sts']" in log
    assert "smart:" not in open(tmp_path / "plain" / "run.log").read()


def test_random_batches_with_smart_resume_mid_epoch_exactly(base, tmp_path):
    """4 batches per task and epoch: stopped after step 3, resumed to step 7 (across the epoch's end). Head
    dropout on: the RNG (dropout, SMART's noise) is restored too."""
    s = {**base, "batching": "random", "smart": {**LARGE, "weight": 1.0}, "sst": {}, "quora": {}}
    reference = losses(run_stage("multitask", **{**s, "run_dir": str(tmp_path / "ref")}, max_steps=7)["run_dir"])
    part = str(tmp_path / "part")
    run_stage("multitask", **{**s, "run_dir": part}, max_steps=3)
    with pytest.raises(config.ConfigError, match="setting batching: 'bucketed' is not the resumed run's 'random'"):
        run_stage("multitask", **{**s, "batching": "bucketed", "run_dir": part}, max_steps=7, resume=True)
    run_stage("multitask", **{**s, "run_dir": part}, max_steps=7, resume=True)
    assert losses(part) == reference and len(reference) == 7


def test_smart_with_bf16_weights_runs_and_says_what_rounds_away(base, tmp_path):
    result = run_stage("single", **{**base, "task": "sst", "precision": "bf16", "smart": {"weight": 1.0},
                                    "run_dir": str(tmp_path / "bf16")}, max_steps=3)
    assert result["step"] == 3
    assert "is below bf16's rounding of values near 1" in open(tmp_path / "bf16" / "run.log").read()
