"""The host allocator's policy for freed memory: keep it for reuse, or give it back to the system.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB, adjusted as blocks are
freed) with a fresh mmap, and unmaps it on free: each use then costs a page fault per 4 KiB page, with the
kernel zeroing every page. A training step allocates the same large tensors every time, such as the
word-embedding gradient (vocab x hidden: 47 MB for MiniLM, 94 MB for bert-base, once per task's backward).
`keep` raises the mmap and trim thresholds so that these blocks come from the heap and freed ones stay
there for the next step; this is what preloading jemalloc or tcmalloc does for PyTorch on CPUs (Intel's
`ipexrun` and `torch.backends.xeon.run_cpu` launchers). The cost: the process holds its peak memory
until it exits, and the setting holds for the rest of the process (`system` after `keep` changes nothing back).
Only glibc is tuned; elsewhere (macOS, musl, a glibc that refuses the threshold) `configure` does nothing and
returns False, which the training driver logs.
"""
from __future__ import annotations

import ctypes
import platform
import sys

MODES = ("keep", "system")

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 256 << 20))


def configure(mode: str) -> bool:
    """Apply `mode` (one of MODES) to this process's later allocations. keep: blocks up to 1 GiB come from the
    heap, which is trimmed only above 2 GiB free and grows 256 MiB at a time; system: glibc's defaults, left
    as they are. Returns whether the allocator was changed."""
    if mode not in MODES:
        raise ValueError(f"malloc must be one of {MODES}, got {mode!r}")
    if mode == "system" or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: a glibc that refuses 1 GiB (older ones cap it at 32 MiB) gets nothing, since
    # setting the trim threshold or top pad alone would freeze its dynamic mmap threshold at 128 KiB.
    if mallopt(*_KEEP[0]) != 1:
        return False
    return all([mallopt(param, value) == 1 for param, value in _KEEP[1:]])
