"""Inputs no op can run on (a meta tensor, an empty hidden size or head dim, too few dimensions) fail before any
kernel with one line naming the op, the argument and the problem, on every backend."""
import pytest
import torch

import fastbert
from fastbert import ops


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def real(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


IDS = torch.zeros(2, 3, dtype=torch.int64)
CU = torch.tensor([0, 3, 5], dtype=torch.int32)

# (op call, error type, the start of the message: op and argument, the problem)
CASES = {
    "layer_norm x meta": (lambda: ops.layer_norm(meta(4, 8), meta(8), meta(8)),
                          ValueError, "layer_norm: x is a meta tensor"),
    "layer_norm hidden 0": (lambda: ops.layer_norm(real(4, 0), real(0), real(0)),
                            ValueError, "layer_norm: x has hidden size 0"),
    "layer_norm x scalar": (lambda: ops.layer_norm(real(), real(1), real(1)),
                            ValueError, "layer_norm: x must have at least 1 dimension"),
    "layer_norm weight meta": (lambda: ops.layer_norm(real(4, 8), meta(8), real(8)),
                               ValueError, "layer_norm: weight is a meta tensor"),
    "bias_gelu x meta": (lambda: ops.bias_gelu(meta(4, 8), meta(8)), ValueError, "bias_gelu: x is a meta tensor"),
    "bias_gelu hidden 0": (lambda: ops.bias_gelu(real(4, 0), real(0)), ValueError, "bias_gelu: x has hidden size 0"),
    "bias_gelu hidden 0 no bias": (lambda: ops.bias_gelu(real(4, 0)), ValueError, "bias_gelu: x has hidden size 0"),
    "attention q meta": (lambda: ops.attention(meta(2, 3, 2, 32), meta(2, 3, 2, 32), meta(2, 3, 2, 32)),
                         ValueError, "attention: q is a meta tensor"),
    "attention head dim 0": (lambda: ops.attention(real(2, 3, 2, 0), real(2, 3, 2, 0), real(2, 3, 2, 0)),
                             ValueError, "attention: q has head dim 0"),
    "attention_varlen meta": (lambda: ops.attention_varlen(meta(5, 2, 32), meta(5, 2, 32), meta(5, 2, 32),
                                                           CU.to("meta"), 3),
                              ValueError, "attention_varlen: q is a meta tensor"),
    "attention_varlen head dim 0": (lambda: ops.attention_varlen(real(5, 2, 0), real(5, 2, 0), real(5, 2, 0), CU, 3),
                                    ValueError, "attention_varlen: q has head dim 0"),
    "embedding_layer_norm meta": (lambda: ops.embedding_layer_norm(
        IDS.to("meta"), IDS.to("meta"), IDS.to("meta"), meta(10, 8), meta(2, 8), meta(5, 8), meta(8), meta(8)),
        ValueError, "embedding_layer_norm: word is a meta tensor"),
    "embedding_layer_norm ids meta": (lambda: ops.embedding_layer_norm(
        IDS.to("meta"), IDS, IDS, real(10, 8), real(2, 8), real(5, 8), real(8), real(8)),
        ValueError, "embedding_layer_norm: input_ids is a meta tensor"),
    "embedding_layer_norm hidden 0": (lambda: ops.embedding_layer_norm(
        IDS, IDS, IDS, real(10, 0), real(2, 0), real(5, 0), real(0), real(0)),
        ValueError, "embedding_layer_norm: word has hidden size 0"),
    "unpad_input meta": (lambda: ops.unpad_input(meta(2, 3, 8), torch.ones(2, 3, device="meta")),
                         ValueError, "unpad_input: hidden is a meta tensor"),
    "unpad_input hidden 1-D": (lambda: ops.unpad_input(real(6), torch.ones(2, 3)),
                               ValueError, "unpad_input: hidden must have at least 2 dimension"),
    "pad_input meta": (lambda: ops.pad_input(meta(5, 8), torch.arange(5, device="meta"), 2, 3),
                       ValueError, "pad_input: packed is a meta tensor"),
    "pad_input int32 indices": (lambda: ops.pad_input(real(5, 8), torch.arange(5, dtype=torch.int32), 2, 3),
                                TypeError, "pad_input: indices has dtype torch.int32"),
}


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_argument(case, backend):
    call, error, message = CASES[case]
    with fastbert.use_backend(backend), pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text, text


def test_pad_and_unpad_take_empty_features():
    # Not an error: [B, S, 0] features pack to [T, 0] and back, as any other feature shape.
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    packed, indices, cu_seqlens, max_seqlen = ops.unpad_input(real(2, 3, 0), mask)
    assert packed.shape == (4, 0) and cu_seqlens.tolist() == [0, 2, 4] and max_seqlen == 2
    assert ops.pad_input(packed, indices, 2, 3).shape == (2, 3, 0)
