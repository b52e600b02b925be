"""patch_hf_bert: run a Hugging Face transformers BERT on fastbert's fused ops, in place.

    model = transformers.BertForSequenceClassification.from_pretrained(...)
    fastbert.patch_hf_bert(model)          # or patch_hf_bert(model, backend="triton")

Every BertSelfAttention, BertSelfOutput, BertIntermediate, BertOutput and the LayerNorm of every
BertEmbeddings in the model gets a forward that calls fastbert.ops (Liger-Kernel's approach: the
instance's forward is rebound, nothing else changes), so parameters, their names and the state dict
stay HF's own: save_pretrained, from_pretrained and optimizers work as before.
  self-attention   the query/key/value Linears, then fastbert.ops.attention on [B, S, heads, head_dim]
  add & norm       LayerNorm(dropout(dense(x)) + residual): dense's bias, the dropout and the residual
                   fused into one fastbert.ops.layer_norm
  intermediate     GELU(dense(x)): dense's bias fused into fastbert.ops.bias_gelu (exact "gelu", or the
                   tanh forms "gelu_new", "gelu_pytorch_tanh", "gelu_fast"; other activations stay HF's)
  embeddings       their LayerNorm through fastbert.ops.layer_norm

Attention masks: the model's `attention_mask` must be None or a 2-D right-padding mask [B, S] (ones,
then zeros), as tokenizers produce with padding_side="right". Whatever form HF turns it into for the
layers (2-D, boolean or additive 4-D), the patched attention reads the key-padding lengths back from it
and raises ValueError for masks that are not key padding (left padding, per-query or per-head masks).
Padded positions get zero attention output (HF attends them to every key): compare or train on real
tokens only. Not supported (ValueError at patch time): decoders, cross-attention, KV caches.
Attention dropout uses fastbert's Philox masks, not torch's RNG stream; attention weights are not
returned (output_attentions gives None). The fused ops return x's dtype, also under autocast (HF's
LayerNorm returns fp32 there).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from fastbert import backend as _backend
from fastbert import ops


def patch_hf_bert(model: torch.nn.Module, backend: str | None = None) -> torch.nn.Module:
    """Patch the BERT modules inside `model` in place to run on fastbert ops; returns `model`.

    `backend` scopes the ops of the patched modules (None: the global fastbert backend).
    """
    from transformers import activations
    from transformers.models.bert import modeling_bert as hf

    if backend is not None:
        _backend.validate(backend)
    gelus = {activations.GELUActivation: "none", activations.NewGELUActivation: "tanh",
             activations.GELUTanh: "tanh", activations.FastGELUActivation: "tanh"}
    patched = 0
    for name, m in model.named_modules():
        if isinstance(m, hf.BertLayer) and (m.is_decoder or m.add_cross_attention):
            raise ValueError(f"patch_hf_bert: {name} is a decoder layer; only encoders are supported")
        if isinstance(m, hf.BertSelfAttention):
            _bind(m, _self_attention_forward, backend)
        elif isinstance(m, (hf.BertSelfOutput, hf.BertOutput)):
            _bind(m, _add_norm_forward, backend)
        elif isinstance(m, hf.BertIntermediate) and type(m.intermediate_act_fn) in gelus:
            m._fastbert_approximate = gelus[type(m.intermediate_act_fn)]
            _bind(m, _intermediate_forward, backend)
        elif isinstance(m, hf.BertEmbeddings):
            _bind(m.LayerNorm, _layer_norm_forward, backend)
        else:
            continue
        patched += 1
    if not patched:
        raise ValueError(f"patch_hf_bert: no transformers BERT modules in {type(model).__name__}")
    return model


def _bind(module, forward, backend):
    module._fastbert_backend = backend
    module.forward = types.MethodType(forward, module)


def _layer_norm_forward(self, x):
    with _backend.use_backend(self._fastbert_backend):
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


def _add_norm_forward(self, hidden_states, input_tensor):
    with _backend.use_backend(self._fastbert_backend):
        return ops.layer_norm(F.linear(hidden_states, self.dense.weight), self.LayerNorm.weight,
                              self.LayerNorm.bias, self.LayerNorm.eps, residual=input_tensor,
                              input_bias=self.dense.bias, dropout_p=self.dropout.p if self.training else 0.0)


def _intermediate_forward(self, hidden_states):
    with _backend.use_backend(self._fastbert_backend):
        return ops.bias_gelu(F.linear(hidden_states, self.dense.weight), self.dense.bias, self._fastbert_approximate)


def _self_attention_forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
    if past_key_values is not None:
        raise ValueError("patch_hf_bert: KV caches (past_key_values) are not supported")
    B, S, _ = hidden_states.shape
    heads = (B, S, self.num_attention_heads, self.attention_head_size)  # flash layout, no transposes
    q, k, v = (proj(hidden_states).view(heads) for proj in (self.query, self.key, self.value))
    with _backend.use_backend(self._fastbert_backend):
        out = ops.attention(q, k, v, _seqlens(attention_mask, B, S), softmax_scale=self.scaling,
                            dropout_p=self.dropout.p if self.training else 0.0)
    return out.reshape(B, S, -1), None


def _seqlens(mask, B, S):
    """Sequence lengths [B] int32 of the key-padding mask HF hands a layer (None: no padding)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"patch_hf_bert: unsupported attention mask {type(mask).__name__}; use the eager, sdpa "
                         f"or flash_attention_2 attention implementation")
    if mask.dim() == 4 and mask.shape[0] == B and mask.shape[1] == 1 and mask.shape[3] == S:
        if not torch.equal(mask, mask[:, :, :1].expand_as(mask)):
            raise ValueError("patch_hf_bert: the attention mask differs between queries; only key-padding "
                             "masks (a 2-D attention_mask) are supported")
        row = mask[:, 0, 0]
        keep = row if row.dtype == torch.bool else row == 0  # boolean (sdpa) or additive (eager) form
    elif mask.dim() == 2 and tuple(mask.shape) == (B, S):
        keep = mask.bool()
    else:
        raise ValueError(f"patch_hf_bert: unsupported attention mask of shape {list(mask.shape)}; pass a 2-D "
                         f"[batch, seq] padding mask to the model")
    seqlens = keep.sum(1, dtype=torch.int32)
    if not torch.equal(keep, torch.arange(S, device=keep.device)[None, :] < seqlens[:, None]):
        raise ValueError("patch_hf_bert: the attention mask must be right-padded (ones, then zeros); pad "
                         "with padding_side='right'")
    return seqlens
