"""bench/report.py renders the committed results (so that CI notices when the report and the JSON drift)."""
import glob
import json
import os

import pytest

from bench import report
from bench.targets import CPU_TARGETS


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


def test_speedup_section_judges_targets_by_interleaved_ratios():
    def row(shape, fp32, bf16):
        return {"extra_info": {"kind": "speedup", "shape": shape, "rounds": 7, "batches": 3, "sequences": 96,
                               "real_tokens": 2700.0, "median_s": {"fastbert": 0.6, "hf-fp32": 0.6 * fp32,
                                                                   "hf-bf16": 0.6 * bf16},
                               "speedup": {"hf-fp32": fp32, "hf-bf16": bf16}}}

    doc = report.speedup_section({"speedup": [row("bert-base", 6.5, 2.8), row("minilm", 5.6, 2.9)]}, "cpu",
                                 {"torch_threads": 2})
    assert doc.index("| minilm |") < doc.index("| bert-base |")
    assert "| minilm | fastbert | 200.0 | 4.50e+03 | 1.00x |" in doc, doc
    lines = [ln for ln in doc.splitlines() if ln.startswith("- ")]
    assert len(lines) == sum(t.precision == "bf16" for t in CPU_TARGETS), lines  # every bf16 target, one table
    assert "- minilm (batch 32): fastbert bf16 / hf-fp32 >= 8x: 5.60x (no per-round spread; " in doc
    assert "- minilm (batch 32): fastbert bf16 / hf-bf16 >= 5x: 2.90x " in doc
    assert "- minilm (batch 32): fastbert bf16 / hf-bf16-pad8 >= 5x: not judged (not measured in this run)" in doc
    assert "- bert-base (batch 32): fastbert bf16 / hf-fp32 >= 6x: 6.50x " in doc
    assert [ln.rsplit(": ", 1)[1] for ln in lines if "hf-fp32" in ln] == ["NOT met", "met"]


def test_skipped_benchmarks_render_one_line_per_reason_with_a_count():
    skipped = [f"bench/test_x.py::test_a[{i}]: needs a CUDA GPU" for i in range(3)]
    skipped += ["bench/test_y.py::test_b: needs a CUDA GPU", "bench/test_y.py::test_c: not in quick mode"]
    doc = report.skipped_section(skipped)
    assert doc.splitlines()[2:] == ["- 4 in `bench/test_x.py`, `bench/test_y.py`: needs a CUDA GPU",
                                    "- 1 in `bench/test_y.py`: not in quick mode"], doc
    assert report.skipped_section([]) == ""


def test_results_from_a_dirty_tree_are_marked_loudly(tmp_path):
    data = {"machine_info": {"fastbert": {"device": "cpu"}}, "datetime": "2026-12-01T00:00:00",
            "commit_info": {"id": "0123456789abcdef", "dirty": True}}
    path = str(tmp_path / "cpu.json")
    assert "NOT A CLEAN RESULT" in report.machine_section(data, path)
    data["commit_info"]["dirty"] = False
    assert "NOT A CLEAN RESULT" not in report.machine_section(data, path)


def test_a_machine_without_bf16_matmuls_is_judged_on_the_fp32_targets():
    e = {"kind": "speedup", "shape": "minilm", "rounds": 7, "batches": 3, "sequences": 96, "real_tokens": 2700.0,
         "median_s": {"fastbert": 0.6, "hf-fp32": 1.8}, "speedup": {"hf-fp32": 3.0}}
    doc = report.speedup_section({"speedup": [{"extra_info": e}]}, "cpu", {"torch_threads": 2, "bf16_matmuls": False})
    lines = [ln for ln in doc.splitlines() if ln.startswith("- ")]
    fp32 = [t for t in CPU_TARGETS if t.precision == "fp32" and t.shape == "minilm"]
    assert fp32 and len(lines) == len(fp32), lines
    assert all(" fp32 " in ln and "bf16" not in ln for ln in lines), lines
    assert "- minilm (batch 32): fastbert fp32 / hf-fp32 >= " in doc and ": 3.00x " in doc


def test_scaling_records_render_one_row_each(tmp_path):
    record = {"kind": "scaling", "shape": "minilm", "ranks": 2, "steps": 60, "warmup": 10, "rounds": 3,
              "median": {"one_process": 2000.0, "ranks": 1800.0}, "efficiency": 0.9, "cpu_model": "AMD EPYC",
              "commit": {"commit": "0123456789abcdef", "dirty": False}, "datetime": "2026-12-02T10:00:00"}
    path = tmp_path / "minilm.json"
    path.write_text(json.dumps(record))
    doc = report.scaling_section([str(path)])
    assert "2 ranks x 1 thread against 1 process x 2 threads" in doc
    assert "| minilm | AMD EPYC | 2.00e+03 | 1.80e+03 | 0.90 | 3 x 60 steps (first 10 untimed) | 0123456789, 2026-12-02T10:00 |" in doc, doc
    assert report.scaling_section([]) == ""
