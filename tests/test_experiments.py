"""The experiments layer end to end on a tiny table: run (a subprocess of the driver per row), record,
skip on rerun, refuse a broken run without --resume, render RESULTS.md from the records."""
import json
import os

import pytest
import yaml

from fastbert.experiments import __main__ as cli
from fastbert.experiments import records, runner, specs

FILES = ["cs224n/ids-sst-train.csv", "cs224n/ids-sst-dev.csv", "cs224n/quora-train.csv", "cs224n/quora-dev.csv",
         "cs224n/sts-train.csv", "cs224n/sts-dev.csv"]
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture
def table(data_dir, tmp_path):
    """A two-row spec on 24-row slices of the task files and a tiny random encoder; returns its path."""
    tiny = tmp_path / "data"
    for name in FILES:
        os.makedirs(tiny / os.path.dirname(name), exist_ok=True)
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            (tiny / name).write_text("".join(next(f) for _ in range(25)), encoding="utf-8")
    spec = {"title": "Tiny", "source": "nowhere, Table 0",
            "common": {"model": TINY_MODEL, "data_dir": str(tiny), "max_steps": 2, "batch_size": 4,
                       "eval_batch_size": 16, "max_length": 32, "warmup": 0, "log_every": 1, "train_limit": 16,
                       "eval_limit": 12},
            "rows": [{"name": "additive", "stage": "multitask", "overrides": {"tasks": ["sst", "quora", "sts"]},
                      "report": {"sst": 0.5, "quora": 0.8, "sts": 0.7}},
                     {"name": "sts-only", "stage": "single", "overrides": {"task": "sts"}}]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


def test_run_record_skip_render(table, tmp_path, capsys):
    root = str(tmp_path / "out")
    assert cli.main(["run", table, "--root", root]) == 0
    path = records.record_path(root, "tiny", "additive", 0)
    rec = json.load(open(path, encoding="utf-8"))
    assert set(rec["dev"]) == {"sst", "quora", "sts"} and rec["steps"] == 2
    assert rec["dev_mean"] == pytest.approx(sum(rec["dev"].values()) / 3)
    assert rec["command"].startswith("python -m fastbert.train multitask ") and "--max_steps 2" in rec["command"]
    assert rec["wall_s"] > 0 and rec["cpu_s"] > 0 and len(rec["commit"]) == 40 and isinstance(rec["dirty"], bool)
    assert rec["curve"] and rec["curve"][-1][1] == 2  # dev at the last step
    assert set(json.load(open(records.record_path(root, "tiny", "sts-only", 0), encoding="utf-8"))["dev"]) == {"sts"}

    assert rec["eval_limit"] == 12 and rec["train_limit"] == 16

    # a finished run whose record was lost is recorded again from its run directory, not rerun
    os.remove(path)
    assert cli.main(["run", table, "--root", root, "--rows", "additive"]) == 0
    assert json.load(open(path, encoding="utf-8"))["attempts"] == 1
    before = os.path.getmtime(path)
    capsys.readouterr()
    assert cli.main(["run", table, "--root", root]) == 0
    assert "skipping" in capsys.readouterr().out and os.path.getmtime(path) == before

    # a run directory without a record is a broken run: refused unless --resume
    records.add_attempt(os.path.join(root, runner.run_dir("tiny", "additive", 1)), {"wall_s": 1, "cpu_s": 1})
    with pytest.raises(runner.RunError, match="--resume"):
        cli.main(["run", table, "--root", root, "--seeds", "2", "--rows", "additive"])

    assert cli.main(["render", "--root", root, "--spec", table]) == 0
    text = open(os.path.join(root, "RESULTS.md"), encoding="utf-8").read()
    line = next(x for x in text.splitlines() if x.startswith("| additive"))
    assert f"{rec['dev']['sst']:.3f}" in line and f"{rec['dev_mean']:.3f}" in line and "| 0.667 |" in line
    assert "Not run yet** (no record): none" in text and "--max_steps 2" in text
    assert os.path.exists(os.path.join(root, "results", "tiny.png"))

    # a same_as row is the named row's run: not run again, shown from that table's record
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"title": "Other", "rows": [{"name": "mine", "same_as": "tiny/additive"}]}))
    capsys.readouterr()
    assert cli.main(["run", str(other), "--root", root]) == 0
    assert "tiny/additive seed 0: recorded" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(root, "results", "records", "other"))
    assert cli.main(["render", "--root", root, "--spec", str(other)]) == 0
    text = open(os.path.join(root, "RESULTS.md"), encoding="utf-8").read()
    assert next(x for x in text.splitlines() if x.startswith("| mine")).count(f"{rec['dev_mean']:.3f}") == 1
    assert "the run of tiny/additive" in text

    # an attempt whose times were lost (its runner killed outright) makes the times a lower bound: ≥
    assert rec["times_complete"] and "≥" not in text
    rdir = os.path.join(root, runner.run_dir("tiny", "additive", 0))
    lost = {**records.read_attempts(rdir)[0], "returncode": None, "wall_s": None, "cpu_s": None}
    records._write_attempts(rdir, [lost] + records.read_attempts(rdir))
    os.remove(path)
    assert cli.main(["run", table, "--root", root, "--rows", "additive"]) == 0
    again = json.load(open(path, encoding="utf-8"))
    assert not again["times_complete"] and again["attempts"] == 2 and again["cpu_s"] == rec["cpu_s"]
    assert cli.main(["render", "--root", root, "--spec", table]) == 0
    text = open(os.path.join(root, "RESULTS.md"), encoding="utf-8").read()
    assert f"| ≥ {rec['cpu_s']:.0f} |" in next(x for x in text.splitlines() if x.startswith("| additive"))


def test_spec_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{"name": "a", "stage": "single", "report": {"snli": 0.5}}]}))
    with pytest.raises(specs.SpecError, match="report takes numbers"):
        specs.load(str(bad))
    with pytest.raises(specs.SpecError, match="no table"):
        specs.load("no-such-table")
    bad.write_text(yaml.safe_dump({"rows": [{"name": "a", "same_as": "report1-t4/additive", "stage": "single"}]}))
    with pytest.raises(specs.SpecError, match="same_as"):
        specs.load(str(bad))
    bad.write_text(yaml.safe_dump({"rows": [{"name": "a", "same_as": "report1-t4/nope"}]}))
    spec = specs.load(str(bad))
    with pytest.raises(specs.SpecError, match="no row 'nope'"):
        specs.target(spec, spec.rows[0])


def test_packaged_specs_resolve():
    """Every packaged row's settings are ones the driver knows (resolved, not run)."""
    from fastbert.train import config

    for name in specs.names():
        spec = specs.load(name)
        for row in spec.rows:
            spec_, target = specs.target(spec, row)
            if row.same_as:  # "the same settings": the tables' common settings agree
                assert spec.common == spec_.common, (spec.name, row.name)
            row = target
            argv = runner.argv_for(spec_, row, 0, "/nonexistent", 1, False)
            rest = argv[4:]  # python -m fastbert.train <stage> [--config C] --key value ...
            overrides = config.parse_overrides(rest[2:] if rest[:1] == ["--config"] else rest)
            recipe = row.recipe if row.recipe is not None else (config.load_recipe(row.config) if row.config else None)
            if row.stage == "chain":
                for link in recipe["chain"]:
                    merged = config.merge(config.merge(recipe, overrides), link)
                    merged.pop("chain")
                    config.resolve(link["stage"], {k: v for k, v in merged.items() if k != "stage"})
            else:
                config.resolve(row.stage, recipe, overrides)


def test_table_figure(tmp_path):
    """The table figure draws a panel for each metric that has a value (fastbert's or the report's) and nothing
    for a table without a fastbert value."""
    from fastbert.experiments import plots

    spec = specs.Spec(name="t", path="t.yaml", title="T", rows=[specs.Row(name="a", stage="single", report={"sts": 0.8}),
                                                  specs.Row(name="b", stage="single", report={"quora": 0.7})])
    none = {"sst": None, "quora": None, "sts": None, "mean": None}
    stats = {"a": {**none, "sts": (0.85, 0.01), "report": {"sts": 0.8, "mean": None}},
             "b": {**none, "report": {"quora": 0.7, "mean": None}}}
    path = str(tmp_path / "t.png")
    assert plots.table_dots(spec, stats, path) == 2 and os.path.getsize(path) > 0  # Quora (report only), STS
    stats["a"]["sts"] = None
    assert plots.table_dots(spec, stats, str(tmp_path / "u.png")) == 0 and not os.path.exists(tmp_path / "u.png")

    curves = {"a": ([[60.0, 10, 0.7], [120.0, 20, 0.72]], 0.5), "b": ([[30.0, 5, None]], 1.0),
              "c": ([[90.0, 10, 0.71]], None)}  # b: no dev mean, not drawn; c: times incomplete, left panel only
    assert plots.time_to_accuracy(curves, str(tmp_path / "tta.png"))
    assert not plots.time_to_accuracy({"b": curves["b"]}, str(tmp_path / "none.png"))


def test_log_times_leave_out_pauses(tmp_path):
    """The dev curve's times count the run, not the hours between an interrupted attempt and its resume."""
    log = tmp_path / "run.log"
    log.write_text("2026-12-02 10:00:00 single: tasks ['sts']\n2026-12-02 10:01:00 step 10: dev sts 0.5\n"
                   "2026-12-02 10:02:00 interrupted at step 15: saved\n2026-12-02 12:00:00 single: tasks ['sts']\n"
                   "2026-12-02 12:00:30 resumed from x at step 15\n2026-12-02 12:01:30 step 20: dev sts 0.6\n")
    assert records._log_times(str(log)) == (210.0, {10: 60.0, 20: 210.0})


def test_busy_run_is_skipped(table, tmp_path, capsys):
    """Two runners on one run (tables share rows through same_as): the second skips it."""
    import fcntl

    spec = specs.load(table)
    root = str(tmp_path / "out")
    rdir = os.path.join(root, runner.run_dir("tiny", "additive", 0))
    os.makedirs(rdir)
    with open(os.path.join(rdir, "experiment.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert runner.run_one(spec, spec.row("additive"), 0, root, 1, False, False) == "busy"
    assert "running in another process" in capsys.readouterr().out and os.listdir(rdir) == ["experiment.lock"]


@pytest.mark.parametrize("group", [False, True], ids=["sigterm-to-runner", "ctrl-c-to-group"])
def test_signal_saves_and_records(table, tmp_path, group):
    """SIGTERM to `experiments run` (or Ctrl-C: SIGINT to runner and driver) while a driver trains: the driver
    saves and stops, the attempt is recorded with its times and exit status, and the command ends with one
    line and status 130."""
    import signal
    import subprocess
    import sys
    import time

    spec = yaml.safe_load(open(table, encoding="utf-8"))
    spec["common"].update(max_steps=100000, save_every=100000)
    spec["rows"] = spec["rows"][:1]
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    root = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fastbert.experiments", "run", str(path), "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        metrics = root / runner.run_dir("long", "additive", 0) / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.exists() and '"loss"' in metrics.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        assert metrics.exists() and proc.poll() is None
        attempts = records.read_attempts(str(metrics.parent))
        assert len(attempts) == 1 and attempts[0]["wall_s"] is None  # recorded from the start
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    signum = signal.SIGINT if group else signal.SIGTERM
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: signal {signum}: the run saved and stopped; --resume continues it"
    attempts = records.read_attempts(str(metrics.parent))
    assert len(attempts) == 1 and attempts[0]["returncode"] not in (None, 0) and attempts[0]["wall_s"] > 0
    assert "interrupted at step" in (metrics.parent / "run.log").read_text()
    assert (metrics.parent / "last").exists() and not os.path.exists(records.record_path(str(root), "long", "additive", 0))


def test_versus_baseline(tmp_path):
    """Rows against the baseline: within the spread a tie (a one-seed row takes the baseline's spread), else
    the difference; two one-seed rows are compared without a spread."""
    from fastbert.experiments import render

    stats = {"base": {"mean": (0.70, 0.004)}, "up": {"mean": (0.71, 0.0)}, "same": {"mean": (0.703, 0.0)},
             "none": {"mean": None}}
    n = {"base": 3, "up": 1, "same": 1, "none": 0}
    assert [render._versus(stats, "base", k, n) for k in stats] == ["baseline", "+0.010", "tie", "—"]
    assert render._versus(stats, "up", "up", n) == "best"
    assert render._versus(stats, "up", "same", n) == "-0.007 (1 seed)"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"baseline": "nope", "rows": [{"name": "a", "stage": "single"}]}))
    with pytest.raises(specs.SpecError, match="baseline 'nope' is not a row"):
        specs.load(str(path))


def test_at_a_glance():
    """The highest figure per metric over every table and the row that reached it; dev-subset rows left out."""
    from fastbert.experiments import render

    def rec(stage, dev, eval_limit=None, seed=0):
        return {"stage": stage, "dev": dev, "dev_mean": records.mean3(dev), "eval_limit": eval_limit, "seed": seed,
                "wall_s": 1.0, "cpu_s": 1.0, "steps": 1, "dirty": False}

    found = {"t1": {"quora": [rec("single", {"sst": 0.2, "quora": 0.85, "sts": 0.8})],
                    "subset": [rec("multitask", {"sst": 0.9, "quora": 0.9, "sts": 0.9}, eval_limit={"quora": 5})]},
             "t2": {"multi": [rec("multitask", {"sst": 0.5, "quora": 0.84, "sts": 0.88}),
                              rec("multitask", {"sst": 0.46, "quora": 0.84, "sts": 0.88}, seed=1)],
                    "sts": [rec("single", {"sts": 0.87})]}}
    runs = [("t1", "quora"), ("t1", "subset"), ("t2", "multi"), ("t2", "sts"), ("t2", "not-run")]
    lines = render.at_a_glance(found, runs)
    assert "| dev mean of the three, one model | 0.733 ± 0.009 | t2/multi | multitask | 2 |" in lines
    assert "| SST accuracy | 0.480 ± 0.028 | t2/multi | multitask | 2 |" in lines
    assert "| Quora accuracy | 0.850 | t1/quora | single | 1 |" in lines
    assert not any("t1/subset" in x for x in lines) and render.at_a_glance({}, []) == []
    assert not any("t2/multi" in x for x in render.at_a_glance(found, [("t1", "quora")]))  # only the rows asked


def test_machine_names_its_vector_extension():
    """Records name the CPU's widest vector extension (VMs often call their CPU just 'AMD EPYC'), checked
    against what torch dispatches to, and the table's machine column shows it."""
    import torch

    from fastbert.experiments import render
    m = records.machine()
    assert m["isa"] == {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability())
    recs = [{"machine": {"cpu": "AMD EPYC", "isa": "avx2"}}, {"machine": {"cpu": "Intel(R) Xeon(R) Platinum 8481C",
                                                                         "isa": "avx512"}},
            {"machine": {"cpu": "AMD EPYC"}}, {"machine": {"cpu": "AMD EPYC", "isa": "avx2"}}]
    assert render._machines(recs) == "EPYC (AVX2), Xeon (AVX512), EPYC"


def test_targets(tmp_path):
    """A table's targets judged from the records: the row's mean, each task against its single-task row (the
    shortfalls named), and the highest dev mean within the time (minutes of one-thread CPU time)."""
    from fastbert.experiments import render

    def rec(dev, curve, wall_s=100.0, cpu_s=50.0, eval_limit=None, seed=0):
        return {"dev": dev, "dev_mean": records.mean3(dev), "curve": curve, "wall_s": wall_s, "cpu_s": cpu_s,
                "eval_limit": eval_limit, "seed": seed, "steps": 1, "dirty": False}

    path = tmp_path / "goal.yaml"
    path.write_text(yaml.safe_dump({
        "targets": {"row": "top", "mean": 0.7, "single_task": {"sst": "solo/sst", "sts": "solo/sts"},
                    "fast": {"mean": 0.6, "minutes": 1}},
        "rows": [{"name": "top", "stage": "multitask"}, {"name": "quick", "stage": "multitask"}]}))
    spec = specs.load(str(path))
    top = {"sst": 0.5, "quora": 0.8, "sts": 0.9}
    found = {"goal": {"top": [rec(top, [[60, 1, 0.55], [200, 2, 0.7]])],  # 0.55 at 0.5 min, 0.7 at 1.7 min
                      "quick": [rec({"sst": 0.4, "quora": 0.7, "sts": 0.8}, [[110, 1, 0.62]], cpu_s=50),
                                rec({"sst": 0.4, "quora": 0.7, "sts": 0.8}, [[110, 1, 0.64]], cpu_s=60, seed=1)]},
             "solo": {"sst": [rec({"sst": 0.49}, [])], "sts": [rec({"sts": 0.92}, [])]}}
    lines = render.targets_section(spec, found)
    assert "| `top`: dev mean ≥ 0.7 | 0.733 (1 seed) | yes |" in lines
    assert ("| `top`: every task at or above its single-task row | SST 0.500 vs solo/sst 0.490 (1 seed); "
            "STS 0.900 vs solo/sts 0.920 (1 seed) | no: STS -0.020 |") in lines
    # seed 0 of quick: 110 s * 50/100 = 0.92 min; seed 1: 1.1 min, too late; top's 0.7 at 1.7 min, too late
    assert ("| some row: dev mean ≥ 0.6 within 1 minutes (one-thread CPU time) | highest within 1 min: 0.620 "
            "(goal/quick seed 0, at 0.9 min) | yes |") in lines
    del found["solo"]["sts"]
    assert any(x.endswith("| — (a row not run yet) |") for x in render.targets_section(spec, found))
    assert render.targets_section(spec, {})[4] == "| `top`: dev mean ≥ 0.7 | not run yet | — |"
    for bad, message in (({"mean": 0.7}, "row None is not a row"), ({"row": "top", "mean": "high"}, "mean: a number"),
                         ({"fast": {"mean": 0.7}}, "fast:"), ({"row": "top", "single_task": {"snli": "a/b"}}, "single_task:"),
                         ({"goal": 1}, "unknown keys")):
        path.write_text(yaml.safe_dump({"targets": bad, "rows": [{"name": "top", "stage": "multitask"}]}))
        with pytest.raises(specs.SpecError, match=message):
            specs.load(str(path))
