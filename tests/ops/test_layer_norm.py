"""The Triton layer_norm kernels (compiled on CUDA, the interpreter on CPU) against the PyTorch reference:
output and every gradient.

Tolerances (tests/_tolerance.py): fp32 within 1e-5 of the reference (fp32 math). fp16/bf16 within 2x the
error of the same computation in eager PyTorch in that dtype plus one ulp of x's dtype (the slack), both
measured against the fp32-math reference on the same inputs: the kernel, like eager PyTorch, keeps the
pre-norm sum h in x's dtype for backward, so short rows with a small variance lose precision in both.
"""
import pytest
import torch

from fastbert import ops, use_backend
from fastbert.ops import philox
from tests._device import DEVICE, TRITON_MARKS
from tests._tolerance import TOL, assert_close

pytestmark = TRITON_MARKS
pytest.importorskip("triton")
from fastbert.kernels import layer_norm as kernels  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _leaf(t, dtype):
    return t.to(DEVICE, dtype).requires_grad_()


def _inputs(shape, dtype, residual, input_bias, param_dtype=torch.float32, residual_dtype=None):
    n = shape[-1]
    x = _leaf(torch.randn(shape), dtype)
    r = _leaf(torch.randn(shape), residual_dtype or dtype) if residual else None
    w = _leaf(1 + 0.5 * torch.randn(n), param_dtype)
    b = _leaf(0.5 * torch.randn(n), param_dtype)
    ib = _leaf(0.5 * torch.randn(n), param_dtype) if input_bias else None
    return x, r, w, b, ib


def _grad_like(out):
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)


def _run(backend, x, r, w, b, ib, p, seed=7, eps=1e-5):
    """Output and gradients of every tensor input under `backend`, dropout drawn from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    with use_backend(backend):
        out = ops.layer_norm(x, w, b, eps, residual=r, input_bias=ib, dropout_p=p)
    grad = _grad_like(out)
    leaves = [t for t in (x, r, w, b, ib) if t is not None]
    return out, dict(zip(["x", "r", "w", "b", "ib"], torch.autograd.grad(out, leaves, grad)))


def _run_eager(x, r, w, b, ib, p, seed=7, eps=1e-5):
    """The same computation as eager PyTorch ops in x's dtype (the bar for fp16/bf16)."""
    torch.manual_seed(seed)
    keep_seed, dt, n = philox.draw_seed(), x.dtype, x.shape[-1]
    h = x if ib is None else x + ib.to(dt)
    if p:
        keep = philox.keep_mask_rows(keep_seed, p, h.numel() // n, n, h.device).view(h.shape)
        h = h * keep.to(dt) * (1.0 / (1.0 - p))
    h = h if r is None else h + r.to(dt)
    out = torch.nn.functional.layer_norm(h, (n,), w.to(dt), b.to(dt), eps)
    grad = _grad_like(out)
    leaves = [t for t in (x, r, w, b, ib) if t is not None]
    return out, dict(zip(["x", "r", "w", "b", "ib"], torch.autograd.grad(out, leaves, grad)))


def _check(x, r, w, b, ib, p):
    out, grads = _run("triton", x, r, w, b, ib, p)
    ref, ref_grads = _run("reference", x, r, w, b, ib, p)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if x.dtype == torch.float32:
        baseline, baseline_grads = None, {}
    else:
        baseline, baseline_grads = _run_eager(x, r, w, b, ib, p)
    tol = TOL[x.dtype]  # for every gradient too: they all pass through x's dtype (h, grad_h)
    assert_close(out, ref, tol, baseline, slack=tol, what="out")
    for name, g in grads.items():
        assert g.dtype == ref_grads[name].dtype, name
        g_tol = max(tol, TOL[g.dtype])  # a bf16 weight's gradient is one bf16 rounding off at least
        assert_close(g, ref_grads[name], g_tol, baseline_grads.get(name), slack=g_tol, what=name)


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


@pytest.mark.parametrize("keyed", [False, True])
def test_kernel_contract_h_mean_rstd_and_dropout_mask(keyed):
    M, N, p, seed = 13, 1000, 0.3, 2**40 + 5
    x, r, ib = torch.randn(M, N, device=DEVICE), torch.randn(M, N, device=DEVICE), torch.randn(N, device=DEVICE)
    w, b = torch.randn(N, device=DEVICE), torch.randn(N, device=DEVICE)
    keys = torch.tensor([9, 2, 2**40, 0, 5, 31, 7, 1, 3, 12, 100, 4, 6], device=DEVICE) if keyed else None
    out, h, mean, rstd = kernels.layer_norm_forward(x, w, b, r, ib, 1e-5, p, seed, keys)
    keep = philox.keep_mask_rows(seed, p, M, N, DEVICE, keys)
    expected_h = (x + ib) * keep * (1.0 / (1.0 - p)) + r
    assert torch.equal(h[~keep], r[~keep])  # the same mask, bit for bit
    if DEVICE == "cpu":  # the interpreter rounds every operation, as eager PyTorch does
        assert torch.equal(h, expected_h)
    else:  # compiled code may fuse the multiply and the add (one rounding fewer)
        torch.testing.assert_close(h, expected_h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mean, expected_h.mean(1))
    torch.testing.assert_close(rstd, torch.rsqrt(expected_h.var(1, unbiased=False) + 1e-5))
    dy = torch.randn(M, N, device=DEVICE)
    gh, gx, gw, gb, gib = kernels.layer_norm_backward(dy, h, w, mean, rstd, p, seed, keys, True)
    assert torch.equal(gx, gh * keep * (1.0 / (1.0 - p)))  # the mask regenerated in backward
    torch.testing.assert_close(gib, gx.sum(0))
    # without residual, input bias and dropout, h is not written (autograd keeps x) and grad_x is empty
    _, h, _, _ = kernels.layer_norm_forward(x, w, b, None, None, 1e-5, 0.0, 0, None)
    assert h.numel() == 0
    assert kernels.layer_norm_backward(dy, x, w, mean, rstd, 0.0, 0, None, False)[1].numel() == 0


def test_dropout_follows_torch_manual_seed():
    x, r, w, b, ib = _inputs((6, 384), torch.float32, True, True)
    a, _ = _run("triton", x, r, w, b, ib, 0.5, seed=3)
    again, _ = _run("triton", x, r, w, b, ib, 0.5, seed=3)
    other, _ = _run("triton", x, r, w, b, ib, 0.5, seed=4)
    assert torch.equal(a, again) and not torch.allclose(a, other)


def test_empty_batch_and_hidden_size_limit():
    w, b = torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)
    with use_backend("triton"):
        x = torch.randn(0, 8, device=DEVICE, requires_grad=True)
        out = ops.layer_norm(x, w, b, residual=torch.randn(0, 8, device=DEVICE), dropout_p=0.1)
        out.sum().backward()
        assert out.shape == (0, 8) and x.grad.shape == (0, 8)
        with pytest.raises(ValueError, match="supports hidden sizes 1..4096, got 4097"):
            ops.layer_norm(*(torch.randn(s, device=DEVICE) for s in ((2, 4097), 4097, 4097)))
