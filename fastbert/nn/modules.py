"""Thin nn.Module wrappers: parameters and the training flag here, the work in fastbert.ops."""
from __future__ import annotations

import torch
from torch import nn

from fastbert import ops
from fastbert.ops import philox


class LayerNorm(nn.Module):
    """LayerNorm(dropout(x + input_bias) + residual): torch.nn.LayerNorm when called with x alone."""

    def __init__(self, hidden_size: int, eps: float = 1e-12, dropout: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps, self.dropout = eps, dropout

    def forward(self, x, residual=None, input_bias=None, dropout_keys=None):
        """dropout_keys: int64 x.shape[:-1], the rows' keys in the dropout mask (fastbert.ops.philox)."""
        p = self.dropout if self.training else 0.0
        return ops.layer_norm(x, self.weight, self.bias, self.eps, residual=residual,
                              input_bias=input_bias, dropout_p=p, dropout_keys=dropout_keys)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, dropout={self.dropout}"


class Dropout(nn.Module):
    """nn.Dropout on rows [rows, n] with Philox masks keyed by row (fastbert.ops.philox.dropout): a row keyed by
    its example draws the same mask in whichever batch, share or rank it sits."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x, keys=None):
        return philox.dropout(x, self.p if self.training else 0.0, keys)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BiasGELU(nn.Module):
    """GELU(x + bias): the activation after a bias-free Linear, bias added in the same pass."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x, bias=None):
        return ops.bias_gelu(x, bias, self.approximate)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with one fused QKV projection (no output projection).

    Padded input [B, S, hidden] with `seqlens` [B] (right padding), or packed input [T, hidden] with
    `cu_seqlens` and `max_seqlen`. Returns the attention context in the input's layout. dropout_keys: int64
    [num_seqs], the sequences' keys in the dropout mask (fastbert.ops.philox).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, hidden_size // num_heads, dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)

    def forward(self, x, seqlens=None, cu_seqlens=None, max_seqlen=None, dropout_keys=None):
        p = self.dropout if self.training else 0.0
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(-3)
        if cu_seqlens is not None:
            out = ops.attention_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p=p, dropout_keys=dropout_keys)
        else:
            out = ops.attention(q, k, v, seqlens, dropout_p=p, dropout_keys=dropout_keys)
        return out.flatten(-2)
