import csv
import os

# Triton runs on CPU only in its interpreter, which must be chosen before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FASTBERT_DATA", os.path.join(ROOT, "..", "shared", "data"))


@pytest.fixture(scope="session")
def data_dir():
    if not os.path.isdir(DATA_DIR):
        pytest.skip(f"data directory {DATA_DIR} not found (set FASTBERT_DATA)")
    return DATA_DIR


def read_tsv_column(path, *names):
    """Columns of a tab-separated file with a header row (QUOTE_NONE: quotes are text)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows)
        cols = [header.index(n) for n in names]
        return [[r[c] for c in cols] for r in rows if len(r) == len(header)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: error relative to the tensor's scale."""
    actual, expected = actual.detach().float(), expected.detach().float()
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)
