"""metrics.jsonl after a resume reads as one run: a line torn by a kill is dropped, records of steps that are
trained again are not kept twice (also when nothing was saved yet), and per-start events are not repeated."""
import json
import os
import shutil

from fastbert.train import run_stage


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]  # every line whole


def loss_steps(run_dir):
    return [r["step"] for r in records(run_dir) if "loss" in r]


def test_a_torn_last_line_is_dropped_on_resume(tiny):
    settings = {**tiny, "task": "sts"}
    run_stage("single", **settings, max_steps=2)
    with open(os.path.join(tiny["run_dir"], "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "epoch": 0.75, "lo')  # killed mid-write
    result = run_stage("single", **settings, max_steps=4, resume=True)
    assert result["step"] == 4 and loss_steps(tiny["run_dir"]) == [1, 2, 3, 4]
    assert [r["step"] for r in records(tiny["run_dir"]) if "final" in r] == [4]  # the earlier end's is gone


def test_resuming_before_any_checkpoint_starts_the_records_over(tiny):
    settings = {**tiny, "task": "sts"}
    run_dir = tiny["run_dir"]
    run_stage("single", **settings, max_steps=3)
    for name in ("checkpoints", "last", "best"):  # as if killed before its first checkpoint
        shutil.rmtree(os.path.join(run_dir, name)) if name == "checkpoints" else os.unlink(os.path.join(run_dir, name))
    run_stage("single", **settings, max_steps=3, resume=True)
    assert loss_steps(run_dir) == [1, 2, 3]
    assert "nothing saved in" in open(os.path.join(run_dir, "run.log")).read()


def test_skipped_row_events_are_recorded_once_per_run(tiny, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(tiny["data_dir"], bad)
    with open(bad / "cs224n" / "ids-sst-train.csv", "a") as f:
        f.write("99\tzz\ta broken row\tseven\n")
    settings = {**tiny, "data_dir": str(bad), "task": "sst", "skip_bad_rows": True}
    run_stage("single", **settings, max_steps=2)
    run_stage("single", **settings, max_steps=3, resume=True)
    run_stage("single", **settings, max_steps=4, resume=True)
    events = [r for r in records(tiny["run_dir"]) if r.get("event") == "skipped_rows"]
    assert [(e["task"], e["split"], e["count"]) for e in events] == [("sst", "train", 1)]
    assert loss_steps(tiny["run_dir"]) == [1, 2, 3, 4]
