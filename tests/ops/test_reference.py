"""The reference ops against independent PyTorch formulations (what every kernel is later held to)."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from fastbert import ops, use_backend
from fastbert.ops import padding, philox
from fastbert.ops.attention import attention_reference, attention_varlen_reference
from fastbert.ops.layer_norm import layer_norm_reference


@pytest.mark.parametrize("shape", [(1, 384), (3, 7, 1000), (5, 1)])
def test_layer_norm_with_residual_and_bias(shape):
    x, r = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    w, b, ib = (torch.randn(shape[-1], dtype=torch.float64) for _ in range(3))
    out = layer_norm_reference(x.float(), w, b, 1e-12, residual=r, input_bias=ib)
    ref = F.layer_norm(x + ib + r, shape[-1:], w, b, 1e-12)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_layer_norm_dropout_uses_philox_mask():
    x = torch.randn(6, 40)
    w, b = torch.ones(40), torch.zeros(40)
    seed, p = 99, 0.25
    out = layer_norm_reference(x, w, b, 1e-5, dropout_p=p, seed=seed)
    keep = philox.keep_mask_rows(seed, p, 6, 40)
    torch.testing.assert_close(out, F.layer_norm(x * keep / (1 - p), (40,), eps=1e-5))


def test_bias_gelu_exact_and_tanh():
    x, b = torch.randn(4, 9, 33), torch.randn(33)
    torch.testing.assert_close(ops.bias_gelu(x, b), F.gelu(x + b))
    torch.testing.assert_close(ops.bias_gelu(x, b, "tanh"), F.gelu(x + b, approximate="tanh"))
    with pytest.raises(ValueError, match="approximate"):
        ops.bias_gelu(x, b, "fast")


def test_attention_matches_sdpa_with_key_padding():
    B, S, H, D = 3, 13, 2, 16
    q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
    seqlens = torch.tensor([13, 1, 6], dtype=torch.int32)
    out = attention_reference(q, k, v, seqlens)
    valid = torch.arange(S)[None] < seqlens[:, None]
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=valid[:, None, None, :]).transpose(1, 2)
    torch.testing.assert_close(out[valid], ref[valid])
    assert (out[~valid] == 0).all()


def test_fully_padded_rows_give_zeros_and_zero_grads():
    q, k, v = (torch.randn(2, 5, 2, 8, requires_grad=True) for _ in range(3))
    out = attention_reference(q, k, v, torch.tensor([0, 5]))
    assert (out[0] == 0).all()
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and (t.grad[0] == 0).all()


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_varlen_equals_padded(p):
    lens = torch.tensor([5, 1, 9, 3], dtype=torch.int32)
    B, S, H, D = 4, 9, 3, 8
    q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
    valid = torch.arange(S)[None] < lens[:, None]
    padded = attention_reference(q, k, v, lens, p, None, seed=5)
    cu = padding.seqlens_to_cu(lens)
    packed = attention_varlen_reference(q[valid], k[valid], v[valid], cu, S, p, None, seed=5)
    torch.testing.assert_close(packed, padded[valid])
    longer = attention_varlen_reference(q[valid], k[valid], v[valid], cu, 12, p, None, seed=5)
    torch.testing.assert_close(longer, packed)  # max_seqlen only bounds; it changes nothing


def test_pad_unpad_roundtrip_and_cu_seqlens():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    h = torch.randn(3, 4, 5)
    packed, idx, cu, maxlen = padding.unpad_input(h, mask)
    assert cu.tolist() == [0, 2, 5, 5] and maxlen == 3 and packed.shape == (5, 5)
    back = padding.pad_input(packed, idx, 3, 4)
    torch.testing.assert_close(back, h * mask[..., None])
    assert padding.position_ids_packed(cu).tolist() == [0, 1, 0, 1, 2]


def test_op_input_errors():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \[7\]; expected \[8\]"):
        ops.layer_norm(x, torch.ones(7), torch.zeros(8))
    with pytest.raises(TypeError, match="layer_norm: x has dtype torch.int64"):
        ops.layer_norm(x.long(), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        ops.layer_norm(x, torch.ones(8), torch.zeros(8), dropout_p=1.0)
    q = torch.randn(2, 3, 1, 4)
    with pytest.raises(ValueError, match=r"attention: k has shape \[2, 3, 1, 5\]"):
        ops.attention(q, torch.randn(2, 3, 1, 5), q)
    with pytest.raises(ValueError, match=r"seqlens must lie in \[0, 3\]"):
        ops.attention(q, q, q, torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to total_tokens=6"):
        ops.attention_varlen(q.view(6, 1, 4), q.view(6, 1, 4), q.view(6, 1, 4),
                             torch.tensor([0, 2, 5], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="max_seqlen=2 is below the longest sequence"):
        ops.attention_varlen(q.view(6, 1, 4), q.view(6, 1, 4), q.view(6, 1, 4),
                             torch.tensor([0, 3, 6], dtype=torch.int32), 2)


def test_backend_selection_errors(monkeypatch):
    x, w, b = torch.randn(2, 8), torch.ones(8), torch.zeros(8)
    with use_backend("reference"):
        ops.layer_norm(x, w, b)
    with use_backend("auto"):
        ops.layer_norm(x, w, b)  # auto always finds something
    module = importlib.import_module("fastbert.ops.layer_norm")  # the attribute is the function
    monkeypatch.setattr("fastbert.backend.triton_interpreted", lambda: False)
    monkeypatch.setattr(module, "KERNELS", ("triton",))
    with use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.layer_norm(x, w, b)
    monkeypatch.setattr(module, "KERNELS", ())
    with use_backend("cpu"), pytest.raises(RuntimeError, match="has no 'cpu' kernel"):
        ops.layer_norm(x, w, b)
