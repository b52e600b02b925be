"""Tiny slices of the real data files (same layout, same quirks) and a tiny random-init encoder."""
import os

import pytest
import torch

ROWS = 33  # header + 32 rows of each file

FILES = ["cs224n/ids-sst-train.csv", "cs224n/ids-sst-dev.csv", "cs224n/ids-sst-test-student.csv",
         "cs224n/quora-train.csv", "cs224n/quora-dev.csv", "cs224n/sts-train.csv", "cs224n/sts-dev.csv",
         "cs224n/sts-test-student.csv", "nli/snli-validation.tsv", "nli/snli-test.tsv", "nli/SICK.txt"]

TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="session")
def tiny_data(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in FILES:
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            lines = [next(f) for _ in range(ROWS if "SICK" not in name else 120)]
        (root / name).write_text("".join(lines), encoding="utf-8")
    return str(root)


@pytest.fixture
def tiny(tiny_data, tmp_path):
    """Settings for a seconds-long run: tiny encoder, tiny data, one thread, no progress bars."""
    threads = torch.get_num_threads()
    yield {"model": TINY_MODEL, "data_dir": tiny_data, "threads": 1, "progress": False, "batch_size": 8,
           "eval_batch_size": 32, "max_length": 32, "lr": 2e-3, "warmup": 0, "log_every": 1, "eval_every": 1000,
           "run_dir": str(tmp_path / "run")}
    torch.set_num_threads(threads)
