"""The C++ CPU kernels (backend "cpu") against the reference ops: outputs, every gradient and the dropout
masks, in fp32 / bf16 / fp16, on both instruction sets this machine runs (AVX-512 and the AVX2 fallback)."""
import math

import pytest
import torch

from fastbert import BertConfig, BertForMaskedLM, ops, use_backend
from fastbert import _extension
from fastbert.ops import padding, philox
from tests._tolerance import assert_close, max_rel_err

pytestmark = pytest.mark.skipif(not _extension.has("layer_norm_forward"),
                                reason=f"C++ extension unavailable: {_extension.status()}")

# (dtype, tolerance) under tests/_tolerance.py's rule: fp32 results within `tolerance` of the reference;
# bf16 and fp16 results are held to an fp32 run of the reference on the same (upcast) inputs, with the
# reference op run in that dtype as the baseline: max(tolerance, 2 x its error). The tolerances exceed
# one ulp (TOL) because the C++ kernels sum rows in their own (vectorised) order.
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)]

@pytest.fixture(params=["avx512", "avx2"])
def isa(request):
    C = torch.ops.fastbert_C
    before = C.cpu_isa()
    try:
        C.cpu_isa(request.param)
    except RuntimeError:
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    C.cpu_isa(before)


def _run(backend, fn, inputs, seed=0):
    """fn(*inputs) under `backend` with dropout seeds drawn from `seed`; returns [out, grads of inputs...]."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    with use_backend(backend):
        out = fn(*leaves, generator=torch.Generator().manual_seed(seed))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(grad)
    return [out] + [t.grad for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]


def _check(fn, inputs, tol, what, ours=None):
    """The "cpu" backend against "reference" (see DTYPES); returns the "cpu" results."""
    ours = _run("cpu", fn, inputs) if ours is None else ours
    ref = _run("reference", fn, inputs)
    low_precision = any(isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16) for t in inputs)
    if low_precision:
        exact = _run("reference", fn, [t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                       for t in inputs])
    for i, (a, r) in enumerate(zip(ours, ref)):
        assert a.dtype == r.dtype and a.shape == r.shape, (what, i, a.dtype, r.dtype, a.shape, r.shape)
        name = f"{what}: output {i} (0 = forward, then gradients)"
        if low_precision:
            assert_close(a, exact[i], tol, baseline=r, what=name)
        else:
            assert_close(a, r, tol, what=name)
    return ours


# -- layer_norm --

@pytest.mark.parametrize("shape", [(1, 384), (37, 768), (5, 1000), (3, 7, 33), (4, 3)])
@pytest.mark.parametrize("variant", ["plain", "residual_bias_dropout", "fp32_residual"])
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_layer_norm(isa, shape, variant, dtype, tol):
    n = shape[-1]
    if n < 8 and variant != "plain" and dtype != torch.float32:
        pytest.skip("h is kept in x's dtype (the contract); at n < 8 the norm's gradient amplifies its rounding "
                    "past the reference's, which never rounds h")
    x = torch.randn(shape).to(dtype)
    w, b, ib = torch.randn(n), torch.randn(n), torch.randn(n)
    if variant == "plain":
        inputs, kw = (x, w, b), {}
    elif variant == "residual_bias_dropout":
        inputs, kw = (x, w, b, torch.randn(shape).to(dtype), ib.to(dtype)), {"dropout_p": 0.2}
    else:  # bf16 activations + an fp32 residual stream
        inputs, kw = (x, w, b, torch.randn(shape), ib), {"dropout_p": 0.1}

    def fn(x, w, b, residual=None, input_bias=None, generator=None):
        return ops.layer_norm(x, w, b, 1e-5, residual=residual, input_bias=input_bias, generator=generator, **kw)

    _check(fn, inputs, tol, f"layer_norm {variant}")


@pytest.mark.parametrize("keyed", [False, True])
def test_layer_norm_dropout_mask_is_philox(isa, keyed):
    rows, n, p, seed = 9, 45, 0.3, 1234  # odd n: rows start inside a Philox block
    x = torch.randn(rows, n)
    keys = torch.tensor([5, 0, 77, 3, 2**40 + 1, 9, 1, 4, 12]) if keyed else None  # any order, gaps, large
    h = torch.ops.fastbert_C.layer_norm_forward(x, torch.ones(n), torch.zeros(n), None, None, 1e-5, p, seed, keys)[1]
    keep = philox.keep_mask_rows(seed, p, rows, n, keys=keys)
    assert torch.equal(h != 0, keep)
    torch.testing.assert_close(h, x * keep * (1.0 / (1.0 - p)), rtol=0, atol=0)


# -- bias_gelu --

@pytest.mark.parametrize("shape", [(1, 1536), (17, 384), (3, 5, 1000), (2, 3)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_bias_gelu(isa, shape, approximate, with_bias, dtype, tol):
    x = (3 * torch.randn(shape)).to(dtype)
    inputs = (x, torch.randn(shape[-1])) if with_bias else (x,)

    def fn(x, bias=None, generator=None):
        return ops.bias_gelu(x, bias, approximate)

    _check(fn, inputs, tol, f"bias_gelu {approximate}")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_as_accurate_as_pytorch(isa, approximate):
    """fp32 GELU and GELU' against float64 over [-12, 12]: no worse than PyTorch's own fp32 GELU (the exact
    form computes the negative tail without cancellation, where PyTorch's loses every digit)."""
    x64 = torch.linspace(-12, 12, 100001, dtype=torch.float64).float().double()
    x = x64.float()
    if approximate == "none":
        exact = 0.5 * x64 * torch.special.erfc(-x64 / math.sqrt(2))
    else:
        exact = x64 * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3))
    xg = x64.clone().requires_grad_()
    (0.5 * xg * torch.special.erfc(-xg / math.sqrt(2)) if approximate == "none" else
     xg * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (xg + 0.044715 * xg**3))).sum().backward()
    ours = torch.ops.fastbert_C.bias_gelu_forward(x[None], torch.empty(0), approximate)[0].double()
    grad = torch.ops.fastbert_C.bias_gelu_backward(torch.ones(1, len(x)), x[None], torch.empty(0), approximate)[0][0]
    xt = x.clone().requires_grad_()
    torch_fp32 = torch.nn.functional.gelu(xt, approximate=approximate)
    torch_fp32.sum().backward()
    assert (ours - exact).abs().max() <= 1e-6 and (grad.double() - xg.grad).abs().max() <= 4e-6
    core = x.abs() <= 3  # relative error where GELU is not tiny
    rel = lambda y: ((y - exact).abs() / exact.abs())[core & (x != 0)].max()  # noqa: E731
    assert rel(ours) <= max(2e-6, 2 * rel(torch_fp32.double()))



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gelu_within_storage_rounding(isa, dtype):
    """bf16 / fp16 storage takes the fast erf (no erfc): over every such input in [-12, 12], each GELU and
    GELU' value is within an ulp of the storage dtype (plus 1e-6 absolute, the fit's error) of float64."""
    x = torch.linspace(-12, 12, 20001).to(dtype).unique()
    x64 = x.double().requires_grad_()
    exact = 0.5 * x64 * torch.special.erfc(-x64 / math.sqrt(2))
    exact.sum().backward()
    ours = torch.ops.fastbert_C.bias_gelu_forward(x[None], x.new_empty(0), "none")[0].double()
    grad = torch.ops.fastbert_C.bias_gelu_backward(torch.ones(1, len(x), dtype=dtype), x[None], x.new_empty(0),
                                                   "none")[0][0].double()
    ulp = torch.finfo(dtype).eps
    for got, want in ((ours, exact.detach()), (grad, x64.grad)):
        assert ((got - want).abs() <= ulp * want.abs() + 1e-6).all(), (got - want).abs().max()


# -- attention --

ATTENTION_SHAPES = [  # (seqlens, heads, head_dim): single tokens, fully padded rows, odd sizes
    ([5, 1, 9, 3], 3, 8),
    ([1, 0, 6], 2, 16),
    ([70, 33, 64, 0], 2, 33),
    ([64, 40, 12, 64], 12, 32),
]


def _qkv(lens, H, D, dtype, packed):
    """q, k, v as strided views of one fused projection, as SelfAttention makes them."""
    S = max(max(lens), 1)
    tokens = sum(lens) if packed else len(lens) * S
    qkv = torch.randn(tokens, 3, H, D).to(dtype)
    if not packed:
        qkv = qkv.view(len(lens), S, 3, H, D)
    return qkv.unbind(-3)


@pytest.mark.parametrize("lens, H, D", ATTENTION_SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_attention_padded(isa, lens, H, D, p, dtype, tol):
    q, k, v = _qkv(lens, H, D, dtype, packed=False)
    seqlens = torch.tensor(lens, dtype=torch.int32)

    def fn(q, k, v, generator=None):
        return ops.attention(q, k, v, seqlens, dropout_p=p, generator=generator)

    ours = _check(fn, (q, k, v), tol, "attention")
    valid = torch.arange(q.shape[1])[None] < seqlens[:, None]
    for t in ours:
        assert (t[~valid] == 0).all()  # padding: zero output, zero gradients


def test_attention_longest_sequences(isa):
    """512 tokens: several query blocks against all keys."""
    q, k, v = _qkv([512, 100], 1, 64, torch.float32, packed=False)

    def fn(q, k, v, generator=None):
        return ops.attention(q, k, v, torch.tensor([512, 100], dtype=torch.int32), dropout_p=0.1, generator=generator)

    _check(fn, (q, k, v), 1e-5, "attention")


@pytest.mark.parametrize("lens, H, D", ATTENTION_SHAPES)
@pytest.mark.parametrize("dtype, tol", DTYPES[:2])
def test_attention_varlen_equals_padded(isa, lens, H, D, dtype, tol):
    """Packed and padded batches: the same numbers (same dropout mask, same order of arithmetic)."""
    q, k, v = _qkv(lens, H, D, dtype, packed=True)
    cu = padding.seqlens_to_cu(torch.tensor(lens, dtype=torch.int32))
    S = max(lens)
    idx = padding.padded_indices(cu, S)

    def packed(q, k, v, generator=None):
        return ops.attention_varlen(q, k, v, cu, S + 3, dropout_p=0.1, generator=generator)

    def padded(q, k, v, generator=None):
        pad = lambda t: padding.pad_input(t, idx, len(lens), S)  # noqa: E731
        out = ops.attention(pad(q), pad(k), pad(v), torch.tensor(lens, dtype=torch.int32), dropout_p=0.1,
                            generator=generator)
        return out.reshape(-1, H, D).index_select(0, idx)

    a, b = _run("cpu", packed, (q, k, v)), _run("cpu", padded, (q, k, v))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    _check(packed, (q, k, v), tol, "attention_varlen", ours=a)


@pytest.mark.parametrize("keyed", [False, True])
def test_attention_dropout_mask_is_philox(isa, keyed):
    """q = k = 0: uniform probabilities; v[j] = e_j: the output shows the kept entries themselves."""
    B, S, H, p, seed = 2, 21, 2, 0.3, 4321
    q = torch.zeros(B, S, H, S)
    v = torch.eye(S)[None, :, None, :].expand(B, S, H, S).contiguous()
    lens = torch.tensor([S, 17], dtype=torch.int32)
    keys = torch.tensor([1000, 3]) if keyed else None
    out, _ = torch.ops.fastbert_C.attention_forward(q, q, v, lens, 1.0, p, seed, keys)
    keep = philox.keep_mask_attention(seed, p, B, H, S, S, keys=keys)  # [B, H, q, k]
    expected = keep.float() / ((1 - p) * lens[:, None, None, None])
    expected = expected * (torch.arange(S) < lens[:, None])[:, None, :, None]  # padded queries: 0
    expected = expected * (torch.arange(S) < lens[:, None])[:, None, None, :]  # padded keys: never attended
    torch.testing.assert_close(out.transpose(1, 2), expected, rtol=1e-6, atol=1e-7)


# -- embedding_layer_norm --

@pytest.mark.parametrize("tokens, n", [(1, 384), (37, 64), (100, 1000), (8, 3)])
@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_embedding_layer_norm(isa, tokens, n, p, dtype, tol):
    V, P, T2 = 40, 30, 2
    ids = torch.randint(0, V, (tokens,))
    ids[::3] = 0  # the padding row: no gradient
    inputs = (ids, torch.randint(0, T2, (tokens,)), torch.randint(0, P, (tokens,)),
              *(torch.randn(rows, n).to(dtype) for rows in (V, T2, P)), torch.randn(n), torch.randn(n))

    def fn(*args, generator=None):
        return ops.embedding_layer_norm(*args, 1e-12, dropout_p=p, padding_idx=0, generator=generator)

    ours = _check(fn, inputs, tol, "embedding_layer_norm")
    assert (ours[1][0] == 0).all()


def test_embedding_index_out_of_range_is_an_error():
    word, pos, types = torch.randn(10, 8), torch.randn(4, 8), torch.randn(2, 8)
    ids = torch.tensor([1, 2, 10])
    error = r"input_ids must lie in \[0, 10\), got values in \[1, 10\]"
    with use_backend("cpu"), pytest.raises(RuntimeError, match=error):
        ops.embedding_layer_norm(ids, torch.zeros(3, dtype=torch.long), torch.arange(3), word, types, pos,
                                 torch.ones(8), torch.zeros(8))


# -- the whole model --

@pytest.mark.parametrize("unpad", [True, False])
def test_bert_cpu_matches_reference(unpad):
    """A small BertForMaskedLM in training mode, every dropout on: backend "cpu" reproduces "reference"
    (forward, loss and every parameter gradient), since both draw the same Philox masks."""
    config = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=100, max_position_embeddings=32)
    lens = [11, 1, 7, 16]
    ids = torch.randint(1, 120, (4, 16))
    mask = (torch.arange(16)[None] < torch.tensor(lens)[:, None]).long()
    labels = torch.where(torch.rand(4, 16) < 0.3, ids, -100) * mask + -100 * (1 - mask)
    results = {}
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        model = BertForMaskedLM(config, backend=backend, unpad=unpad).train()
        torch.manual_seed(1)  # the dropout seeds
        loss, logits = model(ids, labels=labels, attention_mask=mask, token_type_ids=(ids % 2))
        loss.backward()
        results[backend] = (loss, logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (loss, logits, grads), (ref_loss, ref_logits, ref_grads) = results["cpu"], results["reference"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert max_rel_err(logits, ref_logits) < 1e-5
    errors = {n: max_rel_err(g, ref_grads[n]) for n, g in grads.items()}
    assert errors.keys() == ref_grads.keys() and len(errors) > 20
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda e: -e[1])[:3]


def test_isa_switch_rejects_unknown():
    with pytest.raises(RuntimeError, match="unknown instruction set 'sse'"):
        torch.ops.fastbert_C.cpu_isa("sse")
