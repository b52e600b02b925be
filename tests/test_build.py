"""The C++/CUDA build (fastbert/_build.py): the JIT fallback when fastbert._C is missing, the CUDA sources
compiled by nvcc for sm_80 and sm_90, and the CUDA bindings compiled against torch's headers (no GPU needed).
The C++ tests themselves run under ctest (scripts/test.sh)."""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from fastbert import _build

# A fresh interpreter in which fastbert._C cannot be imported, as in a checkout that was never built.
WITHOUT_COMPILED_EXTENSION = r"""
import importlib.abc, json, sys, warnings

class HideCompiledExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fastbert._C":
            raise ModuleNotFoundError("fastbert._C hidden by the test")

sys.meta_path.insert(0, HideCompiledExtension())
import torch
from fastbert import _extension
from fastbert.optim import FusedAdam
from fastbert.optim.adam import _implementation

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    module = _extension.cpu()
    _extension.cpu()
    torch.manual_seed(0)
    p = torch.randn(100, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt, ref = FusedAdam([p], lr=0.1, amsgrad=True), torch.optim.Adam([q], lr=0.1, amsgrad=True)
    for _ in range(5):
        p.grad = torch.randn(100)
        q.grad = p.grad.clone()
        opt.step()
        ref.step()
print(json.dumps({"warnings": [str(w.message) for w in caught if "fastbert" in str(w.message)],
                  "module": getattr(module, "__file__", None), "impl": _implementation(torch.device("cpu")),
                  "err": (p - q).abs().max().item()}))
"""


def run_without_compiled_extension(extensions_dir, jit: str) -> dict:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions_dir), "FASTBERT_JIT": jit}
    out = subprocess.run([sys.executable, "-c", WITHOUT_COMPILED_EXTENSION], env=env, cwd=_build.ROOT,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_jit_builds_the_missing_extension_once(tmp_path):
    result = run_without_compiled_extension(tmp_path, "1")
    assert len(result["warnings"]) == 1 and "building it now with ninja" in result["warnings"][0]
    assert result["module"].startswith(str(tmp_path))
    assert result["impl"] == "kernel" and result["err"] < 1e-6


def test_jit_disabled_leaves_the_reference_path(tmp_path):
    result = run_without_compiled_extension(tmp_path, "0")
    assert len(result["warnings"]) == 1 and "FASTBERT_JIT=0" in result["warnings"][0]
    assert result["module"] is None and not os.listdir(tmp_path)
    assert result["impl"] == "reference" and result["err"] < 1e-6


NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")


@needs_nvcc
@pytest.mark.parametrize("source", sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.cu"))),
                         ids=os.path.basename)
def test_cuda_source_compiles_for_sm80_and_sm90(source, tmp_path):
    assert {"-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"} <= set(_build.NVCC_FLAGS)
    out = subprocess.run([NVCC, *_build.NVCC_FLAGS, "-I", _build.CSRC, "-c", source, "-o", str(tmp_path / "k.o")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@needs_nvcc
@pytest.mark.parametrize("source", sorted(glob.glob(os.path.join(_build.CSRC, "bindings", "cuda_*.cpp"))),
                         ids=os.path.basename)
def test_cuda_bindings_compile(source, tmp_path):
    """Syntax and types of the CUDA op registrations against torch's CUDA headers (a CPU torch ships them,
    less one generated config header, stubbed here) and the CUDA runtime headers nvcc uses."""
    from torch.utils.cpp_extension import include_paths

    dry_run = subprocess.run([NVCC, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    cuda_includes = shlex.split(re.search(r'INCLUDES="([^"]*)"', dry_run).group(1))
    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [os.environ.get("CXX", "c++"), "-std=c++20", "-fsyntax-only", "-Werror=return-type", "-I", _build.CSRC,
           *(f"-I{p}" for p in include_paths()), *cuda_includes, f"-idirafter{tmp_path}", source]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
