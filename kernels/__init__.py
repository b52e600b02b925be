"""Triton kernels, installed as fastbert.kernels. GPU; on CPU only under TRITON_INTERPRET=1.

One module per op (layer_norm, bias_gelu, attention): its @triton.jit kernels and the launchers named
in the op's kernel contract (see fastbert/ops/<op>.py). Each module also defines `aot_specs()`: every
kernel configuration its launchers can pick, as dicts {"name", "fn", "signature", "constexprs",
"num_warps", "num_stages"} (optionally "maxnreg", as launched) for triton.compile(ASTSource(...)), so the
tests can compile all of them ahead of time for sm_80 and sm_90 on a machine without a GPU
(python -m fastbert.kernels.aot; tests/test_aot_compile.py).
"""
