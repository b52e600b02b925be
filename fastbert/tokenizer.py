"""BertTokenizer: bert-base-uncased WordPiece on the `tokenizers` library, batches for fastbert.BertModel.

Single sentences or pairs (token_type_ids 0 / 1), truncation to max_length (longest-first for pairs),
padding to the longest sequence of the batch, and per-sequence lengths for packed (unpadded) batches.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer


@dataclasses.dataclass
class Batch:
    """A tokenized batch. Padded: [B, S] tensors. Packed (`packed=True`): [T] tensors + cu_seqlens."""
    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # padded only
    lengths: torch.Tensor  # int32 [B]: real tokens per sequence
    cu_seqlens: torch.Tensor | None = None  # packed only: int32 [B + 1]
    max_seqlen: int = 0
    dropout_keys: torch.Tensor | None = None  # int64 [B]: the sequences' dropout keys (BertModel), or None

    def model_inputs(self) -> dict:
        """Keyword arguments for BertModel.forward."""
        keys = {} if self.dropout_keys is None else {"dropout_keys": self.dropout_keys}
        if self.cu_seqlens is not None:
            return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                    "cu_seqlens": self.cu_seqlens, "max_seqlen": self.max_seqlen, **keys}
        return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "attention_mask": self.attention_mask, **keys}

    def to(self, device) -> "Batch":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in
                                            dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


class BertTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_length: int = 512):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.max_length = max_length
        vocab = tokenizer.get_vocab()
        try:
            self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id = (
                vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"))
        except KeyError as e:
            raise ValueError(f"vocabulary lacks the special token {e}") from None
        self.vocab_size = tokenizer.get_vocab_size()
        self.special_ids = frozenset((self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, max_length: int | None = None):
        """From a checkpoint directory (tokenizer.json, else vocab.txt); None: the packaged one."""
        from fastbert.pretrained import default_path

        path = os.fspath(path) if path is not None else default_path()
        cfg = {}
        if os.path.exists(os.path.join(path, "tokenizer_config.json")):
            with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        elif os.path.exists(os.path.join(path, "vocab.txt")):
            tok = BertWordPieceTokenizer(os.path.join(path, "vocab.txt"),
                                         lowercase=cfg.get("do_lower_case", True),
                                         strip_accents=cfg.get("strip_accents"),
                                         handle_chinese_chars=cfg.get("tokenize_chinese_chars", True))._tokenizer
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")
        limit = min(int(cfg.get("model_max_length", 512)), 512)
        return cls(tok, max_length if max_length is not None else limit)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json, which from_pretrained and transformers' fast tokenizers read."""
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(os.fspath(directory), "tokenizer.json"))

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
               max_length: int | None = None, truncation: bool = True) -> list[tuple[list[int], list[int]]]:
        """(ids, token_type_ids) per example, with [CLS] ... [SEP] (... [SEP])."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pair texts")
        max_length = max_length or self.max_length
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        if truncation:
            self._tok.enable_truncation(max_length, strategy="longest_first")
        try:
            encs = self._tok.encode_batch(inputs)
        finally:
            self._tok.no_truncation()
        out = [(e.ids, e.type_ids) for e in encs]
        if not truncation:
            for i, (ids, _) in enumerate(out):
                if len(ids) > max_length:
                    raise ValueError(f"example {i} has {len(ids)} tokens, over max_length={max_length}, "
                                     "and truncation is off")
        return out

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 max_length: int | None = None, truncation: bool = True, packed: bool = False) -> Batch:
        """Tokenize a batch: padded to its longest sequence, or packed back to back."""
        return self.collate(self.encode(texts, pairs, max_length=max_length, truncation=truncation), packed)

    def collate(self, encoded: Sequence[tuple[list[int], list[int]]], packed: bool = False) -> Batch:
        lengths = torch.tensor([len(ids) for ids, _ in encoded], dtype=torch.int32)
        if packed:
            ids = torch.tensor([i for seq, _ in encoded for i in seq], dtype=torch.long)
            types = torch.tensor([t for _, seq in encoded for t in seq], dtype=torch.long)
            cu = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
            return Batch(ids, types, None, lengths, cu, int(lengths.max()) if len(lengths) else 0)
        S = int(lengths.max()) if len(lengths) else 0
        ids = torch.full((len(encoded), S), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(encoded), S), dtype=torch.long)
        for b, (seq, tt) in enumerate(encoded):
            ids[b, :len(seq)] = torch.tensor(seq)
            types[b, :len(tt)] = torch.tensor(tt)
        mask = (torch.arange(S)[None, :] < lengths[:, None]).long()
        return Batch(ids, types, mask, lengths)
