import os
import time

import pytest
import torch

from fastbert import BertConfig, BertModel
from fastbert.train import config, optim


def test_overrides_parse_like_yaml():
    o = config.parse_overrides(["--lr", "1e-5", "--tasks", "[sst, quora]", "--quora.encoder", "cross",
                                "--skip-bad-rows", "--max_steps=7", "--eval_limit", "{quora: 100}", "--init", "null"])
    assert o == {"lr": 1e-5, "tasks": ["sst", "quora"], "quora": {"encoder": "cross"}, "skip_bad_rows": True,
                 "max_steps": 7, "eval_limit": {"quora": 100}, "init": None}
    with pytest.raises(config.ConfigError, match="expected --key value"):
        config.parse_overrides(["lr", "1"])


def test_resolve_layers_defaults_recipe_overrides():
    cfg = config.resolve("multitask", {"lr": 3e-5, "quora": {"encoder": "cross"}}, {"quora": {"loss": "softmax"},
                                                                                   "tasks": "sst,quora"})
    assert cfg["lr"] == 3e-5 and cfg["quora"] == {"encoder": "cross", "loss": "softmax"}
    assert cfg["tasks"] == ["sst", "quora"] and cfg["stage"] == "multitask" and cfg["optimizer"] == "auto"
    single = config.resolve("single", None, {"task": "sts"})
    assert single["tasks"] == ["sts"]
    assert config.task_settings(single, "sts")["encoder"] == "bi"
    assert config.resolve("multitask")["tasks"] == ["sst", "quora", "sts"]  # the packaged recipe


@pytest.mark.parametrize("stage, recipe, overrides, message", [
    ("multitask", None, {"lrr": 1}, "unknown setting 'lrr'"),
    ("train", None, {}, "unknown stage 'train'"),
    ("single", None, {"tasks": ["sst", "sts"], "task": None}, "trains one task"),
    ("multitask", {"stage": "nli"}, {}, "the recipe is for stage 'nli'"),
    ("multitask", {}, {"sst": 3}, "task settings 'sst' must be a mapping"),
    ("nli", {"tasks": []}, {}, "needs tasks"),
    ("multitask", None, {"select_tasks": ["snli"]}, r"select_tasks: \['snli'\] not evaluated in this stage"),
])
def test_bad_settings(stage, recipe, overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.resolve(stage, recipe, overrides)


def test_packaged_recipes_resolve():
    names = [f[:-5] for f in os.listdir(config.RECIPES) if f.endswith(".yaml")]
    assert {"multitask", "pretrain", "nli", "contrastive", "single", "report1_best"} <= set(names)
    for name in names:
        recipe = config.load_recipe(name)
        if "chain" in recipe:
            for link in recipe["chain"]:
                config.resolve(link["stage"], config.merge({k: v for k, v in recipe.items()
                                                            if k not in ("chain", "stage")}, link))
        else:
            config.resolve(recipe["stage"], recipe)
    with pytest.raises(config.ConfigError, match="no recipe 'nope'"):
        config.load_recipe("nope")


def test_data_dir_setting_env_and_search(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBERT_DATA", str(tmp_path))
    assert config.data_dir({"data_dir": None}) == str(tmp_path)
    with pytest.raises(config.ConfigError, match="is not a directory"):
        config.data_dir({"data_dir": str(tmp_path / "nope")})
    monkeypatch.delenv("FASTBERT_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # a worktree two levels below the shared folder's parent
    found = config.data_dir({"data_dir": None})
    assert os.path.isdir(found) and found.endswith(os.path.join("shared", "data"))


def test_layer_wise_lr_decay_and_no_decay_groups():
    enc = BertModel(BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
    heads = torch.nn.Linear(16, 2)
    cfg = {**config.DEFAULTS, "lr": 1.0, "layer_decay": 0.5, "head_lr": 10.0, "weight_decay": 0.1}
    groups = optim.param_groups(enc, heads, cfg)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    layer = enc.encoder.layer
    assert lr_of[id(layer[2].attention.self.qkv.weight)] == 1.0
    assert lr_of[id(layer[1].output.dense.weight)] == 0.5 and lr_of[id(layer[0].output.dense.weight)] == 0.25
    assert lr_of[id(enc.embeddings.word_embeddings.weight)] == 0.125
    assert lr_of[id(enc.pooler.dense.weight)] == 1.0 and lr_of[id(heads.weight)] == 10.0
    assert wd_of[id(layer[0].output.LayerNorm.weight)] == 0.0 and wd_of[id(heads.bias)] == 0.0
    assert wd_of[id(layer[0].output.dense.weight)] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(enc.parameters())) + 2
    cpu = torch.device("cpu")
    opt = optim.build(groups, {**cfg, "optimizer": "adamw"}, cpu)
    assert isinstance(opt, torch.optim.AdamW) and not optim.clips_itself(opt)
    from fastbert.optim import FusedAdamW
    auto = optim.build(groups, cfg, cpu)  # auto: fastbert's where the extension is built, else torch's
    assert isinstance(auto, FusedAdamW if optim.has_fused_kernels(cpu) else torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        optim.build(groups, {**cfg, "optimizer": "sgd"}, cpu)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedules(kind):
    f = optim.schedule({"warmup": 0.1, "schedule": kind}, 100)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11) and f(10) == 1.0
    if kind == "constant":
        assert f(99) == 1.0
    else:
        assert f(55) == pytest.approx(0.5) and f(99) < 0.02
    assert optim.schedule({"warmup": 5, "schedule": kind}, 100)(4) == pytest.approx(5 / 6)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="busy_cores samples /proc/stat (Linux)")
def test_busy_cores_sees_a_spinning_process():
    import subprocess
    import sys

    from fastbert.train.stages import busy_cores
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)  # the interpreter is up and spinning
        assert busy_cores(0.5) >= 0.6  # one core busy (more if the machine is shared)
    finally:
        spin.kill()
        spin.wait()


def test_threads_setting():
    import torch

    from fastbert.train.stages import set_threads
    before = torch.get_num_threads()
    try:
        assert set_threads({"threads": 1}) == 1
        assert 1 <= set_threads({"threads": "auto"}) <= (os.cpu_count() or 1)
        assert set_threads({"threads": None}) >= 1
    finally:
        torch.set_num_threads(before)


def test_every_setting_has_a_rule_that_its_default_follows():
    assert set(config.RULES) == set(config.DEFAULTS)
    for key, value in config.DEFAULTS.items():
        config.check_value(key, value)
    for key, rules in config.SECTIONS.items():  # a mapping setting: a rule for each of its keys
        assert set(rules) == set(config.DEFAULTS[key])


def test_a_section_setting_merges_key_by_key():
    cfg = config.resolve("multitask", {"tasks": ["sst"], "smart": {"weight": 1.0}},
                         config.parse_overrides(["--smart.eps", "1e-3"]))
    assert cfg["smart"] == {**config.DEFAULTS["smart"], "weight": 1.0, "eps": 1e-3}


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.mark.parametrize("key, value, message", [
    ("lr", "-1", "setting lr: -1 is not allowed; expected a number >= 0"),
    ("lr", "abc", "setting lr: 'abc' is not allowed; expected a number >= 0"),
    ("batch_size", "0", "setting batch_size: 0 is not allowed; expected an integer >= 1"),
    ("batch_size", "2.5", "setting batch_size: 2.5 is not allowed; expected an integer >= 1"),
    ("routine", "nonsense", "setting routine: 'nonsense' is not allowed; expected one of sequential, additive"),
    pytest.param("precision", "fp16", "setting precision: 'fp16' is not allowed here: precision fp16 needs CUDA",
                 marks=NO_CUDA),
    ("tasks", "foo", "setting tasks: unknown task 'foo'; allowed: sst, quora"),
    ("optimizer", "foo", "setting optimizer: 'foo' is not allowed; expected one of auto, adamw, fused_adamw"),
    ("eval_limit", "0", "setting eval_limit: 0 is not allowed; expected an integer >= 1, a mapping"),
    ("log_every", "0", "setting log_every: 0 is not allowed; expected an integer >= 1"),
    ("max_length", "-5", "setting max_length: -5 is not allowed; expected an integer >= 1"),
    ("max_length", "0", "setting max_length: 0 is not allowed"),
    pytest.param("device", "cuda", "setting device: 'cuda' is not available here (0 CUDA devices)", marks=NO_CUDA),
    ("max_steps", "0", "setting max_steps: 0 is not allowed; expected an integer >= 1, or null (epochs decides)"),
    ("max_steps", "-3", "setting max_steps: -3 is not allowed"),
    ("threads", "0", "setting threads: 0 is not allowed; expected auto, an integer >= 1"),
    ("sts.batch_size", "0", "setting sts.batch_size: 0 is not allowed"),
    ("betas", "[0.9, 1.5]", "setting betas: [0.9, 1.5] is not allowed"),
    ("freeze_encoder", "[3]", "setting freeze_encoder: [3] is not allowed"),
    ("batching", "sorted", "setting batching: 'sorted' is not allowed; expected one of bucketed, random"),
    ("pack_tasks", "sometimes", "setting pack_tasks: 'sometimes' is not allowed; expected true or false"),
    ("malloc", "jemalloc", "setting malloc: 'jemalloc' is not allowed; expected one of keep, system"),
    ("smart.weight", "-1", "setting smart.weight: -1 is not allowed; expected a number >= 0"),
    ("smart.eps", "0", "setting smart.eps: 0 is not allowed; expected a number > 0"),
    ("smart.noise", "0", "setting smart.noise: 0 is not allowed; expected a number > 0"),
    ("smart.steps", "0", "setting smart.steps: 0 is not allowed; expected an integer >= 1"),
    ("smart.wieght", "1", "setting smart.wieght: unknown; expected one of weight, eps, step, noise, steps"),
    ("smart", "1", "setting smart: 1 is not allowed; expected a mapping with keys among weight, eps"),
])
def test_bad_values_fail_before_anything_loads_with_one_line(key, value, message, monkeypatch, capsys):
    from fastbert.train import __main__ as cli
    from fastbert.train import stages

    def never(*args, **kw):
        raise AssertionError("the model was built before the settings were checked")

    monkeypatch.setattr(stages, "build", never)
    monkeypatch.setattr(stages, "set_threads", never)
    assert cli.cli(["multitask", f"--{key}", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: " + message), err


def test_max_length_beyond_the_encoder_fails_before_it_loads(tiny, monkeypatch):
    from fastbert.train import run_stage, stages

    def never(*args, **kw):
        raise AssertionError("the model was built before max_length was checked")

    monkeypatch.setattr(stages, "build", never)
    with pytest.raises(config.ConfigError, match=r"setting max_length: 100000 is beyond the encoder's 512 positions "
                                                 r"\(setting model\); expected an integer in 1\.\.512"):
        run_stage("single", **{**tiny, "max_length": 100000}, task="sts")
    with pytest.raises(config.ConfigError, match=r"setting sts.max_length: 600 is beyond the encoder's 512"):
        run_stage("single", **tiny, task="sts", sts={"max_length": 600})


def test_recipe_floats_without_a_dot_and_broken_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 1e-5\nbetas: [0.9, 9.99E-1]\ntasks: [quora]\nquora: {encoder: cross}\n")
    recipe = config.load_recipe(str(path))  # (YAML 1.1 reads 1e-5 as a string)
    assert recipe == {"lr": 1e-5, "betas": [0.9, 0.999], "tasks": ["quora"], "quora": {"encoder": "cross"}}
    assert config.resolve("multitask", recipe)["lr"] == 1e-5
    path.write_text("lr: [1e-5\n")
    with pytest.raises(config.ConfigError, match=rf"{path}: not a YAML recipe \(") as e:
        config.load_recipe(str(path))
    assert "\n" not in str(e.value)


def test_every_task_setting_has_a_rule_that_its_default_follows():
    from fastbert import tasks
    for kind, record in tasks.KINDS.items():
        for key, value in record.defaults.items():
            config.check_value(f"{kind}.{key}", value, config.TASK_RULES[key])


@pytest.mark.parametrize("override, message", [
    ({"quora": {"encoder": "foo"}}, "setting quora.encoder: 'foo' is not allowed; expected one of bi, cross"),
    ({"quora": {"encoder": "cross", "loss": "mnr"}}, "setting quora: loss 'mnr' is not one of"),
    ({"quora": {"num_labels": 0}}, "setting quora.num_labels: 0 is not allowed; expected an integer >= 2"),
    ({"sts": {"dropout": 1.5}}, r"setting sts.dropout: 1.5 is not allowed; expected a number in \[0, 1\)"),
    ({"tasks": ["mlm"], "mlm": {"block_size": -1}}, "setting mlm.block_size: -1 is not allowed"),
    ({"tasks": ["mlm"], "mlm": {"mask_prob": 0}}, r"setting mlm.mask_prob: 0 is not allowed; expected a number in \(0"),
    ({"tasks": ["simcse"], "simcse": {"temperature": 0}}, "setting simcse.temperature: 0 is not allowed"),
])
def test_bad_task_settings_fail_in_resolve(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.resolve("multitask", None, override)
