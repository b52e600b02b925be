"""Checkpoints reload: evaluate / predict / pretrain --init|--resume on every kind of run, the command line's
settings win where they should, STS scores are clipped, cosine Quora heads carry their threshold, best/ is
weights only."""
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastbert.train import __main__ as cli
from fastbert.train import checkpoint, config, run_stage


def _common(tiny, tmp_path, name):
    return {**{k: tiny[k] for k in ("data_dir", "threads", "progress", "eval_batch_size")},
            "run_dir": str(tmp_path / name)}


def test_evaluate_takes_the_checkpoints_skip_bad_rows_unless_told(tiny, tmp_path, capsys):
    data = str(tmp_path / "data")
    shutil.copytree(tiny["data_dir"], data)
    dev_file = os.path.join(data, "cs224n", "quora-dev.csv")
    with open(dev_file, "a", encoding="utf-8") as f:
        f.write("99999\tbad-row\tWhat is it?\tWhat is it?\t\n")  # no label, as quora-dev.csv:2062
    bad_line = len(open(dev_file, encoding="utf-8").read().splitlines())
    trained = run_stage("multitask", **{**tiny, "data_dir": data}, max_steps=2, skip_bad_rows=True)
    ev = run_stage("evaluate", **{**_common(tiny, tmp_path, "ev"), "data_dir": data}, init=trained["run_dir"])
    assert set(ev["dev"]) == {"sst", "quora", "sts"}
    assert "skipped 1 bad rows" in open(os.path.join(ev["run_dir"], "run.log")).read()
    for stage in ("evaluate", "predict"):  # --skip_bad_rows false wins over the checkpoint's true
        capsys.readouterr()
        argv = [stage, "--init", trained["run_dir"], "--data_dir", data, "--run_dir", str(tmp_path / stage),
                "--threads", "1", "--progress", "false", "--skip_bad_rows", "false"]
        assert cli.cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {dev_file}:{bad_line}: "), err


def test_command_line_data_files_win_and_head_conflicts_are_errors(tiny, tmp_path):
    trained = run_stage("multitask", **tiny, max_steps=2, skip_bad_rows=True)
    src = os.path.join(tiny["data_dir"], "cs224n", "quora-dev.csv")
    lines = open(src, encoding="utf-8").read().splitlines(keepends=True)
    small = tmp_path / "quora-small.csv"
    small.write_text("".join(lines[:6]), encoding="utf-8")  # header + 5 pairs
    pred = run_stage("predict", **_common(tiny, tmp_path, "pr"), init=trained["run_dir"],
                     quora={"dev": str(small), "test": str(small)})
    names = {os.path.basename(p): p for p in pred["files"]}
    assert "para-test-output.csv" in names
    for split in ("dev", "test"):
        rows = open(names[f"para-{split}-output.csv"]).read().splitlines()[1:]
        assert [r.split(" , ")[0] for r in rows] == [ln.split("\t")[1] for ln in lines[1:6]]
    with pytest.raises(config.ConfigError, match=r"task 'sts': the checkpoint's head has encoder 'bi', not 'cross'"):
        run_stage("evaluate", **_common(tiny, tmp_path, "ev"), init=trained["run_dir"], sts={"encoder": "cross"})


def test_a_checkpoint_without_a_head_takes_the_command_lines_task_settings(tiny, tmp_path):
    # the run's settings mention sts as a cross-encoder, but it trained no sts head: evaluating sts on this
    # checkpoint is zero-shot cosine (bi-encoder, no parameters), not a random cross-encoder head
    trained = run_stage("single", **tiny, task="sst", max_steps=2, sts={"encoder": "cross"})
    ev = run_stage("evaluate", **_common(tiny, tmp_path, "ev"), init=trained["run_dir"], eval_tasks=["sts"])
    log = os.path.join(ev["run_dir"], "run.log")
    assert not os.path.exists(log) or "random" not in open(log).read()
    assert np.isfinite(ev["dev"]["sts"]["main"])


def test_mlm_checkpoints_reload(tiny, tmp_path):
    settings = {**tiny, "mlm": {"sources": ["sst", "sts"], "block_size": 32}}
    first = run_stage("pretrain", **settings, max_steps=2)
    head = load_file(os.path.join(first["run_dir"], "best", "model.safetensors"))["cls.predictions.bias"]
    again = run_stage("pretrain", **{**settings, "run_dir": str(tmp_path / "again"), "lr": 0.0},
                      init=first["run_dir"], max_steps=1)  # lr 0: the head it loaded is the head it saves
    torch.testing.assert_close(load_file(os.path.join(again["run_dir"], "best", "model.safetensors"))[
        "cls.predictions.bias"], head)
    resumed = run_stage("pretrain", **settings, max_steps=4, resume=True)
    assert resumed["step"] == 4
    ev = run_stage("evaluate", **_common(tiny, tmp_path, "ev"), init=first["run_dir"], skip_bad_rows=True)
    assert set(ev["dev"]) == {"sst", "quora", "sts"}


def test_chain_command_line_overrides_win_over_link_settings(tiny, tmp_path):
    recipe = {"batch_size": 2, "chain": [{"stage": "single", "task": "sst", "batch_size": 4},
                                         {"stage": "single", "task": "sts", "batch_size": 6}]}
    settings = {k: v for k, v in tiny.items() if k != "run_dir"}
    out = run_stage("chain", recipe, **settings, run_dir=str(tmp_path / "chain"), max_steps=1)
    for link in ("0-single", "1-single"):
        saved = config.load_recipe(os.path.join(out["run_dir"], link, "config.yaml"))
        assert saved["batch_size"] == tiny["batch_size"], link


def test_stage_help_lists_its_settings(capsys):
    assert cli.main(["multitask", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--routine additive" in out and "sequential | additive" in out and "--max_length 64" in out


def test_sts_predictions_are_clipped_to_the_score_range(tiny, tmp_path):
    from fastbert import MultitaskModel
    trained = run_stage("single", **tiny, task="sts", sts={"encoder": "cross"}, max_steps=1)
    model = MultitaskModel.from_pretrained(trained["run_dir"], precision="fp32")
    pairs = [("a cat sits", "a cat is sitting"), ("stocks fall", "the sun is hot")]
    for bias, expected in ((100.0, 5.0), (-100.0, 0.0)):
        model.heads["sts"].head[1].bias.data.fill_(bias)
        assert model.predict("sts", pairs).tolist() == [expected, expected]


def test_best_threshold():
    from fastbert.tasks.pair import best_threshold
    assert best_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert best_threshold(np.array([0.8, 0.9, 0.6, 0.7, 0.2]), np.array([0, 1, 1, 1, 0])) == pytest.approx(0.4)
    assert best_threshold(np.array([0.9, 0.8, 0.7, 0.2]), np.array([1, 0, 1, 0])) == pytest.approx(0.85)  # tie
    assert best_threshold(np.array([0.3, 0.3, 0.2]), np.array([1, 1, 1])) < 0.2  # all positive
    assert best_threshold(np.array([0.3, 0.2]), np.array([0, 0])) > 0.3  # all negative


def test_cosine_quora_head_stores_the_threshold_chosen_on_training_data(tiny, tmp_path):
    from fastbert import MultitaskModel
    from fastbert.tasks.pair import best_threshold
    trained = run_stage("single", **tiny, task="quora", quora={"loss": "mnr"}, skip_bad_rows=True, max_steps=3,
                        precision="fp32")
    heads = load_file(os.path.join(trained["run_dir"], "best", "heads.safetensors"))
    threshold = float(heads["quora.threshold"])
    assert trained["best"]["dev"]["quora"]["threshold"] == pytest.approx(threshold)
    table = open(os.path.join(trained["run_dir"], "dev_table.md")).read()
    assert f"quora: same when cos(u, v) > {threshold:.4f}" in table
    # it is the best cut of the training pairs' cosines
    model = MultitaskModel.from_pretrained(trained["run_dir"])
    from fastbert import tasks
    train = tasks.read_split("quora", tasks.task_config("quora"), "train", tiny["data_dir"], skipped=[])
    a, b = model.encode([e.texts[0] for e in train]), model.encode([e.texts[1] for e in train])
    cos = torch.nn.functional.cosine_similarity(a, b).numpy()
    assert threshold == pytest.approx(best_threshold(cos, np.array([e.label for e in train])), abs=1e-4)
    assert float(model.heads["quora"].threshold) == pytest.approx(threshold)
    pred = model.predict("quora", [e.texts for e in train])
    assert pred.tolist() == (torch.from_numpy(cos) > threshold).long().tolist()


def test_cosine_quora_threshold_is_chosen_on_training_pairs_the_run_left_out(tiny, tmp_path):
    import json

    from fastbert import MultitaskModel, tasks
    from fastbert.tasks.pair import best_threshold
    from fastbert.train import stages
    settings = {**tiny, "task": "quora", "quora": {"loss": "mnr"}, "skip_bad_rows": True, "precision": "fp32",
                "train_limit": {"quora": 12}}
    trained = run_stage("single", **settings, max_steps=2)
    # the split the run made: 12 pairs trained on, the threshold chosen on the others
    cfg = config.resolve("single", None, {**settings, "run_dir": str(tmp_path / "split")})
    model = stages.build(cfg, ["quora"])
    loaders, _ = stages.load_data(cfg, model, None, ["quora"], [])
    used, held = loaders["quora"].data.ids, model.tasks["quora"].calibration.data.ids
    every = {e.id: e for e in tasks.read_split("quora", tasks.task_config("quora"), "train", tiny["data_dir"],
                                                  skipped=[])}
    assert len(used) == 12 and not set(used) & set(held) and sorted([*used, *held]) == sorted(every)
    events = [json.loads(line) for line in open(os.path.join(trained["run_dir"], "metrics.jsonl"))]
    assert {"event": "calibration", "task": "quora", "pairs": len(held), "held_out": True} in events
    threshold = float(load_file(os.path.join(trained["run_dir"], "best", "heads.safetensors"))["quora.threshold"])
    assert trained["best"]["dev"]["quora"]["threshold"] == pytest.approx(threshold)
    table = open(os.path.join(trained["run_dir"], "dev_table.md")).read()
    assert f"quora: same when cos(u, v) > {threshold:.4f} (chosen on {len(held)} held-out training pairs)" in table
    ours = MultitaskModel.from_pretrained(trained["run_dir"])
    a, b = ours.encode([every[i].texts[0] for i in held]), ours.encode([every[i].texts[1] for i in held])
    cos = torch.nn.functional.cosine_similarity(a, b).numpy()
    assert threshold == pytest.approx(best_threshold(cos, np.array([every[i].label for i in held])), abs=1e-4)


def test_a_fixed_cosine_threshold_is_reported_as_set(tiny):
    trained = run_stage("single", **tiny, task="quora", quora={"loss": "cosine_mse", "threshold": 0.3},
                        skip_bad_rows=True, max_steps=1)
    table = open(os.path.join(trained["run_dir"], "dev_table.md")).read()
    assert "quora: same when cos(u, v) > 0.3000 (set by quora.threshold)" in table
    assert "calibration" not in open(os.path.join(trained["run_dir"], "metrics.jsonl")).read()


def test_best_holds_weights_only(tmp_path):
    run = str(tmp_path)
    steps = [os.path.join(run, "checkpoints", f"step-{i:08d}") for i in (1, 2, 3)]
    for d in steps:
        os.makedirs(d)
        for f in ("config.json", "model.safetensors", "trainer.pt"):
            open(os.path.join(d, f), "w").close()
    checkpoint.link(run, "best", steps[1])
    checkpoint.link(run, "last", steps[2])
    checkpoint.prune(run)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step-00000002", "step-00000003"]
    assert sorted(os.listdir(os.path.join(run, "best"))) == ["config.json", "model.safetensors"]
    assert "trainer.pt" in os.listdir(os.path.join(run, "last"))


def _sizes(directory):
    return {f: os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)}


def test_best_is_weights_only_when_it_is_the_last_step(tiny, tmp_path):
    trained = run_stage("single", **tiny, task="sst", max_steps=2)  # one evaluation, at the end: best is last
    run = trained["run_dir"]
    assert trained["best"]["step"] == 2
    best, last = _sizes(os.path.join(run, "best")), _sizes(os.path.join(run, "last"))
    assert "trainer.pt" not in best and "trainer.pt" in last
    assert best == {f: n for f, n in last.items() if f != "trainer.pt"}  # the same weights, nothing else
    assert sum(best.values()) < sum(last.values()) / 2  # the optimizer's two moments outweigh the weights
    resumed = run_stage("single", **tiny, task="sst", max_steps=3, resume=True)  # last/ still resumes
    assert resumed["step"] == 3 and "trainer.pt" not in os.listdir(os.path.join(run, "best"))
    assert len(os.listdir(os.path.join(run, "checkpoints"))) == 2
