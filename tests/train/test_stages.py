"""Every stage and routine end to end on tiny slices: the loss falls and the run directory is complete."""
import json
import os

import numpy as np
import pytest
import torch
import yaml

from fastbert.train import run_stage
from fastbert.train.config import ConfigError
from fastbert.train.loop import NonFiniteError

RUN_FILES = ["config.yaml", "metrics.jsonl", "run.log", "curves.png", "dev_table.md"]
CKPT_FILES = ["config.json", "model.safetensors", "heads.safetensors", "trainer.pt", "fastbert.yaml", "tokenizer.json"]


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_complete(run_dir):
    for f in RUN_FILES:
        assert os.path.getsize(os.path.join(run_dir, f)) > 0, f
    for link in ("best", "last"):
        for f in CKPT_FILES:
            assert os.path.exists(os.path.join(run_dir, link, f)) == (link == "last" or f != "trainer.pt"), (link, f)
    assert len(os.listdir(os.path.join(run_dir, "checkpoints"))) <= 2


def assert_learns(run_dir, tasks, k=3):
    """Every task's mean loss over its last k steps is below its mean over its first k."""
    recs = [r for r in records(run_dir) if "loss" in r]
    for t in tasks:
        losses = [r["loss"][t] for r in recs if t in r["loss"]]
        assert len(losses) >= 2 * k, (t, losses)
        assert np.mean(losses[-k:]) < np.mean(losses[:k]), (t, losses)


@pytest.mark.parametrize("routine", ["sequential", "additive", "parallel", "weighted", "stochastic", "pcgrad"])
def test_multitask_routines(tiny, routine):
    one_task = routine in ("sequential", "parallel", "stochastic")  # a step trains one task: more steps
    result = run_stage("multitask", **tiny, routine=routine, max_steps=24 if one_task else 12, skip_bad_rows=True,
                       standardize=routine == "weighted")
    run_dir = result["run_dir"]
    assert_complete(run_dir)
    assert_learns(run_dir, ["sst", "quora", "sts"], k=2 if one_task else 3)
    dev = result["best"]["dev"]
    assert set(dev) == {"sst", "quora", "sts"} and all(np.isfinite(m["main"]) for m in dev.values())
    table = open(os.path.join(run_dir, "dev_table.md")).read()
    assert "| sst | accuracy |" in table and "| sts | pearson |" in table and "| mean |" in table


@pytest.mark.parametrize("stage, settings, tasks", [
    ("pretrain", {"mlm": {"sources": ["sst", "sts"], "block_size": 32}}, ["mlm"]),
    ("nli", {}, ["snli"]),
    ("contrastive", {"simcse": {"temperature": 0.5}, "batch_size": 4}, ["simcse"]),
    ("single", {"task": "sst", "precision": "bf16", "packed": True}, ["sst"]),
    ("single", {"task": "quora", "quora": {"encoder": "cross"}, "skip_bad_rows": True}, ["quora"]),
    ("single", {"task": "sts", "sts": {"encoder": "cross"}, "layer_decay": 0.8}, ["sts"]),
])
def test_training_stages(tiny, stage, settings, tasks):
    result = run_stage(stage, **{**tiny, **settings}, max_steps=12)
    assert_complete(result["run_dir"])
    assert_learns(result["run_dir"], tasks)


def test_frozen_encoder_trains_heads_only(tiny):
    # no head dropout: over 12 steps of a head alone its noise can outweigh the descent (seed 0 does)
    result = run_stage("multitask", **tiny, tasks=["sst", "quora"], freeze_encoder=True, max_steps=12,
                       skip_bad_rows=True, sst={"dropout": 0.0}, quora={"dropout": 0.0})
    from safetensors.torch import load_file
    from fastbert.train.checkpoint import load_trainer
    run_dir = result["run_dir"]
    assert_learns(run_dir, ["sst", "quora"])
    state = load_trainer(os.path.join(run_dir, "last"))["optimizer"]["state"]
    heads = load_file(os.path.join(run_dir, "last", "heads.safetensors"))
    stepped = [s for s in state.values() if "step" in s]  # (bf16 weights: the encoder's masters are state too)
    assert len(stepped) == len(heads)  # only head parameters ever got gradients


def test_evaluate_and_predict_files(tiny, tmp_path):
    trained = run_stage("multitask", **tiny, max_steps=3, skip_bad_rows=True)
    common = {k: tiny[k] for k in ("data_dir", "threads", "progress", "eval_batch_size")}
    ev = run_stage("evaluate", **common, init=trained["run_dir"], run_dir=str(tmp_path / "ev"), skip_bad_rows=True)
    for t, m in trained["best"]["dev"].items():  # the same checkpoint, the same numbers
        assert ev["dev"][t]["main"] == pytest.approx(m["main"], abs=1e-6)
    pred = run_stage("predict", **common, init=trained["run_dir"], run_dir=str(tmp_path / "pr"), skip_bad_rows=True)
    names = sorted(os.path.basename(p) for p in pred["files"])
    assert names == ["para-dev-output.csv", "sst-dev-output.csv", "sst-test-output.csv", "sts-dev-output.csv",
                     "sts-test-output.csv"]
    from tests._data import read_tsv_column
    for path in pred["files"]:
        name = os.path.basename(path)
        lines = open(path).read().split("\n")
        header = {"sst": "id \t Predicted_Sentiment ", "para": "id \t Predicted_Is_Paraphrase ",
                  "sts": "id \t Predicted_Similiarity "}[name.split("-")[0]]
        assert lines[0] == header and lines[-1] == ""
        rows = [line.split(" , ") for line in lines[1:-1]]
        src = {"sst-dev": "ids-sst-dev.csv", "sst-test": "ids-sst-test-student.csv", "para-dev": "quora-dev.csv",
               "sts-dev": "sts-dev.csv", "sts-test": "sts-test-student.csv"}["-".join(name.split("-")[:2])]
        ids = [r[0] for r in read_tsv_column(os.path.join(tiny["data_dir"], "cs224n", src), "id")]
        assert [r[0] for r in rows] == ids
        values = [r[1].rstrip(" ") + "" for r in rows]
        assert all(r[1].endswith(" ") for r in rows)
        if name.startswith("sst"):
            assert {int(v) for v in values} <= set(range(5))
        elif name.startswith("para"):
            assert set(values) <= {"0.0", "1.0"}
        else:
            assert all(np.isfinite(float(v)) for v in values)


def test_checkpoint_loads_in_transformers(tiny):
    transformers = pytest.importorskip("transformers")
    from fastbert import BertModel, BertTokenizer
    result = run_stage("single", **tiny, task="sts", max_steps=2)
    best = os.path.join(result["run_dir"], "best")
    ours = BertModel.from_pretrained(best).eval()
    hf = transformers.BertModel.from_pretrained(best, add_pooling_layer=True).eval()
    tok = BertTokenizer.from_pretrained(best)
    batch = tok(["a lovely film", "no"])
    with torch.no_grad():
        a = ours(**batch.model_inputs()).last_hidden_state
        b = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
               token_type_ids=batch.token_type_ids).last_hidden_state * batch.attention_mask[..., None]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_rows_stop_the_run_or_are_counted(tiny, tmp_path):
    import shutil

    from fastbert.data.readers import DataError
    bad = tmp_path / "data"
    shutil.copytree(tiny["data_dir"], bad)
    with open(bad / "cs224n" / "ids-sst-train.csv", "a") as f:
        f.write("99\tzz\ta broken row\tseven\n")
    lines = sum(1 for _ in open(bad / "cs224n" / "ids-sst-train.csv"))
    with pytest.raises(DataError, match=rf"ids-sst-train\.csv:{lines}: unparsable label 'seven'"):
        run_stage("single", **{**tiny, "data_dir": str(bad)}, task="sst", max_steps=2)
    result = run_stage("single", **{**tiny, "data_dir": str(bad), "run_dir": str(tmp_path / "r2")}, task="sst",
                       max_steps=2, skip_bad_rows=True)
    log = open(os.path.join(result["run_dir"], "run.log")).read()
    assert f"sst train: skipped 1 bad rows: {bad}/cs224n/ids-sst-train.csv:{lines}: unparsable label" in log
    event = [r for r in records(result["run_dir"]) if r.get("event") == "skipped_rows"]
    assert event and event[0]["count"] == 1


def test_non_finite_loss_is_reported_with_its_step(tiny, monkeypatch):
    from fastbert.tasks.similarity import Similarity
    calls = {"n": 0}
    original = Similarity.loss

    def flaky(self, encode, batch):
        calls["n"] += 1
        value = original(self, encode, batch)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(Similarity, "loss", flaky)
    with pytest.raises(NonFiniteError, match=r"step 3: task sts loss is nan"):
        run_stage("single", **tiny, task="sts", max_steps=5)


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient: a finite loss whose backward goes wrong."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


@pytest.mark.parametrize("optimizer", ["adamw", "fused_adamw"])
def test_non_finite_gradient_is_reported_with_its_step(tiny, monkeypatch, optimizer):
    if optimizer == "fused_adamw":
        pytest.importorskip("fastbert.optim")
    from fastbert.tasks.classify import Classify
    calls = {"n": 0}
    original = Classify.loss

    def poisoned(self, encode, batch):
        calls["n"] += 1
        value = original(self, encode, batch)
        return NanGrad.apply(value) if calls["n"] == 3 else value

    monkeypatch.setattr(Classify, "loss", poisoned)
    with pytest.raises(NonFiniteError, match=r"step 3: gradient norm is nan"):
        run_stage("single", **tiny, task="sst", max_steps=5, optimizer=optimizer)


def test_chain_carries_the_encoder_and_heads(tiny, tmp_path):
    recipe = {"chain": [{"stage": "single", "task": "quora", "skip_bad_rows": True, "quora": {"encoder": "cross"}},
                        {"stage": "single", "task": "sst", "eval_tasks": ["quora"], "freeze_encoder": True,
                         "skip_bad_rows": True}]}
    out = run_stage("chain", recipe, **{k: v for k, v in tiny.items() if k != "run_dir"},
                    run_dir=str(tmp_path / "chain"), max_steps=4)
    root = out["run_dir"]
    assert sorted(os.listdir(root)) == ["0-single", "1-single", "dev_table.md"]
    with open(os.path.join(root, "1-single", "config.yaml"), encoding="utf-8") as f:
        init = yaml.safe_load(f)["init"]  # link 0's best checkpoint itself, not the `best` link to it
    assert init == os.path.realpath(os.path.join(root, "0-single", "best")) and not os.path.islink(init)
    first = records(os.path.join(root, "0-single"))
    final = [r for r in records(os.path.join(root, "1-single")) if "final" in r][0]["final"]["dev"]
    quora_first = [r for r in first if "final" in r][0]["final"]["dev"]["quora"]["main"]
    assert final["quora"]["main"] == pytest.approx(quora_first)  # the frozen encoder and carried head score the same
    table = open(os.path.join(root, "dev_table.md")).read()
    assert "| sst |" in table and "| quora |" in table


def test_chain_checks_every_link_before_the_first_trains(tiny, tmp_path):
    recipe = {"chain": [{"stage": "single", "task": "sst", "skip_bad_rows": True},
                        {"stage": "single", "task": "sts", "routine": "sideways"}]}
    root = tmp_path / "chain"
    with pytest.raises(ConfigError, match=r"^chain link 1 \(single\): setting routine: 'sideways' is not allowed"):
        run_stage("chain", recipe, **{k: v for k, v in tiny.items() if k != "run_dir"}, run_dir=str(root),
                  max_steps=2)
    assert not (root / "0-single").exists()  # nothing trained, nothing to lose


def test_fp16_loss_scaling_skips_overflowing_steps(tiny, monkeypatch):
    # fp16 autocast + GradScaler, exercised on CPU (the run refuses fp16 on CPU; CUDA is where it belongs)
    from fastbert.tasks.classify import Classify
    from fastbert.train import loop
    monkeypatch.setattr(loop, "precision", lambda cfg, device: "fp16")
    calls = {"n": 0}
    original = Classify.loss

    def overflowing(self, encode, batch):
        calls["n"] += 1
        return original(self, encode, batch) * (1e30 if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(Classify, "loss", overflowing)
    result = run_stage("single", **tiny, task="sst", max_steps=6)
    recs = [r for r in records(result["run_dir"]) if "loss" in r]
    assert [r["skipped_steps"] for r in recs] == [0, 0, 1, 1, 1, 1]
    assert recs[2]["loss_scale"] == recs[1]["loss_scale"] / 2


def test_select_tasks_picks_the_best_checkpoint_by_their_dev_mean(tiny):
    """Two tasks trained, the best checkpoint chosen by one of them (an auxiliary task's metric does not count)."""
    result = run_stage("multitask", **{**tiny, "eval_every": 2}, tasks=["sst", "sts"], select_tasks="sts", max_steps=6)
    evals = [r for r in records(result["run_dir"]) if "score" in r]
    assert len(evals) == 3 and all(r["score"] == r["dev"]["sts"]["main"] for r in evals)
    assert result["best"]["score"] == max(r["dev"]["sts"]["main"] for r in evals)
    assert "chosen on the dev mean of sts" in open(os.path.join(result["run_dir"], "dev_table.md")).read()
    aux = {"kind": "classify", "num_labels": 5, "train": "cs224n/ids-sst-train.csv", "text": ["sentence"],
           "label": "sentiment"}  # a task without a dev file
    with pytest.raises(ConfigError, match=r"select_tasks: 'aux' has no dev data .*\(aux.dev is not set\)$"):
        run_stage("multitask", **{**tiny, "run_dir": tiny["run_dir"] + "2"}, tasks=["sst", "aux"], aux=aux,
                  select_tasks=["sst", "aux"], max_steps=2)
    assert not os.path.exists(tiny["run_dir"] + "2")  # refused before anything loads
    with pytest.raises(ConfigError, match=r"select_tasks: 'mlm' has no dev data .*\(mlm.holdout is 0\)$"):
        run_stage("multitask", **{**tiny, "run_dir": tiny["run_dir"] + "3"}, tasks=["sst", "mlm"],
                  mlm={"holdout": 0.0}, select_tasks=["mlm"], max_steps=2)
    with pytest.raises(ConfigError, match="setting select_tasks: unknown task 'sstt'"):
        run_stage("evaluate", **tiny, init=result["run_dir"], select_tasks=["sstt"])
