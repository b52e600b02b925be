"""pack_tasks: additive and weighted steps run every task's batch through the encoder in one pass. Without
dropout its losses and every gradient (encoder and heads) are the per-task passes'; with dropout the tasks'
sequences keep distinct masks and a stopped run resumes exactly; frozen encoders, SMART and MLM run apart."""
import json
import os

import numpy as np
import pytest
import torch

from fastbert import BertConfig, BertModel, BertTokenizer, tasks
from fastbert.data.batching import Loader, concat
from fastbert.data.readers import Example
from fastbert.tasks.base import Encode
from fastbert.train import config, loop, run_stage, stages
from fastbert.train.run import open_run
from tests.train.conftest import TINY_MODEL

MIXES = {  # the tasks of a step: one view (sst, cross-encoders), two (bi-encoders), three (SimCSE triplets)
    "bi": {"tasks": ["sst", "quora", "sts"]},
    "cross": {"tasks": ["sst", "quora", "sts"], "quora": {"encoder": "cross"}, "sts": {"encoder": "cross"}},
    "triplets": {"tasks": ["simcse", "quora", "sts"], "quora": {"loss": "mnr"}},
}
NO_HEAD_DROPOUT = {t: {"dropout": 0.0} for t in ("sst", "quora", "sts")}
DROPOUT = {"model": {**TINY_MODEL, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}}  # encoder


def trainer(tiny, tmp_path, name, **settings) -> loop.Trainer:
    """A Trainer of the multitask stage on the tiny data and encoder (the encoder and heads seeded alike
    whatever the settings); no dev data."""
    overrides = config.merge({**tiny, "skip_bad_rows": True, "max_steps": 10, "run_dir": str(tmp_path / name),
                              **NO_HEAD_DROPOUT}, settings)
    torch.set_num_threads(1)
    cfg = config.resolve("multitask", {}, overrides)
    model = stages.build(cfg, cfg["tasks"])
    cfg = {**cfg, **{n: dict(model.tasks[n].cfg) for n in cfg["tasks"]}}
    loaders, _ = stages.load_data(cfg, model, None, cfg["tasks"], [])
    return loop.Trainer(cfg, open_run(cfg["run_dir"], cfg, True), model, loaders, {})


class Passes:
    """The encoder's forward calls: each one's number of sequences and dropout keys (None in eval mode)."""

    def __init__(self, encoder):
        self.calls = []
        encoder.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        n = len(kwargs["cu_seqlens"]) - 1 if kwargs.get("cu_seqlens") is not None else len(kwargs["input_ids"])
        keys = kwargs.get("dropout_keys")
        self.calls.append((n, keys.tolist() if keys is not None and module.training else None))


def grads(t: loop.Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.float().clone() for n, p in t.model.named_parameters() if p.grad is not None}


def assert_same_step(packed, apart, rtol, atol):
    """The losses and every gradient of one step (atol relative to the largest gradient of each parameter)."""
    values = packed.gradients(), apart.gradients()
    assert values[0].keys() == values[1].keys()
    for t in values[1]:
        assert values[0][t] == pytest.approx(values[1][t], rel=rtol, abs=atol), t
    got, want = grads(packed), grads(apart)
    unused = "encoder.pooler."  # mean pooling
    assert got.keys() == want.keys() == {n for n, _ in apart.model.named_parameters() if not n.startswith(unused)}
    for n in want:
        scale = float(want[n].abs().max())
        assert scale > 0, n
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=atol * scale, msg=n)


def set_history(t: loop.Trainer) -> None:
    """weighted: earlier losses, so the step's weights are not uniform."""
    t.routine.load_state_dict({"prev": {n: 2.0 + i for i, n in enumerate(t.tasks)}, "mean": {}})


@pytest.mark.parametrize("packed_data", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("routine", ["additive", "weighted"])
def test_one_pass_gives_the_per_task_losses_and_gradients(tiny, tmp_path, routine, mix, packed_data):
    settings = {**MIXES[mix], "routine": routine, "precision": "fp32", "packed": packed_data}
    packed, apart = (trainer(tiny, tmp_path, name, **settings, pack_tasks=on) for name, on in (("a", True),
                                                                                                ("b", False)))
    if routine == "weighted":
        set_history(packed), set_history(apart)
    passes = Passes(packed.model.encoder), Passes(apart.model.encoder)
    assert_same_step(packed, apart, rtol=1e-5, atol=1e-5)
    if routine == "weighted":
        w = list(packed.routine.info["weights"].values())
        assert w == pytest.approx(list(apart.routine.info["weights"].values()), abs=1e-5) and np.ptp(w) > 0.1
    sizes = [n for n, _ in passes[1].calls]  # one pass per task, or one for all
    assert len(sizes) == 3 and [n for n, _ in passes[0].calls] == [sum(sizes)]


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16"])
@pytest.mark.parametrize("routine", ["additive", "weighted"])
def test_one_pass_in_bf16(tiny, tmp_path, routine, precision):
    """bf16 autocast and bf16 weights: the same step within bf16 rounding (the passes' matmuls differ in
    size; tiny model: a bf16 matmul is a slow loop on a CPU without bf16 instructions)."""
    settings = {**MIXES["bi"], "routine": routine, "precision": precision, "optimizer": "fused_adamw"}
    packed, apart = (trainer(tiny, tmp_path, name, **settings, pack_tasks=on) for name, on in (("a", True),
                                                                                                ("b", False)))
    if routine == "weighted":
        set_history(packed), set_history(apart)
    passes = Passes(packed.model.encoder)
    assert_same_step(packed, apart, rtol=2e-2, atol=2e-2)
    assert len(passes.calls) == 1


def test_frozen_task_smart_and_the_setting_off_run_apart(tiny, tmp_path):
    """A task whose encoder is frozen at the step runs its own pass (no gradient, no dropout) beside the packed
    pass of the others; SMART, or pack_tasks false: every task its own pass, the per-task step itself."""
    frozen = trainer(tiny, tmp_path, "frozen", **MIXES["bi"], **DROPOUT, sts={"freeze_encoder": [0, 1]})
    assert [frozen.packs(t) for t in frozen.tasks] == [True, True, False]
    passes = Passes(frozen.model.encoder)
    frozen.step()
    (n, keys), (_, frozen_keys) = passes.calls
    assert n == 8 + 16 and len(keys) == n and frozen_keys is None  # sst + quora packed, then sts frozen (eval)
    assert [frozen.packs(t) for t in frozen.tasks] == [True, True, True]  # step 1: past [0, 1)
    frozen.step()
    assert len(passes.calls) == 3

    off = trainer(tiny, tmp_path, "off", **MIXES["bi"], pack_tasks=False)
    assert not any(off.packs(t) for t in off.tasks)
    passes = Passes(off.model.encoder)
    off.step()
    assert len(passes.calls) == 3

    smart = {"weight": 1.0, "eps": 0.1, "step": 0.1, "noise": 0.01, "steps": 1}
    on, off = (trainer(tiny, tmp_path, f"smart-{p}", **MIXES["bi"], **DROPOUT, smart=smart, pack_tasks=p)
               for p in (True, False))
    assert not any(on.packs(t) for t in on.tasks)
    torch.manual_seed(3)
    values = on.gradients()
    torch.manual_seed(3)
    assert values == off.gradients()
    got, want = grads(on), grads(off)
    assert got.keys() == want.keys() and all(torch.equal(g, want[n]) for n, g in got.items())  # one pass each


def test_only_tasks_whose_loss_is_loss_on_of_pooled_embeddings_pack():
    cfg = BertConfig(**TINY_MODEL)
    for name, settings, packable in [("sst", {}, True), ("quora", {"encoder": "cross"}, True), ("sts", {}, True),
                                     ("simcse", {}, True), ("mlm", {}, False)]:
        assert tasks.build(name, tasks.task_config(name, settings), cfg).packable is packable, name
    sst = tasks.build("sst", tasks.task_config("sst", {}), cfg)

    class OwnEmbedding(type(sst)):  # a task that pools its own way: the shared pass would skip its embed
        def embed(self, encode, batch, delta=None):
            return super().embed(encode, batch, delta) * 2

    own = object.__new__(OwnEmbedding)
    own.__dict__ = sst.__dict__
    assert not own.packable


def test_packed_pass_keys_tasks_apart(tiny, tmp_path):
    """With dropout every sequence of the pass has its own key: each task's keys moved past the tasks' before
    it (example index * views + view, below Loader.keys), so no two sequences share masks."""
    t = trainer(tiny, tmp_path, "keys", **MIXES["bi"], **DROPOUT)
    sizes = {n: s.loader.keys for n, s in t.data.streams.items()}
    assert t.key_offsets == {"sst": 0, "quora": sizes["sst"], "sts": sizes["sst"] + sizes["quora"]}
    passes = Passes(t.model.encoder)
    for _ in range(3):
        t.step()
    for n, keys in passes.calls:
        assert len(keys) == n and len(set(keys)) == n and max(keys) < sum(sizes.values())


def test_same_keys_in_one_pass_would_share_masks():
    """Why the keys move: two copies of a batch in one pass draw the same masks under the same keys, and other
    masks once the second copy's keys are moved up (and each copy's output is its own pass's without dropout)."""
    tok = BertTokenizer.from_pretrained()
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(**{**TINY_MODEL, "hidden_dropout_prob": 0.3}), backend="reference").train()
    ex = [Example(str(i), (f"a film {'so ' * i}good",), 1) for i in range(4)]
    batch = Loader(tasks.build("sst", tasks.task_config("sst"), encoder.config).encode(ex, tok, 32), tok,
                   4, shuffle=False).batch(np.arange(4))
    same = Encode(encoder).together([batch.packed().inputs, batch.packed().inputs])
    moved = Encode(encoder).together([batch.packed().inputs, batch.packed(key_offset=4).inputs])
    assert torch.equal(same[0].last_hidden_state, same[1].last_hidden_state)
    assert not torch.allclose(moved[0].last_hidden_state, moved[1].last_hidden_state)
    encoder.eval()
    alone = Encode(encoder)(batch.packed().inputs)
    both = Encode(encoder).together([batch.packed().inputs, batch.packed(key_offset=4).inputs])
    for out in both:
        torch.testing.assert_close(out.last_hidden_state, alone.last_hidden_state)
        torch.testing.assert_close(out.pooler_output, alone.pooler_output)
    joined = concat([batch.packed().inputs, batch.packed(key_offset=4).inputs])
    assert joined.cu_seqlens.tolist() == [0, *np.cumsum(batch.inputs.lengths.tolist() * 2)]
    assert joined.dropout_keys.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def losses(run_dir) -> dict:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_packed_run_with_dropout_resumes_exactly(tiny, tmp_path):
    """Dropout in the encoder and the heads: a packed run stopped mid-epoch (4 batches per task and epoch)
    resumes with the losses of a run never stopped; the per-task run draws other masks."""
    s = {**tiny, **MIXES["bi"], **DROPOUT, "routine": "additive", "skip_bad_rows": True, "precision": "fp32",
         "schedule": "constant"}
    reference = losses(run_stage("multitask", **{**s, "run_dir": str(tmp_path / "ref")}, max_steps=7)["run_dir"])
    part = str(tmp_path / "part")
    run_stage("multitask", **{**s, "run_dir": part}, max_steps=3)
    run_stage("multitask", **{**s, "run_dir": part}, max_steps=7, resume=True)
    assert losses(part) == reference and len(reference) == 7
    apart = losses(run_stage("multitask", **{**s, "run_dir": str(tmp_path / "apart")}, max_steps=1,
                             pack_tasks=False)["run_dir"])
    # the first task draws the same seeds under the same keys either way; the others' seeds are the pass's
    assert apart[1]["sst"] == reference[1]["sst"]
    assert all(apart[1][t] != pytest.approx(reference[1][t], rel=1e-4) for t in ("quora", "sts"))
