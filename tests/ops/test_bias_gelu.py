"""The Triton bias_gelu kernels (interpreter on CPU) against the PyTorch reference: output and gradients.

Tolerances: fp32 within 1e-5 of the reference (fp32 math); fp16/bf16 within one ulp of the output dtype
(the kernel and the reference both compute in fp32 and round once; the interpreter rounds bf16 stores
toward zero where a GPU rounds to nearest, hence a whole ulp rather than half). grad_bias is an fp32
column sum in both, so it is held to fp32-accumulation tolerance whatever x's dtype.
"""
import pytest
import torch

from fastbert import ops, use_backend

pytest.importorskip("triton")
from fastbert.kernels import bias_gelu as kernels  # noqa: E402

DTYPES = [(torch.float32, 1e-5), (torch.float16, 2**-10), (torch.bfloat16, 2**-7)]


def _err(actual, expected):
    """max |actual - expected| relative to the tensor's scale (at least 1: these tensors are O(1))."""
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).abs().max() / max(float(expected.abs().max()), 1.0))


def _run(backend, x, b, approximate):
    with use_backend(backend):
        out = ops.bias_gelu(x, b, approximate)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    leaves = [x] if b is None else [x, b]
    return out, torch.autograd.grad(out, leaves, grad)


def _check(shape, dtype, tol, approximate, bias_dtype):
    x = (2 * torch.randn(shape)).to(dtype).requires_grad_()
    b = None if bias_dtype is None else torch.randn(shape[-1]).to(bias_dtype).requires_grad_()
    out, grads = _run("triton", x, b, approximate)
    ref, ref_grads = _run("reference", x, b, approximate)
    assert out.dtype == dtype and out.shape == ref.shape
    assert _err(out, ref) <= tol
    assert grads[0].dtype == dtype and _err(grads[0], ref_grads[0]) <= tol
    if b is not None:  # fp32 column sums in both, rounded once to the bias dtype
        assert grads[1].dtype == bias_dtype
        assert _err(grads[1], ref_grads[1]) <= max(1e-5, 2**-8 if bias_dtype == torch.bfloat16 else 2**-11)


@pytest.mark.parametrize("shape", [(1, 33), (7, 1000), (65, 384), (130, 96), (2, 3, 300), (3, 600)])
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_matches_reference(shape, dtype, tol, approximate):
    _check(shape, dtype, tol, approximate, bias_dtype=dtype)


@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.float16])
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_without_bias_and_mixed_bias_dtypes(bias_dtype, dtype, tol):
    _check((9, 260), dtype, tol, "none", bias_dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # exp(-2x) -> inf: tanh = -1
def test_large_inputs_saturate():
    x = torch.tensor([[-1e4, -30.0, -5.0, 0.0, 5.0, 30.0, 1e4]])
    for approximate in ("none", "tanh"):
        out = kernels.bias_gelu_forward(x, x.new_empty(0), approximate)
        torch.testing.assert_close(out, torch.nn.functional.gelu(x, approximate=approximate))
        gx, gb = kernels.bias_gelu_backward(torch.ones_like(x), x, x.new_empty(0), approximate)
        expected = torch.func.grad(lambda t: torch.nn.functional.gelu(t, approximate=approximate).sum())(x)
        torch.testing.assert_close(gx, expected)
        assert gb.numel() == 0


def test_empty_batch():
    x, b = torch.randn(0, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    with use_backend("triton"):
        ops.bias_gelu(x, b).sum().backward()
    assert x.grad.shape == (0, 16) and torch.equal(b.grad, torch.zeros(16))
