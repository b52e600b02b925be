"""Every Triton kernel variant compiles for real GPUs (sm_80, sm_90) without register spills.

The interpreter runs the kernels on CPU but accepts code that the GPU compiler rejects, so the variants
each module lists in aot_specs() (every autotune candidate of every launcher) are compiled ahead of time
here, no GPU needed (fastbert.kernels.aot, in a subprocess: interpreted kernels cannot be compiled). By
default the all-pairs subset per kernel (every pair of dtype / constexpr / launch-option values compiled at
least once); FASTBERT_AOT_FULL=1 compiles every spec. FASTBERT_AOT_REPORT=path keeps the JSON report
(registers, shared memory, spills).
"""
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    import fastbert.kernels

    modules = {m.name for m in pkgutil.iter_modules(fastbert.kernels.__path__)
               if hasattr(importlib.import_module(f"fastbert.kernels.{m.name}"), "aot_specs")}
    assert {"layer_norm", "bias_gelu"} <= modules
    report = os.environ.get("FASTBERT_AOT_REPORT") or str(tmp_path / "aot.json")
    full = os.environ.get("FASTBERT_AOT_FULL", "0") not in ("", "0")
    cmd = [sys.executable, "-m", "fastbert.kernels.aot", "--arch", "80", "90", "--json", report]
    proc = subprocess.run(cmd + ([] if full else ["--pairwise"]), env={**os.environ, "TRITON_INTERPRET": "0"},
                          capture_output=True, text=True)
    print(proc.stdout)  # the resource table (pytest -s shows it)
    assert os.path.exists(report), proc.stdout + proc.stderr
    with open(report) as f:
        records = json.load(f)
    assert {r["module"] for r in records} == modules
    assert {r["arch"] for r in records} == {"sm_80", "sm_90"}
    failed = [f"{r['kernel']} {r['arch']}: {r['error']}" for r in records if not r["ok"]]
    assert not failed, "\n".join(failed)
    spilled = [f"{r['kernel']} {r['arch']}: {r['registers']} registers, stack {r['stack_bytes']} B, "
               f"local {r['local_bytes']} B" for r in records if r["local_bytes"] or r["stack_bytes"]]
    assert not spilled, "\n".join(spilled)
    assert proc.returncode == 0, proc.stderr
