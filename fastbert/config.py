"""BertConfig: the hyperparameters of a BERT encoder, read from and written as Hugging Face config.json."""
from __future__ import annotations

import dataclasses
import json
import os

_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


@dataclasses.dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {list(_ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def gelu_approximate(self) -> str:
        """The `approximate` argument of GELU for hidden_act ("none" = exact erf)."""
        return _ACTIVATIONS[self.hidden_act]

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        pet = d.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"position_embedding_type {pet!r} is not supported (only 'absolute')")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ValueError("decoder BERT configs (is_decoder / add_cross_attention) are not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        """Read a Hugging Face config.json (a file, or a directory holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no BERT config at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return {"architectures": ["BertModel"], "model_type": "bert",
                "position_embedding_type": "absolute", **dataclasses.asdict(self)}

    @classmethod
    def bert_base(cls, **kw) -> "BertConfig":
        """bert-base-uncased shapes (110M parameters)."""
        return cls(**kw)

    @classmethod
    def minilm_l6(cls, **kw) -> "BertConfig":
        """all-MiniLM-L6-v2 shapes (22.7M parameters)."""
        return cls(**{"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536, **kw})
