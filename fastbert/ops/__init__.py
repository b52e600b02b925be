"""Fused, differentiable ops. Each dispatches by device and backend (fastbert.backend) to Triton
kernels, C++ CPU kernels or its pure-PyTorch reference, which sits beside it as `<op>_reference`."""
from fastbert.ops.attention import attention, attention_varlen
from fastbert.ops.bias_gelu import bias_gelu
from fastbert.ops.embedding import embedding_layer_norm
from fastbert.ops.layer_norm import layer_norm
from fastbert.ops.padding import pad_input, unpad_input

__all__ = ["attention", "attention_varlen", "bias_gelu", "embedding_layer_norm", "layer_norm", "pad_input",
           "unpad_input"]
