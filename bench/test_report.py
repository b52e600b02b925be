"""bench/report.py renders the committed results (so that CI notices when the report and the JSON drift)."""
import glob
import os

import pytest

from bench import report


def test_report_renders_committed_results(tmp_path):
    paths = sorted(glob.glob(os.path.join(report.RESULTS, "*.json")))
    if not paths:
        pytest.skip("no committed results in bench/results/")
    doc = report.render(paths, plots=False)
    for section in ("## CPU", "### Training step", "### Inference", "### Peak memory", "### Matmul rate",
                    "### Parity: whole model", "### Parity: each op", "### Parity: loss curves"):
        assert section in doc, f"{section!r} missing from the rendered report"
    assert "fastbert speed-up" in doc and "real tokens/s" in doc


def test_other_benchmarks_render_generically():
    bench = {"fullname": "bench/test_x.py::test_y[a-b]", "name": "test_y[a-b]", "group": "x 1024",
             "stats": {"median": 2e-3, "iqr": 1e-4, "rounds": 5}, "extra_info": {"GB/s": 812.5, "impl": "triton"}}
    doc = report.other_section([bench])
    assert "**bench/test_x.py** - x 1024" in doc
    assert "| a-b | 2 ms | 5% | 5 | 812 | triton |" in doc, doc
