"""Which implementation of the fused ops runs: the one switch the ops ask, nothing else branches on it.

Backends:
  "reference"  pure PyTorch (the parity baseline; runs anywhere, autograd by PyTorch)
  "triton"     the Triton kernels in fastbert.kernels: CUDA tensors, or CPU tensors under the
               Triton interpreter (TRITON_INTERPRET=1 set before fastbert.kernels is imported)
  "cpu"        the C++ CPU kernels of the compiled extension (fastbert._C)
  "auto"       "triton" for CUDA tensors, "cpu" for CPU tensors, each where the op has that
               implementation, else "reference"

The choice is global (`set_backend`), scoped (`with use_backend(...)`) or per model
(`BertModel(config, backend=...)`, which scopes its forward). An explicit backend that cannot run an
op on the given tensors raises; only "auto" falls back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import torch

from fastbert import _extension

BACKENDS = ("auto", "reference", "triton", "cpu")

_global = "auto"
_local = threading.local()


def validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fastbert backend {name!r}; choose one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend."""
    global _global
    _global = validate(name)


def get_backend() -> str:
    """The backend in force here: the innermost `use_backend`, else the global default."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _global


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run a block under a backend; `None` leaves the current one in force."""
    if name is None:
        yield
        return
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(validate(name))
    try:
        yield
    finally:
        stack.pop()


def bf16_matmuls(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a CUDA GPU with bf16, or a CPU whose oneDNN has a
    bf16 path (AVX512-BF16 / AMX, or AVX-512 emulation). Elsewhere (e.g. an AVX2-only CPU) a bf16 matmul runs
    a reference loop, far slower than fp32: training's precision "auto" then picks fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON


@torch.compiler.assume_constant_result  # fixed for the process: torch.compile need not trace the loading
def _has_cpu_kernel(op: str) -> bool:
    return _extension.has(f"{op}_forward")


def resolve(op: str, device: torch.device, kernels: tuple[str, ...]) -> str:
    """The implementation of `op` to run on `device`: "reference", "triton" or "cpu".

    `kernels` lists the backends the op has kernels for ("triton", "cpu"). A "cpu" kernel also needs
    the compiled extension to provide `torch.ops.fastbert_C.<op>_forward`.
    """
    name = get_backend()
    if name == "reference":
        return "reference"
    cpu_ok = lambda: "cpu" in kernels and _has_cpu_kernel(op)  # noqa: E731 - loads lazily
    if name == "auto":
        if device.type == "cuda" and "triton" in kernels and triton_available():
            return "triton"
        if device.type == "cpu" and cpu_ok():
            return "cpu"
        return "reference"
    # An explicit backend: run it or say why not.
    if name == "triton":
        if "triton" not in kernels:
            raise RuntimeError(f"fastbert op {op!r} has no Triton kernel")
        if not triton_available():
            raise RuntimeError(f"fastbert op {op!r}: backend 'triton' needs the triton package")
        if device.type == "cpu" and not triton_interpreted():
            raise RuntimeError(
                f"fastbert op {op!r}: backend 'triton' got CPU tensors; Triton runs on CPU only in its "
                "interpreter (export TRITON_INTERPRET=1 before importing fastbert), or use backend "
                "'cpu' or 'auto'")
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"fastbert op {op!r}: backend 'triton' cannot run on {device}")
    if name == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"fastbert op {op!r}: backend 'cpu' got tensors on {device}")
        if not cpu_ok():
            raise RuntimeError(f"fastbert op {op!r} has no 'cpu' kernel here "
                               f"(the C++ extension is {_extension.status()})")
    return name
