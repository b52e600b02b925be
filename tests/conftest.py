import os

import pytest
import torch

# Without a GPU, Triton runs only in its interpreter, which must be chosen before any kernel module is
# imported (importing torch imports no kernel). With a GPU the compiled kernels are tested. An explicit
# TRITON_INTERPRET=0 on a CPU machine is kept: the Triton tests then skip with their reason (tests/_device.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FASTBERT_DATA", os.path.join(ROOT, "..", "shared", "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "triton: runs Triton kernels (CUDA, or the interpreter on CPU)")
    config.addinivalue_line("markers", "cuda: runs only on a CUDA GPU (skips elsewhere)")


@pytest.fixture(scope="session")
def data_dir():
    if not os.path.isdir(DATA_DIR):
        pytest.skip(f"data directory {DATA_DIR} not found (set FASTBERT_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def triton_device() -> torch.device:
    """The device the Triton kernels run on here (tests/_device.py); skips the test where there is none."""
    from tests._device import DEVICE, WHY_NOT

    if DEVICE is None:
        pytest.skip(WHY_NOT)
    return torch.device(DEVICE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
