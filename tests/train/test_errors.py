"""User errors end the CLI with one line on stderr (no traceback, exit 2), naming the file or setting and the
cause; a failed command loses nothing that was saved."""
import os
import shutil
import subprocess
import sys

import pytest

from fastbert.train import __main__ as cli
from fastbert.train import run_stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(args, capsys):
    """The CLI's entry point in this process: (exit status, stderr)."""
    capsys.readouterr()
    rc = cli.cli(list(args))
    return rc, capsys.readouterr().err


def assert_one_line(rc, err, *fragments):
    """Exit 2, no traceback, and the error is the last line of stderr (above it: the run's progress log)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A finished two-step run (its checkpoint: `best` = `last`)."""
    from tests.train.conftest import TINY_MODEL
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    run_stage("single", model=TINY_MODEL, data_dir=tiny_data, threads=1, progress=False, batch_size=8,
              eval_batch_size=32, max_length=32, task="sst", max_steps=2, run_dir=run_dir)
    return run_dir


def copy_checkpoint(trained, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(os.path.realpath(os.path.join(trained, "best")), dst)
    return dst


def test_corrupt_and_truncated_checkpoint_files_are_one_line(trained, tiny_data, tmp_path, capsys):
    ckpt = copy_checkpoint(trained, tmp_path)
    heads = ckpt / "heads.safetensors"
    heads.write_bytes(b"\xff" * 8 + heads.read_bytes()[8:])  # a header length beyond the file
    args = ["evaluate", "--init", str(ckpt), "--data_dir", tiny_data, "--threads", "1", "--progress", "false",
            "--run_dir", str(tmp_path / "ev")]
    assert_one_line(*run_cli(args, capsys), str(heads), "cannot read task heads")

    ckpt = copy_checkpoint(trained, tmp_path / "b")
    model = ckpt / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    args[2] = str(ckpt)
    assert_one_line(*run_cli(args, capsys), str(model), "cannot read weights")
    with pytest.raises(cli.errors.CheckpointError, match="cannot read weights"):  # --debug: the traceback
        cli.cli(args + ["--debug"])


def test_cli_in_a_subprocess_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastbert.train", "multitask", "--lr", "abc", "--print_config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_one_line(proc.returncode, proc.stderr, "setting lr: 'abc' is not allowed; expected a number > 0")
    assert proc.stdout == ""


def test_setting_errors_are_one_line(tmp_path, capsys):
    assert_one_line(*run_cli(["finetune"], capsys), "unknown stage 'finetune'")
    assert_one_line(*run_cli(["multitask", "--resume", "--run_dir", str(tmp_path / "none"), "--data_dir",
                              str(tmp_path / "missing")], capsys), "data_dir")


@pytest.fixture
def file_size_limit():
    """set(n): files written beyond n bytes fail with EFBIG, as on a full disk (restored afterwards)."""
    import resource
    import signal
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, old_limit[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_names_the_file_and_keeps_the_last_checkpoint(trained, tiny_data, tmp_path, capsys,
                                                                 file_size_limit):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir, symlinks=True)
    before = os.path.realpath(run_dir / "last")
    saved = {f: (run_dir / "last" / f).read_bytes() for f in os.listdir(run_dir / "last")}
    # the logs and the weights fit, the trainer state (Adam moments: twice the weights) does not
    file_size_limit((run_dir / "last" / "model.safetensors").stat().st_size + 4096)
    args = ["single", "--resume", "--run_dir", str(run_dir), "--max_steps", "4", "--data_dir", tiny_data]
    assert_one_line(*run_cli(args, capsys), "cannot save checkpoint step 4",
                    os.path.join(str(run_dir), "checkpoints", ".tmp-step-00000004", "trainer.pt"), "File too large")
    assert os.path.realpath(run_dir / "last") == before  # nothing saved is lost
    assert {f: (run_dir / "last" / f).read_bytes() for f in os.listdir(run_dir / "last")} == saved
    assert not [d for d in os.listdir(run_dir / "checkpoints") if d.startswith(".tmp")]


def test_read_only_run_dir_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    from fastbert.train import run as run_mod

    def refuse(path, text):  # (tests may run as root, whom a read-only mode does not stop)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(run_mod, "atomic_write", refuse)
    from tests.train.conftest import TINY_MODEL
    run_dir = tmp_path / "ro"
    args = ["single", "--task", "sts", "--model", str(TINY_MODEL), "--data_dir", tiny_data, "--threads", "1",
            "--max_steps", "1", "--run_dir", str(run_dir)]
    assert_one_line(*run_cli(args, capsys), f"{run_dir}/config.yaml: Permission denied")


@pytest.mark.parametrize("file, key", [("model.safetensors", "encoder.layer.0.output.dense.weight"),
                                       ("heads.safetensors", "sst.")])
def test_non_finite_weights_are_refused_on_load_with_their_name(trained, tiny_data, tmp_path, capsys, file, key):
    import torch
    from safetensors.torch import load_file, save_file
    ckpt = copy_checkpoint(trained, tmp_path)
    state = load_file(ckpt / file)
    name = next(k for k in state if k.startswith(key) and state[k].is_floating_point())
    state[name][0] = float("nan")
    save_file(state, ckpt / file)
    args = ["evaluate", "--init", str(ckpt), "--data_dir", tiny_data, "--threads", "1", "--progress", "false",
            "--run_dir", str(tmp_path / "ev")]
    assert_one_line(*run_cli(args, capsys), f"{ckpt / file}: tensor {name} holds", "non-finite")
    assert not os.path.exists(tmp_path / "ev" / "dev_table.md")  # no table of a broken model
    assert torch.isnan(load_file(ckpt / file)[name]).any()  # (the file as it was)


def test_a_nan_dev_score_is_beaten_by_any_later_one(tiny, monkeypatch):
    import math

    from fastbert.tasks import metrics
    calls, pearson = {"n": 0}, metrics.pearson

    def first_nan(pred, gold):
        calls["n"] += 1
        return math.nan if calls["n"] == 1 else pearson(pred, gold)

    monkeypatch.setattr(metrics, "pearson", first_nan)
    result = run_stage("single", **{**tiny, "eval_every": 1}, task="sts", max_steps=3)
    assert math.isfinite(result["best"]["score"]) and result["best"]["step"] > 1
