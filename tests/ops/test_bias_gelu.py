"""The Triton bias_gelu kernels (compiled on CUDA, the interpreter on CPU) against the PyTorch reference:
output and gradients.

Tolerances (tests/_tolerance.py, TOL): fp32 within 1e-5 of the reference (fp32 math); fp16/bf16 within one
ulp of the output dtype (the kernel and the reference both compute in fp32 and round once). grad_bias is an
fp32 column sum in both, rounded once to the bias dtype: one rounding of that dtype, at least 1e-5.
"""
import pytest
import torch

from fastbert import ops, use_backend
from tests._device import DEVICE, TRITON_MARKS
from tests._tolerance import TOL, assert_close

pytestmark = TRITON_MARKS
pytest.importorskip("triton")
from fastbert.kernels import bias_gelu as kernels  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _run(backend, x, b, approximate):
    with use_backend(backend):
        out = ops.bias_gelu(x, b, approximate)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    leaves = [x] if b is None else [x, b]
    return out, torch.autograd.grad(out, leaves, grad)


def _check(shape, dtype, approximate, bias_dtype):
    x = (2 * torch.randn(shape)).to(DEVICE, dtype).requires_grad_()
    b = None if bias_dtype is None else torch.randn(shape[-1]).to(DEVICE, bias_dtype).requires_grad_()
    out, grads = _run("triton", x, b, approximate)
    ref, ref_grads = _run("reference", x, b, approximate)
    assert out.dtype == dtype
    assert_close(out, ref, what="out")
    assert grads[0].dtype == dtype
    assert_close(grads[0], ref_grads[0], what="grad_x")
    if b is not None:  # fp32 column sums in both, rounded once to the bias dtype: half an ulp
        assert grads[1].dtype == bias_dtype
        assert_close(grads[1], ref_grads[1], max(1e-5, TOL[bias_dtype] / 2), what="grad_bias")


@pytest.mark.parametrize("shape", [(1, 33), (7, 1000), (65, 384), (130, 96), (2, 3, 300), (3, 600)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_matches_reference(shape, dtype, approximate):
    _check(shape, dtype, approximate, bias_dtype=dtype)


@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.float16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_without_bias_and_mixed_bias_dtypes(bias_dtype, dtype):
    _check((9, 260), dtype, "none", bias_dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # exp(-2x) -> inf: tanh = -1
def test_large_inputs_saturate():
    x = torch.tensor([[-1e4, -30.0, -5.0, 0.0, 5.0, 30.0, 1e4]], device=DEVICE)
    for approximate in ("none", "tanh"):
        out = kernels.bias_gelu_forward(x, x.new_empty(0), approximate)
        torch.testing.assert_close(out, torch.nn.functional.gelu(x, approximate=approximate))
        gx, gb = kernels.bias_gelu_backward(torch.ones_like(x), x, x.new_empty(0), approximate)
        expected = torch.func.grad(lambda t: torch.nn.functional.gelu(t, approximate=approximate).sum())(x)
        torch.testing.assert_close(gx, expected)
        assert gb.numel() == 0


def test_empty_batch():
    x, b = (torch.randn(s, device=DEVICE, requires_grad=True) for s in ((0, 16), 16))
    with use_backend("triton"):
        ops.bias_gelu(x, b).sum().backward()
    assert x.grad.shape == (0, 16) and torch.equal(b.grad, torch.zeros(16, device=DEVICE))
