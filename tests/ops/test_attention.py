"""The Triton attention kernels against the reference op: output and dq, dk, dv, padded and packed.

On CPU the kernels run in the Triton interpreter (Python per program), so shapes stay small; on a CUDA
machine (TRITON_INTERPRET unset) the same tests run the compiled kernels, and bf16 (tests/_device.py).
Errors are max |a - b| / max |b| (tests/_tolerance.py) against the reference op on the same (rounded)
inputs, which computes in fp32: fp16/bf16 tolerances are a few units of their rounding error (tl.dot sums
a whole row of products), the size of PyTorch's own fp16 attention error against fp32.
"""
import pytest
import torch

from fastbert import ops, use_backend
from fastbert.ops import padding
from fastbert.ops.attention import attention_reference
from tests._device import DEVICE, TRITON_MARKS, needs_compiled_triton
from tests._tolerance import assert_close, max_rel_err

pytestmark = TRITON_MARKS
pytest.importorskip("triton")
from fastbert.kernels import attention as kernels  # noqa: E402

FP32 = (torch.float32, 1e-5)
FP16 = (torch.float16, 2e-3)
# bf16 dots run only compiled (needs_compiled_triton); fp16 exercises the same 16-bit code path here.
BF16 = (torch.bfloat16, 1.6e-2)


def _inputs(lens, heads, head_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (len(lens), max(lens), heads, head_dim)
    q, k, v, grad = (torch.randn(shape, generator=g).to(DEVICE) for _ in range(4))
    return q, k, v, grad, torch.tensor(lens, dtype=torch.int32, device=DEVICE)


def _run(impl, fn, q, k, v, grad, *args, dtype=torch.float32, dropout_p=0.0, seed=0):
    """fn(q, k, v, *args) on backend `impl` in `dtype`: (out, dq, dk, dv), the seed drawn after torch.manual_seed."""
    q, k, v = (t.to(dtype).detach().requires_grad_() for t in (q, k, v))
    torch.manual_seed(seed)
    with use_backend(impl):
        out = fn(q, k, v, *args, dropout_p=dropout_p)
    out.backward(grad.to(dtype))
    return [t.detach() for t in (out, q.grad, k.grad, v.grad)]


def _assert_close(actual, expected, tol):
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected):
        assert_close(a, e, tol, what=name)


# (dtype, head dim, lengths, heads): every head dim in fp32 and a 16-bit dtype; lengths 1, 7, 65, 130,
# mixed in one batch, with fully padded rows (length 0); tails against every block size.
PADDED_CASES = [
    (FP32, 32, (70, 1, 0), 1),
    (FP32, 64, (40, 3), 2),
    (FP32, 128, (7, 1, 0), 1),
    (FP16, 32, (7, 3), 2),
    (FP16, 64, (130, 65, 1, 0), 1),
    (FP16, 128, (65, 33), 1),
    pytest.param(BF16, 64, (130, 65, 1, 0), 2, marks=needs_compiled_triton),
    pytest.param(BF16, 32, (7, 3), 2, marks=needs_compiled_triton),
    pytest.param(BF16, 128, (65, 33), 1, marks=needs_compiled_triton),
]


@pytest.mark.parametrize("dtype_tol, head_dim, lens, heads", PADDED_CASES)
def test_padded_matches_reference(dtype_tol, head_dim, lens, heads):
    dtype, tol = dtype_tol
    q, k, v, grad, seqlens = _inputs(lens, heads, head_dim)
    expected = _run("reference", ops.attention, *(t.to(dtype) for t in (q, k, v, grad)), seqlens)
    actual = _run("triton", ops.attention, q, k, v, grad, seqlens, dtype=dtype)
    _assert_close(actual, expected, tol)
    padded = torch.arange(max(lens), device=DEVICE)[None, :] >= seqlens[:, None]
    for t in actual:  # padded query rows: zero output, zero gradients
        assert t.dtype == dtype and (t[padded] == 0).all()


VARLEN_CASES = [  # (dtype, head dim, dropout): every head dim, fp16 with and without dropout, bf16 compiled
    (FP32, 64, 0.25),
    (FP16, 64, 0.0),
    (FP16, 64, 0.25),
    (FP32, 32, 0.1),
    (FP16, 32, 0.0),
    (FP32, 128, 0.0),
    (FP16, 128, 0.1),
    pytest.param(BF16, 64, 0.0, marks=needs_compiled_triton),
    pytest.param(BF16, 32, 0.25, marks=needs_compiled_triton),
    pytest.param(BF16, 128, 0.1, marks=needs_compiled_triton),
]


@pytest.mark.parametrize("dtype_tol, head_dim, dropout_p", VARLEN_CASES)
def test_varlen_matches_reference_and_padded(dtype_tol, head_dim, dropout_p):
    dtype, tol = dtype_tol
    lens = (45, 1, 0, 7)
    q, k, v, grad, seqlens = _inputs(lens, 1, head_dim)
    valid = torch.arange(max(lens), device=DEVICE)[None, :] < seqlens[:, None]
    cu = padding.seqlens_to_cu(seqlens)
    packed = [t[valid] for t in (q, k, v, grad)]
    args = (cu, max(lens))
    expected = _run("reference", ops.attention_varlen, *(t.to(dtype) for t in packed), *args,
                    dropout_p=dropout_p, seed=3)
    actual = _run("triton", ops.attention_varlen, *packed, *args, dtype=dtype, dropout_p=dropout_p, seed=3)
    _assert_close(actual, expected, tol)
    # The padded form runs the same blocks from each sequence's start and draws the same mask: equal bits.
    padded = _run("triton", ops.attention, q, k, v, grad, seqlens, dtype=dtype, dropout_p=dropout_p, seed=3)
    for a, p in zip(actual, padded):
        assert torch.equal(a, p[valid])


@pytest.mark.parametrize("dtype_tol", [FP32, FP16, pytest.param(BF16, marks=needs_compiled_triton)])
def test_padded_dropout_matches_reference(dtype_tol):
    dtype, tol = dtype_tol
    lens, p = (40, 9, 0), 0.3
    q, k, v, grad, seqlens = _inputs(lens, 2, 32)
    expected = _run("reference", ops.attention, *(t.to(dtype) for t in (q, k, v, grad)), seqlens, dropout_p=p,
                    seed=7)
    actual = _run("triton", ops.attention, q, k, v, grad, seqlens, dtype=dtype, dropout_p=p, seed=7)
    _assert_close(actual, expected, tol)


def test_dropout_matches_reference_and_follows_torch_seed():
    lens, p = (40, 9, 0), 0.3
    q, k, v, grad, seqlens = _inputs(lens, 2, 32)
    expected = _run("reference", ops.attention, q, k, v, grad, seqlens, dropout_p=p, seed=7)
    actual = _run("triton", ops.attention, q, k, v, grad, seqlens, dropout_p=p, seed=7)
    _assert_close(actual, expected, 1e-5)
    plain = _run("reference", ops.attention, q, k, v, grad, seqlens, seed=7)
    assert max_rel_err(actual[0], plain[0]) > 0.1  # the mask really drops something
    torch.manual_seed(7)
    with use_backend("triton"):
        again = ops.attention(q, k, v, seqlens, dropout_p=p)
        other = ops.attention(q, k, v, seqlens, dropout_p=p)  # the next seed from torch's generator
    assert torch.equal(again, actual[0]) and not torch.equal(other, again)


@pytest.mark.parametrize("packed", [False, True])
def test_strided_slices_of_fused_qkv(packed):
    """q, k, v as views of one [.., 3, H, D] projection (the model's layout): no copies, gradients into it."""
    lens, H, D = (33, 17), 2, 32
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(len(lens), max(lens), 3, H, D, generator=g).to(DEVICE)
    grad = torch.randn(len(lens), max(lens), H, D, generator=g).to(DEVICE)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    if packed:
        valid = torch.arange(max(lens), device=DEVICE)[None, :] < seqlens[:, None]
        qkv, grad = qkv[valid], grad[valid]
        fn, args = ops.attention_varlen, (padding.seqlens_to_cu(seqlens), max(lens))
    else:
        fn, args = ops.attention, (seqlens,)
    results = []
    for impl in ("reference", "triton"):
        x = qkv.clone().requires_grad_()
        q, k, v = x.unbind(-3)
        assert not q.is_contiguous() and all(kernels._aligned(t) is t for t in (q, k, v))  # used in place
        with use_backend(impl):
            out = fn(q, k, v, *args)
        out.backward(grad)
        results.append((out.detach(), x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-5)


def test_unaligned_and_strided_head_dim_views():
    """Views the kernels cannot address with vectorised rows (misaligned data, odd strides, a strided head
    dim) are copied by the launcher, not misread."""
    *_, grad, seqlens = _inputs((9, 3), 1, 32)
    wide = torch.randn(2, 9, 1, 66, device=DEVICE)
    odd = (wide[..., 1:33], wide[..., 33:65], wide[..., ::2][..., 1:33])  # 4-byte offsets, stride 66, stride 2
    assert odd[0].data_ptr() % 16 and odd[2].stride(-1) == 2
    expected = _run("reference", ops.attention, *odd, grad, seqlens)
    actual = _run("triton", ops.attention, *odd, grad, seqlens)
    _assert_close(actual, expected, 1e-5)


def test_near_max_length():
    q, k, v, grad, seqlens = _inputs((509,), 1, 64)
    expected = _run("reference", ops.attention, *(t.half() for t in (q, k, v, grad)), seqlens)
    actual = _run("triton", ops.attention, q, k, v, grad, seqlens, dtype=torch.float16)
    _assert_close(actual, expected, 2e-3)


def test_all_rows_padded_gives_zeros():
    q, k, v, grad, _ = _inputs((5, 5), 1, 32)
    out, dq, dk, dv = _run("triton", ops.attention, q, k, v, grad, torch.zeros(2, dtype=torch.int32, device=DEVICE))
    assert all((t == 0).all() for t in (out, dq, dk, dv))


def test_head_dim_without_kernel(monkeypatch):
    q = torch.randn(2, 5, 1, 48, device=DEVICE)
    with use_backend("triton"), pytest.raises(ValueError, match="got head dim 48"):
        ops.attention(q, q, q)
    # "auto" runs Triton wherever it resolves to it (CUDA), except for head dims it has no kernel for.
    monkeypatch.setattr("fastbert.backend.resolve", lambda op, device, kernels: "triton")
    with use_backend("auto"):
        expected = attention_reference(q, q, q, torch.tensor([5, 5], device=DEVICE))
        torch.testing.assert_close(ops.attention(q, q, q), expected)
