"""Pad/unpad helpers (as flash-attention's bert_padding): run a whole encoder on packed tokens.

Packed layout: the real tokens of every sequence back to back, [total_tokens, ...], described by
`cu_seqlens` (int32, [num_seqs + 1], cumulative lengths starting at 0) and `max_seqlen` (an int).
"""
from __future__ import annotations

import torch

from fastbert.ops import _checks


def unpad_input(hidden: torch.Tensor, attention_mask: torch.Tensor):
    """[B, S, ...] + mask [B, S] (nonzero = real token) -> (packed [T, ...], indices [T], cu_seqlens, max_seqlen).

    Any mask works (right or left padding, holes): tokens keep their order within each row.
    """
    _checks.tensor("unpad_input", "hidden", hidden, min_dim=2, dtypes=None)
    _checks.tensor("unpad_input", "attention_mask", attention_mask, dim=2, dtypes=None,
                   device=hidden.device, shape=tuple(hidden.shape[:2]))
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
    max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    packed = hidden.flatten(0, 1).index_select(0, indices)
    return packed, indices, cu_seqlens, max_seqlen


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of unpad_input: [T, ...] -> [batch, seqlen, ...] with zeros at padding."""
    _checks.tensor("pad_input", "packed", packed, min_dim=1, dtypes=None)
    _checks.tensor("pad_input", "indices", indices, dim=1, dtypes=(torch.int64,), device=packed.device,
                   shape=(packed.shape[0],))
    out = packed.new_zeros(batch * seqlen, *packed.shape[1:])
    out = out.index_copy(0, indices, packed)
    return out.view(batch, seqlen, *packed.shape[1:])


def seqlens_to_cu(seqlens: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))


def padded_indices(cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """For packed tokens, their flat index in a [num_seqs, max_seqlen] padded layout."""
    cu = cu_seqlens.to(torch.int64)
    seqlens = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(len(seqlens), device=cu.device), seqlens)
    pos = torch.arange(int(cu[-1]), device=cu.device) - cu[:-1][seq]
    return seq * max_seqlen + pos


def position_ids_packed(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Position of each packed token inside its own sequence (0, 1, ..., len-1 per sequence)."""
    cu = cu_seqlens.to(torch.int64)
    seqlens = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(len(seqlens), device=cu.device), seqlens)
    return torch.arange(int(cu[-1]), device=cu.device) - cu[:-1][seq]


def token_bucket(total: int) -> int:
    """`total` rounded up to a bucket size: a multiple of 16 below 256 tokens, else of 1/8 of the power of two
    at or below it, at most 128 (at most 12.5% more tokens; 8 sizes per octave, then multiples of 128)."""
    step = min(128, max(16, 1 << max(total.bit_length() - 4, 0)))
    return -(-total // step) * step


def pad_to_bucket(input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen, pad_token_id):
    """Packed input grown to token_bucket(T) tokens by one dummy sequence of pad tokens at the end.

    A matmul library that builds a kernel per shape (oneDNN for bf16 on CPU; its cost: README) then
    sees a few token counts instead of a new one every batch. The real sequences are untouched: attention
    stays within each sequence, the dummy's outputs are sliced off ([:T]), so it adds no gradient.
    Returns (input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen), unchanged if T is a bucket.
    """
    total = input_ids.shape[0]
    extra = token_bucket(total) - total
    if extra == 0:
        return input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen
    grow = lambda t, value: torch.cat([t, t.new_full((extra,), value)])  # noqa: E731
    cu_seqlens = torch.cat([cu_seqlens, cu_seqlens.new_full((1,), total + extra)])
    return (grow(input_ids, pad_token_id), grow(token_type_ids, 0), grow(position_ids, 0), cu_seqlens,
            max(max_seqlen, extra))
