"""minBERT: embeddings, N x (self-attention, add & norm, feed-forward, add & norm), pooler, MLM head.

Every inner op goes through fastbert.ops, so the backend (reference / triton / cpu / auto) decides how
it runs. Parameter names follow Hugging Face's BertModel, except that query, key and value are one
fused `attention.self.qkv` projection; fastbert.pretrained maps between the two when loading and saving.

Input forms:
  padded  input_ids [B, S] (+ attention_mask, token_type_ids, position_ids)  -> [B, S, hidden]
  packed  input_ids [T] + cu_seqlens (+ token_type_ids, position_ids)        -> [T, hidden]
With unpad=True (default) a padded batch runs packed inside: no work is spent on padding.
Dropout masks are keyed by (sequence key, position) (fastbert.ops.philox): `dropout_keys` [num_seqs] gives
each sequence's key (default: its index in the batch), so a sequence draws the same masks whatever else
shares its batch and however the batch is padded, packed or bucketed.
`embedding_delta` (same layout, [..., hidden]) is added to the embedding layer's output, the encoder's
input: the perturbation of SMART regularisation (fastbert.tasks.smart).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from fastbert import backend as _backend
from fastbert import nn as fnn
from fastbert import ops, pretrained
from fastbert.config import BertConfig
from fastbert.ops import padding, philox


@dataclasses.dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # [B, S, hidden] (zeros at padding) or packed [T, hidden]
    pooler_output: torch.Tensor  # [num_seqs, hidden]: tanh(dense(first token))


class _Linear(nn.Linear):
    """nn.Linear whose bias is applied by the op that follows (fused), not by the matmul."""

    def forward(self, x):
        return F.linear(x, self.weight)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = fnn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = config.hidden_dropout_prob

    def forward(self, input_ids, token_type_ids, position_ids, row_keys=None):
        """dropout(LayerNorm(word + token type + position embeddings)), one fused op; row_keys: the tokens'
        dropout keys."""
        return ops.embedding_layer_norm(
            input_ids, token_type_ids, position_ids, self.word_embeddings.weight, self.token_type_embeddings.weight,
            self.position_embeddings.weight, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps,
            dropout_p=self.dropout if self.training else 0.0, padding_idx=self.word_embeddings.padding_idx,
            dropout_keys=row_keys)


class BertAddNorm(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual); dense's bias and the dropout fused into the norm."""

    def __init__(self, d_in: int, config: BertConfig):
        super().__init__()
        self.dense = _Linear(d_in, config.hidden_size)
        self.LayerNorm = fnn.LayerNorm(config.hidden_size, config.layer_norm_eps, config.hidden_dropout_prob)

    def forward(self, x, residual, row_keys=None):
        return self.LayerNorm(self.dense(x), residual, input_bias=self.dense.bias, dropout_keys=row_keys)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = fnn.SelfAttention(config.hidden_size, config.num_attention_heads,
                                      config.attention_probs_dropout_prob)
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x, row_keys=None, **seqs):
        return self.output(self.self(x, **seqs), x, row_keys)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = _Linear(config.hidden_size, config.intermediate_size)
        self.act = fnn.BiasGELU(config.gelu_approximate)

    def forward(self, x):
        return self.act(self.dense(x), self.dense.bias)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x, row_keys=None, **seqs):
        """seqs: the sequences (seqlens, or cu_seqlens and max_seqlen) and their dropout_keys; row_keys: the
        tokens' dropout keys."""
        x = self.attention(x, row_keys, **seqs)
        return self.output(self.intermediate(x), x, row_keys)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, row_keys=None, **seqs):
        for layer in self.layer:
            x = layer(x, row_keys, **seqs)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_token):
        return torch.tanh(self.dense(first_token))


class BertModel(nn.Module):
    """The BERT encoder. `backend` scopes the op implementation for this model (None: the global one).

    unpad: run padded batches packed inside (no work on padding).
    bucket_tokens: round the packed token count up (at most 12.5%, by a dummy sequence, see
    padding.pad_to_bucket) so that the matmuls see few shapes. None (default): on for CPU bf16/fp16 matmuls,
    where oneDNN builds a kernel for every new shape (its cost: README); off elsewhere.
    """

    hf_prefix = ""  # the encoder's key prefix in the Hugging Face layout (fastbert.pretrained)

    def __init__(self, config: BertConfig, backend: str | None = None, unpad: bool = True,
                 bucket_tokens: bool | None = None):
        super().__init__()
        self.config, self.backend, self.unpad, self.bucket_tokens = config, backend, unpad, bucket_tokens
        if backend is not None:
            _backend.validate(backend)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs) -> "BertModel":
        """Load a Hugging Face BERT directory (None: the packaged all-MiniLM-L6-v2)."""
        return pretrained.load_model(cls, path, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors that transformers' BertModel loads unchanged."""
        pretrained.save_model(self, directory)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                cu_seqlens=None, max_seqlen=None, dropout_keys=None, embedding_delta=None) -> BertOutput:
        """dropout_keys: int64 [num_seqs], each sequence's key in the dropout masks (see the module docstring).
        embedding_delta: None, or a tensor [*input_ids.shape, hidden] added to the embedding layer's output
        (after its LayerNorm and dropout) in the weights' dtype; its entries at padding are ignored."""
        if embedding_delta is not None and embedding_delta.shape != (*input_ids.shape, self.config.hidden_size):
            raise ValueError(f"embedding_delta must have shape {(*input_ids.shape, self.config.hidden_size)} "
                             f"(input_ids + hidden), got {tuple(embedding_delta.shape)}")
        with _backend.use_backend(self.backend):
            if input_ids.dim() == 1:
                keys = self._seq_keys(dropout_keys, len(cu_seqlens) - 1 if cu_seqlens is not None else 0,
                                      input_ids.device)
                return self._forward_packed(input_ids, cu_seqlens, max_seqlen, token_type_ids, position_ids, keys,
                                            embedding_delta)
            keys = self._seq_keys(dropout_keys, input_ids.shape[0], input_ids.device)
            return self._forward_padded(input_ids, attention_mask, token_type_ids, position_ids, keys,
                                        embedding_delta)

    def _seq_keys(self, dropout_keys, num_seqs: int, device) -> torch.Tensor | None:
        """The sequences' dropout keys while training (dropout_keys, else 0 .. num_seqs-1); None in eval mode."""
        if not self.training:
            return None
        if dropout_keys is None:
            return torch.arange(num_seqs, device=device)
        if tuple(dropout_keys.shape) != (num_seqs,):
            raise ValueError(f"dropout_keys has shape {list(dropout_keys.shape)}; expected [{num_seqs}], one key "
                             "per sequence")
        return dropout_keys.to(device, torch.int64)

    def _check_ids(self, input_ids, token_type_ids, position_ids):
        cfg = self.config
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.device.type == "cpu" and input_ids.numel():
            for name, t, limit in (("input_ids", input_ids, cfg.vocab_size),
                                   ("token_type_ids", token_type_ids, cfg.type_vocab_size),
                                   ("position_ids", position_ids, cfg.max_position_embeddings)):
                lo, hi = int(t.min()), int(t.max())
                if lo < 0 or hi >= limit:
                    raise ValueError(f"{name} must lie in [0, {limit}); got values in [{lo}, {hi}]")

    def _forward_padded(self, input_ids, attention_mask, token_type_ids, position_ids, seq_keys, delta):
        B, S = input_ids.shape
        if S > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {S} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; truncate the input")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(S, device=input_ids.device).expand(B, S)
        self._check_ids(input_ids, token_type_ids, position_ids)
        if self.unpad:
            ids, indices, cu_seqlens, max_seqlen = padding.unpad_input(input_ids, attention_mask)
            flat = lambda t: t.reshape(-1).index_select(0, indices)  # noqa: E731
            if delta is not None:
                delta = delta.reshape(B * S, -1).index_select(0, indices)
            h = self._encode_packed(ids, flat(token_type_ids), flat(position_ids), cu_seqlens, max_seqlen, seq_keys,
                                    delta)
            h = padding.pad_input(h, indices, B, S)
        else:
            seqlens = attention_mask.sum(1, dtype=torch.int32)
            right = torch.arange(S, device=input_ids.device)[None, :] < seqlens[:, None]
            if not torch.equal(attention_mask.bool(), right):
                raise ValueError("attention_mask must be right-padded (ones, then zeros) when unpad=False; "
                                 "use unpad=True for other masks")
            row_keys = None if seq_keys is None else philox.token_keys(
                seq_keys, torch.arange(B, device=input_ids.device)[:, None], torch.arange(S, device=input_ids.device))
            h = _perturbed(self.embeddings(input_ids, token_type_ids, position_ids, row_keys), delta)
            h = self.encoder(h, row_keys, seqlens=seqlens, dropout_keys=seq_keys) * right[..., None]  # zeros at padding
        return BertOutput(h, self.pooler(h[:, 0]))

    def _forward_packed(self, input_ids, cu_seqlens, max_seqlen, token_type_ids, position_ids, seq_keys, delta):
        if cu_seqlens is None:
            raise ValueError("packed input_ids [T] need cu_seqlens (and max_seqlen)")
        if cu_seqlens.device.type == "cpu":
            lens = cu_seqlens[1:] - cu_seqlens[:-1]
            if lens.numel() and int(lens.min()) < 1:
                raise ValueError("every packed sequence needs at least one token (its [CLS])")
            longest = int(lens.max()) if lens.numel() else 0
            max_seqlen = longest if max_seqlen is None else max_seqlen
        elif max_seqlen is None:
            raise ValueError("packed CUDA input needs max_seqlen (computing it would synchronise)")
        if max_seqlen > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {max_seqlen} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; truncate the input")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = padding.position_ids_packed(cu_seqlens)
        self._check_ids(input_ids, token_type_ids, position_ids)
        h = self._encode_packed(input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen, seq_keys, delta)
        return BertOutput(h, self.pooler(h[cu_seqlens[:-1].long()]))

    def _encode_packed(self, input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen, seq_keys, delta=None):
        """Embeddings (+ delta [T, hidden]) + encoder on packed tokens -> [T, hidden]; on bucketed token counts
        (see __init__)."""
        total = input_ids.shape[0]
        if self.bucketed(input_ids.device):
            input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen = padding.pad_to_bucket(
                input_ids, token_type_ids, position_ids, cu_seqlens, max_seqlen, self.config.pad_token_id)
            if seq_keys is not None and len(cu_seqlens) - 1 > len(seq_keys):  # the dummy sequence: any key
                seq_keys = F.pad(seq_keys, (0, 1))
            if delta is not None:  # the bucket's dummy tokens are not perturbed
                delta = F.pad(delta, (0, 0, 0, input_ids.shape[0] - total))
        row_keys = None if seq_keys is None else _packed_token_keys(seq_keys, cu_seqlens, input_ids.shape[0])
        h = _perturbed(self.embeddings(input_ids, token_type_ids, position_ids, row_keys), delta)
        return self.encoder(h, row_keys, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, dropout_keys=seq_keys)[:total]

    def bucketed(self, device: torch.device) -> bool:
        """Whether token counts on `device` are rounded up to a bucket size (bucket_tokens; None: see above)."""
        if self.bucket_tokens is not None:
            return self.bucket_tokens
        return device.type == "cpu" and (self.embeddings.word_embeddings.weight.dtype != torch.float32
                                         or torch.is_autocast_enabled("cpu"))


def _perturbed(h: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """The embedding output h plus delta in h's dtype (bf16 weights: a delta below h's rounding step is lost)."""
    return h if delta is None else h + delta.to(h.dtype)


def _packed_token_keys(seq_keys: torch.Tensor, cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The dropout keys of `total` packed tokens (philox.token_keys of their sequence and position)."""
    t = torch.arange(total, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens[1:].contiguous(), t, right=True)
    return philox.token_keys(seq_keys, seq, t - cu_seqlens[seq])


class BertMLMHead(nn.Module):
    """dense + GELU + LayerNorm, then a decoder tied to the word embeddings, plus a bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = _Linear(config.hidden_size, config.hidden_size)
        self.act = fnn.BiasGELU(config.gelu_approximate)
        self.LayerNorm = fnn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.dense.weight, std=config.initializer_range)
        nn.init.zeros_(self.dense.bias)

    def forward(self, h, word_embeddings: torch.Tensor):
        h = self.LayerNorm(self.act(self.dense(h), self.dense.bias))
        return F.linear(h, word_embeddings, self.bias)


class BertForMaskedLM(nn.Module):
    """BERT + MLM head. The head runs only where labels != -100 (the masked positions)."""

    hf_prefix = "bert."  # the encoder's key prefix in the Hugging Face layout; the head sits under cls.

    def __init__(self, config: BertConfig, backend: str | None = None, unpad: bool = True,
                 bert: BertModel | None = None):
        super().__init__()
        self.bert = bert if bert is not None else BertModel(config, backend, unpad)
        self.config = self.bert.config
        self.cls = BertMLMHead(self.config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs) -> "BertForMaskedLM":
        """Load a Hugging Face BERT directory; the MLM head is fresh if the checkpoint has none."""
        return pretrained.load_model(cls, path, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        pretrained.save_model(self, directory)

    def forward(self, input_ids, labels=None, **kw):
        """Returns (loss, logits): logits [num_masked, vocab] at labels != -100 if labels are given,
        else at every position."""
        h = self.bert(input_ids, **kw).last_hidden_state
        decoder = self.bert.embeddings.word_embeddings.weight
        with _backend.use_backend(self.bert.backend):
            if labels is None:
                return None, self.cls(h, decoder)
            sel = labels.reshape(-1) != -100
            rows = h.reshape(-1, h.shape[-1])[sel]
            n = len(rows)
            if self.bert.bucketed(rows.device):  # zero rows up to a bucket size: few decoder matmul shapes
                rows = F.pad(rows, (0, 0, 0, padding.token_bucket(n) - n))
            logits = self.cls(rows, decoder)[:n]
        loss = F.cross_entropy(logits.float(), labels.reshape(-1)[sel], reduction="sum") / max(len(logits), 1)
        return loss, logits
