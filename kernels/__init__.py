"""Triton kernels, installed as fastbert.kernels. GPU; on CPU only under TRITON_INTERPRET=1.

One module per op (layer_norm, bias_gelu, embedding, attention): its @triton.jit kernels and the launchers
named in the op's kernel contract (see fastbert/ops/<op>.py); utils holds what they share (dropout
arguments and mask, row tiling, launch helpers). Each kernel has one list of candidate configs (block sizes,
warps, stages): on a GPU its launcher lets triton.autotune choose among them, in the interpreter it runs a
fixed one (utils.Tuned). Each op module also defines `aot_specs()`: every kernel configuration its launchers
can pick, every candidate included, as dicts {"name", "fn", "signature", "constexprs", "num_warps",
"num_stages"} (optionally "maxnreg", as launched) for triton.compile(ASTSource(...)), so the tests can
compile all of them ahead of time for sm_80 and sm_90 on a machine without a GPU
(python -m fastbert.kernels.aot; tests/test_aot_compile.py).

The package imports nothing of fastbert outside it, and this file imports no Triton: fastbert.ops.philox
takes the dropout threshold from here on machines without Triton too.
"""


def dropout_threshold(p: float) -> int:
    """16-bit dropout threshold: an element is dropped iff its 16 random bits (fastbert.ops.philox) < this."""
    return min(65536, round(p * 65536))
