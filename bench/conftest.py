"""pytest's side of the benchmark suite: quick mode, the results file, skipped benchmarks, machine info, the
speed-up summary, and the fixtures (device, quick, data, tasks, tokenizer). The workload itself lives in
bench/workload.py (batches, models, Runner, FLOPs), bench/rounds.py (interleaved rounds) and bench/machine.py.

  pytest bench/ --benchmark-only                   full run; JSON in bench/results/raw/<device>-<time>.json
  python bench/report.py --run                     full run into bench/results/<device>.json + BENCHMARKS.md
  pytest bench/ --benchmark-disable                quick mode (CI): tiny sizes, every benchmark runs once
  FASTBERT_BENCH_QUICK=1                           quick mode with timing on
  FASTBERT_BENCH_DEVICE=cpu|cuda                   the device (default: cuda when there is one)
  FASTBERT_DATA=DIR                                the data directory (default ../shared/data)
"""
from __future__ import annotations

import datetime
import os

import pytest
import torch

from bench import workload
from bench.machine import device_name
from bench.machine import machine_info as bench_machine_info
from bench.workload import DATA_DIR, ROOT, load_tasks
from fastbert import BertTokenizer, malloc

RESULTS = os.path.join(ROOT, "bench", "results")
_skipped: list[str] = []


# -- session setup, results file, machine info ----------------------------------------------------------

MALLOC = "keep"  # the driver's default (fastbert.malloc); process-wide, so every variant runs under it


def pytest_configure(config):
    workload.set_quick(bool(config.getoption("benchmark_disable", False)))
    malloc.configure(MALLOC)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    """Without --benchmark-json a timed run still writes its JSON, under bench/results/raw/."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None and not bs.disabled and not bs.json:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.makedirs(os.path.join(RESULTS, "raw"), exist_ok=True)
        bs.json = os.path.join(RESULTS, "raw", f"{device_name()}-{stamp}.json")


def pytest_runtest_logreport(report):
    """Skipped benchmarks and why, for the JSON (a benchmark that cannot run here is a result too)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if "--benchmark-only" not in reason:
            _skipped.append(f"{report.nodeid}: {reason}")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """fastbert's speed-ups (ratios of median real tokens/s, same process), after pytest-benchmark's tables."""
    bs = getattr(config, "_benchmarksession", None)
    rows = {}
    for b in (bs.benchmarks if bs is not None else []):
        e = b.extra_info
        if e.get("kind") in ("train", "inference") and e.get("tokens_per_s"):
            rows.setdefault((e["kind"], e["shape"]), {})[e["variant"]] = e["tokens_per_s"]
    lines = []
    for (kind, shape), tps in rows.items():
        if "fastbert" in tps:
            ratios = ", ".join(f"{tps['fastbert'] / v:.2f}x {name}" for name, v in tps.items() if name != "fastbert")
            lines.append(f"{kind} {shape}: fastbert {tps['fastbert']:,.0f} real tokens/s = {ratios}")
    if lines:
        terminalreporter.write_sep("-", "fastbert speed-up (median real tokens/s over each baseline's)")
        for line in lines:
            terminalreporter.write_line(line)
    for b in (bs.benchmarks if bs is not None else []):
        e = b.extra_info
        if e.get("kind") == "packing" and e.get("median_s", {}).get("packed"):
            terminalreporter.write_sep("-", "multitask step: packed tasks (bench/test_multitask.py)")
            terminalreporter.write_line(
                f"{e['routine']} {'+'.join(e['tasks'])} x{e['batch']}, {e['precision']}: packed "
                f"{e['median_s']['packed']:.3f} s, per task {e['median_s']['per task']:.3f} s per step (medians) = "
                f"{e['speedup']:.2f}x")


def pytest_benchmark_update_machine_info(config, machine_info):
    """fastbert's machine info (bench/machine.py) and the benchmarks skipped here, in the JSON."""
    machine_info["fastbert"] = {**bench_machine_info(torch.device(device_name()), workload.QUICK),
                                "malloc": MALLOC, "skipped": list(_skipped)}


# -- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(device_name())


@pytest.fixture(scope="session")
def quick() -> bool:
    return workload.QUICK


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> str:
    if not os.path.isdir(DATA_DIR):
        pytest.skip(f"data directory {DATA_DIR} not found (set FASTBERT_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tasks(data_dir):
    return load_tasks(data_dir)


@pytest.fixture(scope="session")
def tokenizer():
    return BertTokenizer.from_pretrained()
