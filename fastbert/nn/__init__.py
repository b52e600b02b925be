"""Drop-in nn.Modules over fastbert.ops."""
from fastbert.nn.modules import BiasGELU, Dropout, LayerNorm, SelfAttention

__all__ = ["BiasGELU", "Dropout", "LayerNorm", "SelfAttention"]
