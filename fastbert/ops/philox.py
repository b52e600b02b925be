"""The dropout RNG every backend shares, bit for bit: Philox4x32-10, counter based.

A dropout site gets a 64-bit `seed` (drawn from torch's generator, so `torch.manual_seed` makes runs
repeatable) and gives each element a 64-bit index `i`. The element's 16 random bits are

    r = philox4x32_10(key=(seed & 0xffffffff, seed >> 32), counter=(lo32(i >> 3), hi32(i >> 3), 0, 0))
    bits16 = (r[(i & 7) >> 1] >> (16 * (i & 1))) & 0xffff

which is `tl.randint4x(seed, i >> 3)` in Triton, so one Philox call feeds 8 elements. The element is
kept iff bits16 >= threshold(p) = round(p * 65536) and then scaled by 1 / (1 - p). Element indices, from
the op's `dropout_keys` (int64 >= 0; None: a row's or sequence's position in the call; every index below 2**63):
  - row-wise ops on a [rows, n] view (layer norm, embedding):  i = key[row] * n + col
  - attention probabilities:  i = ((key[seq] * heads + head) << 32) | (q << 16) | k, with q, k positions
    inside the sequence, so packed (varlen) and padded batches draw the same mask.
The model keys its sites by sequence (`BertModel(dropout_keys=...)`, one key per sequence; a token row's key
is token_keys(): (sequence key << 16) | position), and the training data keys each sequence by its
example's position in the data set and its view (fastbert.data.batching). So an element's mask depends on
the example and the position only: not on the batch's packing or padding, nor on how ranks share it.
Backward passes regenerate the mask from (seed, i) instead of storing it.
This module is the reference implementation; the kernels reproduce it exactly.
"""
from __future__ import annotations

import torch

from fastbert.kernels import dropout_threshold as threshold  # the formula the kernels use, defined with them

_M32 = 0xFFFFFFFF
POSITION_BITS = 16  # token_keys: positions inside a sequence below 2**16, as attention's q and k
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh 62-bit seed from `generator` (default: torch's CPU generator)."""
    return int(torch.randint(0, 2**62, (), generator=generator))


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * b for a uint32 constant and int64 tensor of uint32 values."""
    p_lo = b * (a & 0xFFFF)  # < 2**48: no int64 overflow anywhere
    p_hi = b * (a >> 16)
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi, lo


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor) -> list[torch.Tensor]:
    """Philox4x32-10 of counters (c0, c1, 0, 0) under a 64-bit key; int64 tensors holding uint32."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return [c0, c1, c2, c3]


def bits16(seed: int, starts: torch.Tensor, n: int) -> torch.Tensor:
    """[len(starts), n] int32 tensor: the bits16 of indices starts[r] + c (each start a multiple of 8)."""
    starts = starts.to(torch.int64).reshape(-1)
    if (starts % 8 != 0).any():
        raise ValueError("bits16: every start index must be a multiple of 8")
    groups = (n + 7) // 8
    ctr = (starts >> 3)[:, None] + torch.arange(groups, dtype=torch.int64, device=starts.device)
    words = torch.stack(philox4x32(seed, ctr & _M32, (ctr >> 32) & _M32), dim=-1)  # [R, G, 4]
    halves = torch.stack([words & 0xFFFF, words >> 16], dim=-1)  # [R, G, 4, 2]: element order
    return halves.reshape(len(starts), groups * 8)[:, :n].to(torch.int32)


def keep_mask_rows(seed: int, p: float, rows: int, n: int, device=None, keys: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Keep mask of a row-wise dropout site on a [rows, n] view (index key[row] * n + col; keys None: the row)."""
    if keys is None:
        bits = bits16(seed, torch.zeros(1, dtype=torch.int64, device=device), rows * n)
        return (bits >= threshold(p)).reshape(rows, n)
    starts = keys.to(device=device, dtype=torch.int64).reshape(-1) * n
    skip = starts & 7  # a row starting inside a Philox group: generate from the group's start, then skip
    bits = bits16(seed, starts - skip, n + 7)
    bits = bits.gather(1, skip[:, None] + torch.arange(n, device=bits.device)[None, :])
    return bits >= threshold(p)


def keep_mask_attention(seed: int, p: float, seqs: int, heads: int, q_len: int, k_len: int,
                        device=None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask [seqs, heads, q_len, k_len] of attention-probability dropout (keys [seqs]; None: 0 .. seqs-1)."""
    keys = torch.arange(seqs, device=device) if keys is None else keys.to(device)
    sh = (keys.to(torch.int64)[:, None] * heads + torch.arange(heads, device=device)).reshape(-1, 1)
    q = torch.arange(q_len, dtype=torch.int64, device=device)[None, :]
    starts = (sh << 32) | (q << 16)
    bits = bits16(seed, starts, k_len)
    return (bits >= threshold(p)).reshape(seqs, heads, q_len, k_len)


def dropout(x: torch.Tensor, p: float, keys: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout of x [rows, n] as a row-wise site in plain PyTorch (a task head's few rows): keys int64 [rows]
    (None: 0 .. rows-1), so a row keeps its mask in whichever batch or rank it sits."""
    if p == 0:
        return x
    n = x.shape[-1]
    if keys is not None:
        check_keys("dropout", keys, x.numel() // n, x.device, 2**63 // n)
    keep = keep_mask_rows(draw_seed(generator), p, x.numel() // n, n, x.device, keys).view(x.shape)
    return x * keep * (1.0 / (1.0 - p))


def token_keys(seq_keys: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The row-wise keys of tokens at positions `pos` of sequences `seq`: (seq_keys[seq] << 16) | pos, int64."""
    return (seq_keys.to(torch.int64)[seq] << POSITION_BITS) | pos.to(torch.int64)


def check_keys(op: str, keys: torch.Tensor, count: int, device: torch.device, limit: int) -> None:
    """`keys`: int64 [count] on `device`, values in [0, limit) (checked on the CPU: on CUDA it would synchronise).
    limit: 2**63 // n for a row-wise site of n columns, 2**31 // heads for attention."""
    if keys.dtype != torch.int64 or tuple(keys.shape) != (count,) or keys.device != device:
        raise ValueError(f"{op}: dropout_keys must be an int64 tensor of shape [{count}] on {device}, got "
                         f"{keys.dtype} {list(keys.shape)} on {keys.device}")
    if keys.device.type == "cpu" and count and (int(keys.min()) < 0 or int(keys.max()) >= limit):
        raise ValueError(f"{op}: dropout_keys must lie in [0, {limit}), got values in "
                         f"[{int(keys.min())}, {int(keys.max())}]")
