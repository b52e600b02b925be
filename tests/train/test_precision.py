"""precision bf16 (bf16 weights, fp32 masters in FusedAdamW) against bf16-autocast and fp32: the run learns,
follows the other precisions within bf16 tolerance, and its checkpoints hold the fp32 masters."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastbert.train import loop, run_stage
from fastbert.train.checkpoint import load_trainer


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["loss"]["sst"] for line in f if '"loss"' in line])


def test_bf16_weights_learn_like_autocast_and_fp32_and_save_masters(tiny, tmp_path):
    settings = {**tiny, "task": "sst", "optimizer": "fused_adamw", "max_steps": 12, "lr": 1e-3}
    runs = {p: run_stage("single", {**settings, "precision": p, "run_dir": str(tmp_path / p)})["run_dir"]
            for p in ("bf16", "bf16-autocast", "fp32")}
    bf16, autocast, fp32 = (losses(runs[p]) for p in ("bf16", "bf16-autocast", "fp32"))
    assert len(bf16) == 12 and bf16[-3:].mean() < bf16[:3].mean()
    assert not np.array_equal(bf16, fp32)  # really another precision
    # bf16 rounding of activations either way: the same trajectory within bf16 tolerance
    np.testing.assert_allclose(bf16, autocast, rtol=0.03, atol=0.02)
    np.testing.assert_allclose(bf16, fp32, rtol=0.03, atol=0.02)
    assert "precision bf16 -> bf16, optimizer fused_adamw -> fused_adamw" in open(
        os.path.join(runs["bf16"], "run.log")).read()

    last = os.path.join(runs["bf16"], "last")
    word = load_file(os.path.join(last, "model.safetensors"))["embeddings.word_embeddings.weight"]
    masters = [s["master_param"] for s in load_trainer(last)["optimizer"]["state"].values()
               if "master_param" in s and s["master_param"].shape == word.shape]  # (heads: fp32, none)
    assert word.dtype == torch.float32 and len(masters) == 1
    assert torch.equal(word, masters[0])  # the master itself, not its bf16 rounding
    assert not torch.equal(word, word.bfloat16().float())


def test_bf16_casts_encoder_keeps_sentence_heads_fp32(tiny):
    from fastbert.train import stages
    cfg = stages.config.resolve("single", None, {**tiny, "task": "sst"})
    model = stages.build(cfg, ["sst"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loop.to_precision(model, "bf16")
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if n.startswith("tasks.") else torch.bfloat16), n
        assert torch.equal(p, before[n].to(p.dtype))
