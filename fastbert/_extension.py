"""The compiled extension: fastbert._C (C++ CPU kernels) and fastbert._C_cuda (CUDA kernels).

Both register torch ops under torch.ops.fastbert_C (see fastbert/_build.py for the source layout).

`pip install -e .` builds both ahead of time. If fastbert._C is missing at run time (a plain checkout
on PYTHONPATH, say), fastbert says so once and builds it with ninja (torch.utils.cpp_extension.load);
if that cannot be done either it says so once and the ops use their other implementations. Importing
fastbert never fails because of the extension. FASTBERT_JIT=0 turns the JIT build off.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

from fastbert import _build

_error: str | None = None


def _warn(msg: str) -> None:
    warnings.warn(f"fastbert: {msg}", RuntimeWarning, stacklevel=3)


@functools.cache
def cpu():
    """The CPU extension module, or None."""
    global _error
    try:
        return importlib.import_module("fastbert._C")
    except ImportError as e:
        missing = f"compiled extension fastbert._C not importable ({e})"
    sources = _build.cpu_sources()
    if not sources:
        _error = f"{missing}; no C++ sources at {_build.CSRC} to build it from"
        _warn(_error + "; using the other backends")
        return None
    if os.environ.get("FASTBERT_JIT", "1") == "0":
        _error = f"{missing}; JIT build disabled by FASTBERT_JIT=0"
        _warn(_error + "; using the other backends")
        return None
    _warn(f"{missing}; building it now with ninja (once per source change, cached by torch)")
    try:
        from torch.utils import cpp_extension

        build_dir = cpp_extension._get_build_directory("fastbert_C", verbose=False)
        return cpp_extension.load(name="fastbert_C", sources=_uniquely_named(sources, build_dir),
                                  extra_cflags=_build.CXX_FLAGS, extra_ldflags=_build.LD_FLAGS,
                                  extra_include_paths=[_build.CSRC], build_directory=build_dir)
    except Exception as e:  # noqa: BLE001 - any build failure means: no extension, say why
        _error = f"{missing}; JIT build failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
        _warn(_error + "; using the other backends")
        return None


def _uniquely_named(sources: list[str], build_dir: str) -> list[str]:
    """cpp_extension.load names each object after its source's file name, so csrc/cpu/<op>.cpp and
    csrc/bindings/<op>.cpp would collide: compile them through one-line files named cpu_<op>.cpp etc."""
    out = []
    for src in sources:
        rel = os.path.relpath(src, _build.CSRC)
        path = os.path.join(build_dir, "sources", rel.replace(os.sep, "_"))
        text = f'#include "{os.path.abspath(src)}"\n'
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:  # unchanged: no rebuild
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        out.append(path)
    return out


@functools.cache
def cuda():
    """The CUDA extension module, or None (built only where CUDA torch and nvcc exist). It adds CUDA
    kernels to ops whose schemas fastbert._C defines, so the CPU extension is loaded first."""
    if cpu() is None:
        return None
    try:
        return importlib.import_module("fastbert._C_cuda")
    except ImportError:
        return None


def has(name: str) -> bool:
    """Whether the extension registers the torch op fastbert_C::<name>."""
    if cpu() is None:
        return False
    import torch

    return hasattr(torch.ops.fastbert_C, name)


def status() -> str:
    ext = cpu()
    return f"loaded from {ext.__file__}" if ext is not None else (_error or "not loaded")
