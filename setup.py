"""Build fastbert: the Python package, fastbert.kernels (from kernels/), and the C++ extensions.

  pip install --no-build-isolation -e .      (needs torch installed first: the extension links to it)

fastbert._C (C++ CPU kernels) is built whenever csrc/cpu holds sources; fastbert._C_cuda only where
torch has CUDA and nvcc is found. Without a build, fastbert JIT-compiles fastbert._C on first use.
"""
import importlib.util
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("_build", os.path.join(here, "fastbert", "_build.py"))
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("fastbert: torch is not installed; building without the C++ extension")
        return [], {}
    rel = lambda paths: [os.path.relpath(p, here) for p in paths]  # noqa: E731
    exts = []
    if build.cpu_sources():
        exts.append(cpp_extension.CppExtension(
            "fastbert._C", rel(build.cpu_sources()), include_dirs=[build.CSRC],
            extra_compile_args={"cxx": build.CXX_FLAGS}, extra_link_args=build.LD_FLAGS))
    if build.cuda_sources() and torch.version.cuda and cpp_extension.CUDA_HOME:
        exts.append(cpp_extension.CUDAExtension(
            "fastbert._C_cuda", rel(build.cuda_sources()), include_dirs=[build.CSRC],
            extra_compile_args={"cxx": build.CXX_FLAGS, "nvcc": build.NVCC_FLAGS}))
    return exts, ({"build_ext": cpp_extension.BuildExtension} if exts else {})


ext_modules, cmdclass = extensions()
setup(
    name="fastbert",
    version="0.1.0",
    description="Fused Triton/C++ training engine for BERT-style encoders",
    python_requires=">=3.10",
    packages=find_packages(include=["fastbert", "fastbert.*"]) + ["fastbert.kernels"],
    package_dir={"fastbert.kernels": "kernels"},
    package_data={"fastbert": ["train/recipes/*.yaml"]},
    install_requires=["torch>=2.4", "numpy", "safetensors", "tokenizers", "pyyaml", "tqdm"],
    extras_require={"triton": ["triton>=3.0"], "test": ["pytest", "pytest-benchmark", "transformers", "scipy"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
