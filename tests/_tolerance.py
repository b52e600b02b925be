"""The one rule by which the kernel tests compare a result with its reference.

The error of a result is max |actual - expected| / max |expected|: absolute error relative to the tensor's
scale (`max_rel_err`). A result passes when its error is at most its tolerance (`assert_close`):
  - `tol`, else TOL[actual.dtype]: one rounding of the output dtype (fp16 2**-10, bf16 2**-7; the
    interpreter rounds fp32 -> bf16 stores toward zero where a GPU rounds to nearest, hence a whole ulp),
    and 1e-5 for fp32 math;
  - with a `baseline` (the same computation done the plain way in the low-precision dtype, held to the same
    `expected`): max(tol, slack + 2 x the baseline's error), since a fused kernel need not beat PyTorch's own
    rounding; `slack` (default 0) is one ulp where the kernel rounds at other places than the baseline.
Ops that accumulate over long rows (attention, embedding sums, C++ kernels with their own summation order)
pass a larger `tol` of their own, stated where they do.
"""
from __future__ import annotations

import torch

TOL = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the error relative to the tensor's scale."""
    actual, expected = actual.detach().float(), expected.detach().float()
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def bound(dtype: torch.dtype, tol: float | None = None, baseline_err: float | None = None, slack: float = 0.0) -> float:
    """The tolerance of a result in `dtype` (see the module docstring)."""
    tol = TOL[dtype] if tol is None else tol
    return tol if baseline_err is None else max(tol, slack + 2 * baseline_err)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float | None = None,
                 baseline: torch.Tensor | None = None, slack: float = 0.0, what: str = "") -> None:
    """Same shape, no non-finite values where expected has none, and max_rel_err within `bound`."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all() or not torch.isfinite(expected).all(), f"{what}: non-finite values"
    err = max_rel_err(actual, expected)
    limit = bound(actual.dtype if actual.dtype in TOL else torch.float32, tol,
                  None if baseline is None else max_rel_err(baseline, expected), slack)
    assert err <= limit, f"{what}: max error {err:.2e} of the tensor's scale > {limit:.2e}"
