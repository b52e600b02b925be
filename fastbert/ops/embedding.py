"""embedding_layer_norm: dropout(LayerNorm(word[ids] + token_type[types] + position[positions])), BERT's
embedding layer in one op.

The three lookups, their sum, the norm and the dropout after it in one pass over the output; fp32 math,
output in the tables' dtype. Dropout follows fastbert.ops.philox (row-wise site over the [tokens, hidden]
output, rows keyed by `dropout_keys`) on every backend. Gradients reach the three tables (dense, as
nn.Embedding's; the word row `padding_idx`, if given, gets none), the norm's weight and bias.

Kernel contract (Triton: fastbert.kernels.embedding, CPU: torch.ops.fastbert_C), on flat token indices
([rows] int64) and contiguous [*, N] tables of one dtype:
  embedding_layer_norm_forward(input_ids, token_type_ids, position_ids, word, token_type, position, weight,
                               bias, eps, dropout_p, seed, keys?)
      -> (out [rows, N] word.dtype, mean [rows] fp32, rstd [rows] fp32)
  embedding_layer_norm_backward(grad_out, input_ids, token_type_ids, position_ids, word, token_type, position,
                                weight, mean, rstd, dropout_p, seed, keys?, padding_idx)
      -> (grad_word, grad_token_type, grad_position: the tables' shapes and dtype, summed in fp32;
          grad_weight, grad_bias fp32 [N])
     The backward recomputes the sum from the tables (nothing [rows, N] is saved) and writes each table
     gradient once; padding_idx < 0: none.
  keys: int64 [rows], the tokens' dropout keys (philox: element key[row] * N + col); None: the row index.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastbert import backend
from fastbert.ops import _checks, _fused, philox

KERNELS = ("triton", "cpu")


def embedding_layer_norm(input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor,
                         word: torch.Tensor, token_type: torch.Tensor, position: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float = 1e-12, *, dropout_p: float = 0.0,
                         padding_idx: int | None = None, generator: torch.Generator | None = None,
                         dropout_keys: torch.Tensor | None = None) -> torch.Tensor:
    """dropout(LayerNorm(word[input_ids] + token_type[token_type_ids] + position[position_ids])).

    input_ids, token_type_ids, position_ids: integer tensors of one shape [...]; word, token_type, position:
    [*, N] tables of one dtype; weight, bias: [N]. Returns [..., N] in the tables' dtype. dropout_keys: int64
    of input_ids' shape, each token's key in the dropout mask (fastbert.ops.philox; None: its flat index).
    """
    op = "embedding_layer_norm"
    _checks.tensor(op, "word", word, dim=2)
    _checks.features(op, "word", word)
    n = word.shape[1]
    for name, t in (("token_type", token_type), ("position", position)):
        _checks.tensor(op, name, t, dim=2, dtypes=(word.dtype,), device=word.device)
        if t.shape[1] != n:
            raise ValueError(f"{op}: {name} has shape {list(t.shape)}; expected {n} columns as word")
    for name, t in (("weight", weight), ("bias", bias)):
        _checks.tensor(op, name, t, device=word.device, shape=(n,))
    _checks.tensor(op, "input_ids", input_ids, dtypes=_checks.INDEX_DTYPES, device=word.device)
    for name, t in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        _checks.tensor(op, name, t, dtypes=_checks.INDEX_DTYPES, device=word.device, shape=tuple(input_ids.shape))
    _checks.dropout_p(op, dropout_p)
    if padding_idx is not None:
        if not -word.shape[0] <= padding_idx < word.shape[0]:
            raise ValueError(f"{op}: padding_idx {padding_idx} is outside the word table ({word.shape[0]} rows)")
        padding_idx %= word.shape[0]  # as nn.Embedding: -1 is the last row
    seed = philox.draw_seed(generator) if dropout_p > 0 else 0
    keys = None
    if dropout_keys is not None and dropout_p > 0:
        keys = dropout_keys.reshape(-1)
        philox.check_keys(op, keys, input_ids.numel(), word.device, 2**63 // n)
    impl = backend.resolve(op, word.device, KERNELS)
    if impl == "reference":
        return embedding_layer_norm_reference(input_ids, token_type_ids, position_ids, word, token_type, position,
                                              weight, bias, eps, dropout_p, seed, padding_idx, keys)
    flat = lambda t: t.reshape(-1).to(torch.int64)  # noqa: E731
    out = _OP(flat(input_ids), flat(token_type_ids), flat(position_ids), word.contiguous(), token_type.contiguous(),
              position.contiguous(), weight.contiguous(), bias.contiguous(), eps, dropout_p, seed,
              None if keys is None else keys.contiguous(), -1 if padding_idx is None else padding_idx, impl)[0]
    return out.view(*input_ids.shape, n)


def embedding_layer_norm_reference(input_ids, token_type_ids, position_ids, word, token_type, position, weight, bias,
                                   eps, dropout_p=0.0, seed=0, padding_idx=None, keys=None):
    """Pure-PyTorch reference (fp32 math); keys: the tokens' dropout keys (None: their flat indices)."""
    h = (F.embedding(input_ids, word, padding_idx).float() + F.embedding(token_type_ids, token_type).float()
         + F.embedding(position_ids, position).float())
    out = F.layer_norm(h, h.shape[-1:], weight.float(), bias.float(), eps)
    if dropout_p > 0:
        n = out.shape[-1]
        keep = philox.keep_mask_rows(seed, dropout_p, out.numel() // n, n, out.device, keys)
        out = out * keep.view(out.shape) * (1.0 / (1.0 - dropout_p))
    return out.to(word.dtype)


# -- the kernels as one fused op (fastbert.ops._fused): their shapes for torch.compile, the autograd rule --

def _forward_fake(input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor, word: Tensor, token_type: Tensor,
                  position: Tensor, weight: Tensor, bias: Tensor, eps: float, dropout_p: float, seed: int,
                  keys: Tensor | None, padding_idx: int) -> tuple[Tensor, Tensor, Tensor]:
    """The forward kernel's outputs; padding_idx (the backward kernel's) reaches only _setup_context."""
    stats = word.new_empty(input_ids.shape[0], dtype=torch.float32)
    return word.new_empty(input_ids.shape[0], word.shape[1]), stats, torch.empty_like(stats)


def _backward_fake(grad_out: Tensor, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor, word: Tensor,
                   token_type: Tensor, position: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, dropout_p: float,
                   seed: int, keys: Tensor | None, padding_idx: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    f32 = lambda t: t.new_empty(t.shape, dtype=torch.float32)  # noqa: E731
    return torch.empty_like(word), torch.empty_like(token_type), torch.empty_like(position), f32(weight), f32(weight)


def _setup_context(ctx, inputs, output):
    """Saves what the backward kernel reads: the ids, the tables and weight (inputs[:7]), mean and rstd, keys."""
    ctx.save_for_backward(*inputs[:7], *output[1:], inputs[11])
    ctx.mark_non_differentiable(*output[1:])  # saved for the backward only: autograd makes no zero grads for them
    ctx.set_materialize_grads(False)
    ctx.args = inputs[9:11], inputs[12:]  # (dropout_p, seed), (padding_idx, impl)
    ctx.dtypes = (inputs[6].dtype, inputs[7].dtype)  # weight, bias


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    *saved, keys = ctx.saved_tensors
    (dropout_p, seed), rest = ctx.args
    g_word, g_type, g_pos, g_w, g_b = _OP.run_backward(grad_out.contiguous(), *saved, dropout_p, seed, keys, *rest)
    w_dtype, b_dtype = ctx.dtypes
    return (None, None, None, g_word, g_type, g_pos, g_w.to(w_dtype), g_b.to(b_dtype)) + (None,) * 6


_OP = _fused.FusedOp("embedding_layer_norm", "fastbert.kernels.embedding", _forward_fake, _backward_fake,
                     _setup_context, _backward, kernel_args=12)
