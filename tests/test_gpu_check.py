"""scripts/gpu_check.sh: its dry run (the same steps on CPU at tiny sizes) ends with the one-line summary and
writes its results outside the repository; bad arguments are one clear line; the GPU targets are recorded,
fail on a miss, and are summarised and rendered as the script and BENCHMARKS.md read them."""
import json
import os
import re
import subprocess
import sys

import pytest

from bench import gpu_targets, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
SUMMARY = re.compile(r"^gpu_check: OK \| dry run \(CPU\) \| torch \S+ \(pinned \S+\), triton \S+, cpu \| "
                     r"tests: (\d+) passed[^|]* \| benchmarks: (\d+) timed -> (\S+) \| targets: not checked[^|]* \| "
                     r"\d+ s$")


def test_dry_run_ends_with_the_summary(tmp_path):
    results = os.path.join(ROOT, "bench", "results", "cuda.json")
    before = os.path.getmtime(results) if os.path.exists(results) else None
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTBERT_BENCH_QUICK")}
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**env, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = SUMMARY.match(last)
    assert m, last
    passed, timed, json_path = int(m[1]), int(m[2]), m[3]
    assert passed > 0 and timed > 0 and json_path == str(tmp_path / "cuda.json")
    with open(json_path) as f:
        assert len(json.load(f)["benchmarks"]) == timed
    assert (tmp_path / "BENCHMARKS.md").read_text().startswith("# Benchmarks")
    after = os.path.getmtime(results) if os.path.exists(results) else None
    assert after == before  # the repository's results are left alone


def test_unknown_argument_is_one_clear_line():
    proc = subprocess.run(["bash", SCRIPT, "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_check: unknown argument '--fast' (allowed: --dry-run, --help)"


class FakeBenchmark:
    def __init__(self):
        self.extra_info = {}


def test_target_miss_fails_and_is_recorded():
    met, missed = FakeBenchmark(), FakeBenchmark()
    gpu_targets.check(met, "layer_norm", 2.5)
    with pytest.raises(AssertionError, match=r"GPU target missed: .*= 1.20, target >= 1.3"):
        gpu_targets.check(missed, "attention", 1.2, workload="imdb")
    assert met.extra_info["target"]["met"] and not missed.extra_info["target"]["met"]
    assert missed.extra_info["target"]["threshold"] == 1.3 and missed.extra_info["target"]["workload"] == "imdb"


def test_targets_are_summarised_and_rendered(tmp_path):
    met, missed = FakeBenchmark(), FakeBenchmark()
    gpu_targets.check(met, "adam", 0.95)
    with pytest.raises(AssertionError):
        gpu_targets.check(missed, "attention", 1.1, workload="sts")
    benchmarks = [{"extra_info": b.extra_info} for b in (met, missed)] + [{"extra_info": {"kind": "matmul"}}]
    path = tmp_path / "cuda.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    assert gpu_targets.summarize(str(path)) == "3 timed|1 of 2 met, missed: attention sts"
    section = report.gpu_targets_section(benchmarks)
    assert section.startswith("### GPU targets: 1 of 2 met")
    assert "| 0.95 | >= 0.9 | met |" in section and "(sts) | 1.10 | >= 1.3 | NOT met |" in section
