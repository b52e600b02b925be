"""Drop-in nn.Modules over fastbert.ops."""
from fastbert.nn.modules import BiasGELU, LayerNorm, SelfAttention

__all__ = ["BiasGELU", "LayerNorm", "SelfAttention"]
