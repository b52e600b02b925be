"""How the C++ extension is built: shared by setup.py (ahead of time) and fastbert._extension (JIT).

Plain Python with no imports from fastbert or torch, so setup.py can read it before anything is built.
"""
import glob
import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

# -fno-math-errno lets sqrt vectorize; x86-64-v3 (AVX2/FMA) is the baseline, AVX-512 paths are chosen at
# run time by the kernels themselves.
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-DFASTBERT_WITH_TORCH"]
if platform.machine() in ("x86_64", "AMD64"):
    CXX_FLAGS.append("-march=x86-64-v3")
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-gencode=arch=compute_80,code=sm_80",
              "-gencode=arch=compute_90,code=sm_90"]


def cpu_sources(root: str = CSRC) -> list[str]:
    """Torch-free CPU kernels plus their torch bindings (extension fastbert._C)."""
    srcs = sorted(glob.glob(os.path.join(root, "cpu", "*.cpp")))
    return srcs + [os.path.join(root, "bindings", "cpu.cpp")] if srcs else []


def cuda_sources(root: str = CSRC) -> list[str]:
    """Torch-free CUDA kernels plus their torch bindings (extension fastbert._C_cuda)."""
    srcs = sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))
    return srcs + [os.path.join(root, "bindings", "cuda.cpp")] if srcs else []
