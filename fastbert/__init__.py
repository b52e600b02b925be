"""fastbert: a fused-kernel training engine for BERT-style encoders."""
from fastbert.backend import get_backend, set_backend, use_backend
from fastbert.config import BertConfig
from fastbert.hf import patch_hf_bert
from fastbert.inference import MultitaskModel
from fastbert.model import BertForMaskedLM, BertModel, BertOutput
from fastbert.tokenizer import BertTokenizer

__version__ = "0.1.0"
__all__ = ["BertConfig", "BertForMaskedLM", "BertModel", "BertOutput", "BertTokenizer", "MultitaskModel", "get_backend",
           "patch_hf_bert", "set_backend", "use_backend"]
