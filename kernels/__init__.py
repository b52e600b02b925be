"""Triton kernels (installed as fastbert.kernels). GPU; CPU only under TRITON_INTERPRET=1."""
