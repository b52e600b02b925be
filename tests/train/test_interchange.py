"""A run continues with another optimizer or precision than it was saved with (fused_adamw <-> adamw,
bf16 weights <-> fp32 weights), and a resume that fails leaves the saved settings and metrics as they were."""
import json
import os
import re

import pytest
import torch
import yaml

from fastbert import BertConfig, BertModel
from fastbert.errors import CheckpointError
from fastbert.train import config, optim, run_stage


def tiny_encoder():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=16), backend="reference")


def step(opt, model, cast=None):
    """One step on a loss that leaves the pooler without a gradient (as mean pooling does)."""
    opt.zero_grad()
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.float().pow(2).mean().backward()
    opt.step()


CFG = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0, "head_lr": None,
       "layer_decay": 1.0}


@pytest.mark.parametrize("saver, saved_bf16, loader, loaded_bf16", [  # (bf16 weights need fused_adamw's masters)
    ("fused_adamw", True, "adamw", False), ("fused_adamw", True, "fused_adamw", False),
    ("adamw", False, "fused_adamw", True), ("fused_adamw", False, "fused_adamw", True),
    ("fused_adamw", False, "adamw", False), ("adamw", False, "adamw", False),
    ("fused_adamw", True, "fused_adamw", True)])
def test_optimizer_state_loads_across_optimizers_and_precisions(saver, saved_bf16, loader, loaded_bf16):
    cpu = torch.device("cpu")
    a = tiny_encoder()
    opt = optim.build(optim.param_groups(a, torch.nn.Module(), CFG), {**CFG, "optimizer": saver}, cpu)
    if saved_bf16:
        opt.cast_params(torch.bfloat16)
    step(opt, a)
    saved = opt.state_dict()
    pooler = [i for i, s in saved["state"].items() if "step" not in s]
    assert len(pooler) == (2 if saved_bf16 else 0)  # the pooler's states hold only their master copies

    b = tiny_encoder()  # the checkpoint's weights (fp32: what checkpoints save) in a fresh model
    with torch.no_grad():
        for p, q in zip(b.parameters(), a.parameters()):
            p.copy_(opt.state[q]["master_param"] if "master_param" in opt.state[q] else q.float())
    fp32 = {p: p.detach().clone() for p in b.parameters()}
    new = optim.build(optim.param_groups(b, torch.nn.Module(), CFG), {**CFG, "optimizer": loader}, cpu)
    if loaded_bf16:
        new.cast_params(torch.bfloat16)
    optim.load_state(new, saved)
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    for i, p in zip(ids, [p for g in new.param_groups for p in g["params"]]):
        state, s = new.state.get(p, {}), saved["state"].get(i, {})
        if "step" in s:
            torch.testing.assert_close(state["exp_avg"].float(), s["exp_avg"].float())
            assert float(state["step"]) == float(s["step"])
        else:
            assert "step" not in state and "exp_avg" not in state
        assert ("master_param" in state) == loaded_bf16, i
        if loaded_bf16:  # the exact fp32 values, not their bf16 roundings
            assert torch.equal(state["master_param"], fp32[p]), i
    step(new, b)  # (torch's AdamW raised KeyError: 'step' on the pooler's master-only state)
    assert all(torch.isfinite(p).all() for p in b.parameters())
    assert new.param_groups[0].get("fused", None) == (True if loader == "adamw" else None)


def steps(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if '"loss"' in line]


def test_a_run_resumes_with_another_optimizer_and_precision_both_ways(tiny, monkeypatch):
    settings = {**tiny, "task": "sts", "eval_every": 2, "log_every": 1}
    run_stage("single", **settings, max_steps=2, optimizer="fused_adamw", precision="bf16")
    run_dir = tiny["run_dir"]
    run_stage("single", **settings, max_steps=4, optimizer="adamw", precision="bf16-autocast", resume=True)
    assert yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["optimizer"] == "adamw"
    result = run_stage("single", **settings, max_steps=6, optimizer="fused_adamw", precision="bf16", resume=True)
    assert result["step"] == 6 and steps(run_dir) == [1, 2, 3, 4, 5, 6]
    monkeypatch.setattr(optim, "has_fused_kernels", lambda device: False)  # the extension gone: auto is torch's
    result = run_stage("single", **settings, max_steps=8, optimizer="auto", precision="auto", resume=True)
    assert result["step"] == 8 and steps(run_dir) == list(range(1, 9))
    assert "optimizer auto -> adamw" in open(os.path.join(run_dir, "run.log")).read()


def test_a_failed_resume_leaves_the_saved_settings_and_metrics(tiny):
    settings = {**tiny, "task": "sts"}
    run_stage("single", **settings, max_steps=2)
    run_dir = tiny["run_dir"]
    before = {f: open(os.path.join(run_dir, f), "rb").read() for f in ("config.yaml", "metrics.jsonl")}
    trainer = os.path.join(os.path.realpath(os.path.join(run_dir, "last")), "trainer.pt")
    data = open(trainer, "rb").read()
    open(trainer, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{re.escape(trainer)}: cannot read the trainer state"):
        run_stage("single", **{**settings, "lr": 1e-4}, max_steps=4, resume=True)
    assert {f: open(os.path.join(run_dir, f), "rb").read() for f in ("config.yaml", "metrics.jsonl")} == before
    open(trainer, "wb").write(data)
    run_stage("single", **{**settings, "lr": 1e-4}, max_steps=4, resume=True)
    assert yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["lr"] == 1e-4


def test_a_resume_that_changes_the_tasks_or_routine_is_refused_with_one_line(tiny):
    settings = {**tiny, "tasks": ["sts", "sst"]}
    run_stage("multitask", **settings, max_steps=2)
    run_dir = tiny["run_dir"]
    before = open(os.path.join(run_dir, "config.yaml")).read()
    last = os.path.realpath(os.path.join(run_dir, "last"))
    with pytest.raises(config.ConfigError, match=rf"setting routine: 'pcgrad' is not the resumed run's 'additive' "
                                                 rf"\({re.escape(last)}\)"):
        run_stage("multitask", **settings, max_steps=3, routine="pcgrad", resume=True)  # (KeyError: 'rng' before)
    with pytest.raises(config.ConfigError, match=r"setting tasks: \['sts', 'quora'\] is not the resumed run's"):
        run_stage("multitask", **{**settings, "tasks": ["sts", "quora"]}, max_steps=3, resume=True)
    with pytest.raises(config.ConfigError, match=r"setting select_tasks: \['sts'\] is not the resumed run's None"):
        run_stage("multitask", **settings, max_steps=3, select_tasks=["sts"], resume=True)  # the best's score
    assert open(os.path.join(run_dir, "config.yaml")).read() == before
