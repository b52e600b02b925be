"""The Triton layer_norm kernels (interpreter on CPU) against the PyTorch reference: output and every gradient.

Tolerances: fp32 within 1e-5 of the reference (fp32 math). fp16/bf16 within 2x the error of the same
computation in eager PyTorch in that dtype, plus one output ulp, both measured against the fp32-math
reference on the same inputs: the kernel, like eager PyTorch, keeps the pre-norm sum h in x's dtype for
backward, so short rows with a small variance lose precision in both. The ulp floor is a whole ulp
because the interpreter rounds fp32 -> bf16 stores toward zero (a GPU rounds to nearest).
"""
import pytest
import torch

from fastbert import ops, use_backend
from fastbert.ops import philox

pytest.importorskip("triton")
from fastbert.kernels import layer_norm as kernels  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ULP = {torch.float16: 2**-10, torch.bfloat16: 2**-7}  # relative spacing at the top of a binade


def _err(actual, expected):
    """max |actual - expected| relative to the tensor's scale (at least 1: these tensors are O(1))."""
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).abs().max() / max(float(expected.abs().max()), 1.0))


def _inputs(shape, dtype, residual, input_bias, param_dtype=torch.float32, residual_dtype=None):
    n = shape[-1]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    r = torch.randn(shape, dtype=residual_dtype or dtype, requires_grad=True) if residual else None
    w = (1 + 0.5 * torch.randn(n)).to(param_dtype).requires_grad_()
    b = (0.5 * torch.randn(n)).to(param_dtype).requires_grad_()
    ib = (0.5 * torch.randn(n)).to(param_dtype).requires_grad_() if input_bias else None
    return x, r, w, b, ib


def _run(backend, x, r, w, b, ib, p, seed=7, eps=1e-5):
    """Output and gradients of every tensor input under `backend`, dropout drawn from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    with use_backend(backend):
        out = ops.layer_norm(x, w, b, eps, residual=r, input_bias=ib, dropout_p=p)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    leaves = [t for t in (x, r, w, b, ib) if t is not None]
    return out, dict(zip(["x", "r", "w", "b", "ib"], torch.autograd.grad(out, leaves, grad)))


def _run_eager(x, r, w, b, ib, p, seed=7, eps=1e-5):
    """The same computation as eager PyTorch ops in x's dtype (the bar for fp16/bf16)."""
    torch.manual_seed(seed)
    keep_seed, dt, n = philox.draw_seed(), x.dtype, x.shape[-1]
    h = x if ib is None else x + ib.to(dt)
    if p:
        h = h * philox.keep_mask_rows(keep_seed, p, h.numel() // n, n).view(h.shape).to(dt) * (1.0 / (1.0 - p))
    h = h if r is None else h + r.to(dt)
    out = torch.nn.functional.layer_norm(h, (n,), w.to(dt), b.to(dt), eps)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    leaves = [t for t in (x, r, w, b, ib) if t is not None]
    return out, dict(zip(["x", "r", "w", "b", "ib"], torch.autograd.grad(out, leaves, grad)))


def _check(x, r, w, b, ib, p):
    out, grads = _run("triton", x, r, w, b, ib, p)
    ref, ref_grads = _run("reference", x, r, w, b, ib, p)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if x.dtype == torch.float32:
        tol = dict.fromkeys(["out", *grads], 1e-5)
    else:
        eager, eager_grads = _run_eager(x, r, w, b, ib, p)
        tol = {name: 2 * _err(t, ref_grads.get(name, ref)) + ULP[x.dtype]
               for name, t in [("out", eager), *eager_grads.items()]}
    assert _err(out, ref) <= tol["out"]
    for name, g in grads.items():
        assert g.dtype == ref_grads[name].dtype, name
        assert _err(g, ref_grads[name]) <= tol[name], name


@pytest.mark.parametrize("shape", [(1, 384), (7, 1000), (65, 33), (130, 384), (3, 5, 1000), (2, 4096), (4, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_fused_matches_reference(shape, dtype):
    _check(*_inputs(shape, dtype, residual=True, input_bias=True), p=0.1)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("input_bias", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.25])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_combination_matches_reference(residual, input_bias, p, dtype):
    for shape in [(65, 384), (7, 33)]:  # Philox groups per 8 elements, and per element (33 % 8 != 0)
        _check(*_inputs(shape, dtype, residual, input_bias), p=p)


@pytest.mark.parametrize("shape", [(37, 384), (9, 4096)])
def test_gpu_tile_sizes(monkeypatch, shape):
    # The interpreter runs 16x larger tiles than a GPU; here the GPU's: backward programs loop over tiles.
    monkeypatch.setattr(kernels, "TILE", 2048)
    _check(*_inputs(shape, torch.float32, True, True), p=0.1)


def test_mixed_dtypes():
    # bf16 activations with an fp32 residual and fp32 (master) weights, as under autocast
    _check(*_inputs((9, 384), torch.bfloat16, True, True, param_dtype=torch.float32,
                    residual_dtype=torch.float32), p=0.1)
    # fp16 activations with a bf16 residual and bf16 weights: the launcher casts them up to fp32
    _check(*_inputs((9, 100), torch.float16, True, True, param_dtype=torch.bfloat16,
                    residual_dtype=torch.bfloat16), p=0.1)


def test_kernel_contract_h_mean_rstd_and_dropout_mask():
    M, N, p, seed = 13, 1000, 0.3, 2**40 + 5
    x, r, ib = torch.randn(M, N), torch.randn(M, N), torch.randn(N)
    w, b = torch.randn(N), torch.randn(N)
    out, h, mean, rstd = kernels.layer_norm_forward(x, w, b, r, ib, 1e-5, p, seed)
    keep = philox.keep_mask_rows(seed, p, M, N)
    expected_h = (x + ib) * keep * (1.0 / (1.0 - p)) + r
    assert torch.equal(h, expected_h)  # the same mask, bit for bit, and the same fp32 arithmetic
    torch.testing.assert_close(mean, expected_h.mean(1))
    torch.testing.assert_close(rstd, torch.rsqrt(expected_h.var(1, unbiased=False) + 1e-5))
    dy = torch.randn(M, N)
    gh, gx, gw, gb, gib = kernels.layer_norm_backward(dy, h, w, mean, rstd, p, seed, True)
    assert torch.equal(gx, gh * keep * (1.0 / (1.0 - p)))  # the mask regenerated in backward
    torch.testing.assert_close(gib, gx.sum(0))
    # without residual, input bias and dropout, h is not written (autograd keeps x) and grad_x is empty
    _, h, _, _ = kernels.layer_norm_forward(x, w, b, None, None, 1e-5, 0.0, 0)
    assert h.numel() == 0
    assert kernels.layer_norm_backward(dy, x, w, mean, rstd, 0.0, 0, False)[1].numel() == 0


def test_dropout_follows_torch_manual_seed():
    x, r, w, b, ib = _inputs((6, 384), torch.float32, True, True)
    a, _ = _run("triton", x, r, w, b, ib, 0.5, seed=3)
    again, _ = _run("triton", x, r, w, b, ib, 0.5, seed=3)
    other, _ = _run("triton", x, r, w, b, ib, 0.5, seed=4)
    assert torch.equal(a, again) and not torch.allclose(a, other)


def test_empty_batch_and_hidden_size_limit():
    w, b = torch.ones(8), torch.zeros(8)
    with use_backend("triton"):
        x = torch.randn(0, 8, requires_grad=True)
        out = ops.layer_norm(x, w, b, residual=torch.randn(0, 8), dropout_p=0.1)
        out.sum().backward()
        assert out.shape == (0, 8) and x.grad.shape == (0, 8)
        with pytest.raises(ValueError, match="supports hidden sizes 1..4096, got 4097"):
            ops.layer_norm(torch.randn(2, 4097), torch.ones(4097), torch.zeros(4097))
