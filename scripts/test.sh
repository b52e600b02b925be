#!/usr/bin/env bash
# Every check CI runs, after scripts/setup.sh: the Python tests (Triton kernels in the interpreter),
# the C++ tests, the nvcc compile of the CUDA sources, and the benchmarks in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
export PATH="$PWD/.venv/bin:$PATH"
if ls csrc/cpu/*.cpp >/dev/null 2>&1; then
  cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build/cmake -j 2
  ctest --test-dir build/cmake --output-on-failure
fi
python -m pytest tests -q
# The same Triton tests with the interpreter off, as on a machine with neither GPU nor interpreter: each must
# skip with its reason (tests/_device.py), none may fail. Mostly skips: ~25 s here.
TRITON_INTERPRET=0 python -m pytest tests -q -m triton
if [ -d bench ] && ls bench/test_*.py >/dev/null 2>&1; then
  python -m pytest bench -q --benchmark-disable
fi
