"""Where the Triton kernels run in this test session: CUDA tensors and compiled kernels where a GPU is, the
Triton interpreter on CPU tensors where TRITON_INTERPRET=1 (tests/conftest.py sets it when there is no GPU),
else nowhere, with the reason, for the tests to skip with."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from fastbert import backend


def triton_device() -> tuple[str | None, str]:
    """("cuda" | "cpu", "") where Triton runs here, else (None, why not)."""
    if importlib.util.find_spec("triton") is None:
        return None, "the triton package is not installed"
    if torch.cuda.is_available():
        return "cuda", ""
    if backend.triton_interpreted():
        return "cpu", ""
    return None, ("no CUDA GPU, and TRITON_INTERPRET is off: Triton runs on CPU only in its interpreter "
                  "(TRITON_INTERPRET=1 before fastbert.kernels is imported)")


DEVICE, WHY_NOT = triton_device()
CUDA = DEVICE == "cuda"
# The marks of a test that runs Triton kernels on DEVICE (a module's pytestmark = TRITON_MARKS, or the
# needs_triton decorator): skipped with the reason where there is no such device; `pytest -m triton` selects them.
TRITON_MARKS = [pytest.mark.triton, pytest.mark.skipif(DEVICE is None, reason=WHY_NOT or "-")]


def needs_triton(test):
    for mark in TRITON_MARKS:
        test = mark(test)
    return test

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 tl.dot: the interpreter holds bf16 as raw uint16 and its tl.dot multiplies those bit patterns.
needs_compiled_triton = pytest.mark.skipif(
    DEVICE != "cuda" or backend.triton_interpreted(),
    reason="the Triton interpreter holds bf16 as uint16 and its tl.dot multiplies those bits: bf16 dots need "
           "the compiled kernels (CUDA, TRITON_INTERPRET unset)")
