"""How the C++ extension is built: shared by setup.py (ahead of time) and fastbert._extension (JIT).

Plain Python with no imports from fastbert or torch, so setup.py can read it before anything is built.
"""
import glob
import hashlib
import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

# C++20: torch's headers need it (cpp_extension's own default). -fno-math-errno lets sqrt vectorize;
# x86-64-v3 (AVX2/FMA/F16C) is the baseline, AVX-512 paths are chosen at run time by the kernels themselves.
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-DFASTBERT_WITH_TORCH"]
if platform.machine() in ("x86_64", "AMD64"):
    CXX_FLAGS.append("-march=x86-64-v3")
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-std=c++20", "--use_fast_math", "-gencode=arch=compute_80,code=sm_80",
              "-gencode=arch=compute_90,code=sm_90"]


# Layout: csrc/<op>.h torch-free per-element math shared by CPU and CUDA; csrc/cpu/<op>.cpp and
# csrc/cuda/<op>.cu torch-free kernels; csrc/bindings/<op>.cpp (CPU) and csrc/bindings/cuda_<op>.cpp
# register them as torch ops fastbert_C::<name> (TORCH_LIBRARY_FRAGMENT, one file per op: no shared
# registration file to edit); csrc/bindings/module.cpp is the Python module both extensions load as.


def _bindings(root: str, cuda: bool) -> list[str]:
    files = sorted(glob.glob(os.path.join(root, "bindings", "*.cpp")))
    return [f for f in files if os.path.basename(f).startswith("cuda_") == cuda
            and os.path.basename(f) != "module.cpp"]


def cpu_sources(root: str = CSRC) -> list[str]:
    """Sources of fastbert._C: CPU kernels and their torch bindings (empty if there are none)."""
    srcs = sorted(glob.glob(os.path.join(root, "cpu", "*.cpp"))) + _bindings(root, cuda=False)
    return srcs + [os.path.join(root, "bindings", "module.cpp")] if srcs else []


def cuda_sources(root: str = CSRC) -> list[str]:
    """Sources of fastbert._C_cuda: CUDA kernels and their torch bindings (empty if there are none)."""
    srcs = sorted(glob.glob(os.path.join(root, "cuda", "*.cu"))) + _bindings(root, cuda=True)
    return srcs + [os.path.join(root, "bindings", "module.cpp")] if srcs else []


# -- the JIT build (fastbert._extension) --

def jit_sources(sources: list[str], directory: str, root: str = CSRC) -> list[str]:
    """cpp_extension.load names each object after its file name alone, and csrc/cpu/<op>.cpp and
    csrc/bindings/<op>.cpp share theirs: compile each source through a uniquely named file including it."""
    os.makedirs(directory, exist_ok=True)
    wrappers = []
    for src in sources:
        path = os.path.join(directory, os.path.relpath(src, root).replace(os.sep, "__"))
        text = f'#include "{os.path.abspath(src)}"\n'
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
        wrappers.append(path)
    return wrappers


def source_digest(root: str = CSRC) -> str:
    """A digest of every C++/CUDA file under csrc/. The JIT build passes it as a define: torch rebuilds when
    its flags or listed sources change, and would otherwise miss changes to headers and included sources."""
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if path.endswith((".h", ".cuh", ".cpp", ".cu")):
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]
