"""fastbert.malloc: with `keep`, the large block a step allocates and frees is reused by the next step (no page faults); with
`system`, glibc maps it afresh and the kernel faults in every page. Each case runs in its own process: the
allocator's settings are process-wide."""
import platform
import subprocess
import sys

import pytest

from fastbert import malloc

CHILD = """
import resource, sys, torch
from fastbert import malloc
changed = malloc.configure(sys.argv[1])

def step():  # a 64 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB) and small ones, all freed
    big, small = torch.ones(16 << 20), [torch.ones(100) for _ in range(10)]
    return float(big[0]) + len(small)

for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    changed, n = out.split()
    return changed == "True", int(n)


@glibc
def test_keep_reuses_freed_blocks():
    changed, n = faults("keep")
    assert changed and n < 1000  # 5 x 16,384 pages of 4 KiB if each block were mapped afresh


@glibc
def test_system_leaves_glibc_as_it_is():
    changed, n = faults("system")
    assert not changed and n > 5 * 16000


def test_unknown_mode():
    with pytest.raises(ValueError, match="malloc must be one of"):
        malloc.configure("jemalloc")


@glibc
def test_a_refused_threshold_changes_nothing(monkeypatch):
    """A glibc that refuses the 1 GiB mmap threshold gets no other setting either: the trim threshold or top pad
    alone would freeze its dynamic mmap threshold at 128 KiB, worse than its defaults."""
    calls = []

    class Mallopt:  # a ctypes function's stand-in: callable, argtypes and restype settable
        argtypes = restype = None

        def __call__(self, param, value):
            calls.append(param)
            return 0 if param == -3 else 1  # M_MMAP_THRESHOLD refused

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: type("Libc", (), {"mallopt": Mallopt()})())
    assert malloc.configure("keep") is False
    assert calls == [-3]
