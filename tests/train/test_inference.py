"""fastbert.MultitaskModel on tiny runs: the same predictions as the predict stage, embeddings as the encoder
pools them, input order kept, clear errors."""
import os

import pytest
import torch

from fastbert import BertModel, BertTokenizer, MultitaskModel, tasks
from fastbert.train import run_stage


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    from tests.train.conftest import TINY_MODEL
    threads = torch.get_num_threads()
    run_dir = str(tmp_path_factory.mktemp("inference") / "run")
    out = run_stage("multitask", model=TINY_MODEL, data_dir=tiny_data, threads=1, progress=False, batch_size=8,
                    eval_batch_size=32, max_length=32, lr=2e-3, warmup=0, max_steps=4, skip_bad_rows=True,
                    precision="fp32", predict=True, run_dir=run_dir)
    torch.set_num_threads(threads)
    return out["run_dir"]


def _predicted(run_dir, prefix):
    lines = open(os.path.join(run_dir, "predictions", f"{prefix}-dev-output.csv")).read().splitlines()[1:]
    return [float(line.split(" , ")[1]) for line in lines]


def test_predict_matches_the_predict_stage(trained, tiny_data):
    model = MultitaskModel.from_pretrained(trained)
    assert model.tasks == ["sst", "quora", "sts"] and model.dtype == torch.float32 and not model.training
    for name, prefix in (("sst", "sst"), ("quora", "para"), ("sts", "sts")):
        dev = tasks.read_split(name, tasks.task_config(name), "dev", tiny_data, skipped=[])
        inputs = [e.texts[0] for e in dev] if name == "sst" else [e.texts for e in dev]
        pred = model.predict(name, inputs, batch_size=5)  # batches unlike the stage's: order must come back
        if name == "sts":
            assert pred.dtype == torch.float32 and 0 <= pred.min() and pred.max() <= 5
            assert pred.tolist() == pytest.approx(_predicted(trained, prefix), abs=1e-4)
        else:
            assert pred.dtype == torch.int64 and pred.tolist() == _predicted(trained, prefix)
    proba = model.predict_proba("sst", ["a gorgeous film", "a mess"])
    assert proba.shape == (2, 5) and torch.allclose(proba.sum(-1), torch.ones(2))
    assert proba.argmax(-1).tolist() == model.predict("sst", ["a gorgeous film", "a mess"]).tolist()


def test_encode_pools_like_the_run_and_keeps_order(trained):
    model = MultitaskModel.from_pretrained(trained)
    texts = ["a", "a much longer sentence than the others, with many more tokens in it", "mid length text", "b c"]
    emb = model.encode(texts, batch_size=3)
    encoder = BertModel.from_pretrained(os.path.join(trained, "best")).eval()
    tok = BertTokenizer.from_pretrained(os.path.join(trained, "best"))
    with torch.no_grad():
        for i, t in enumerate(texts):  # one at a time: no batching, no packing
            batch = tok([t], max_length=32)
            expected = tasks.pool(encoder(**batch.model_inputs()), batch, "mean")[0]
            torch.testing.assert_close(emb[i], expected, atol=1e-5, rtol=1e-4)
    unit = model.encode(texts, normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(4))
    sim = model.similarity(texts[:2], texts)
    torch.testing.assert_close(sim, unit[:2] @ unit.T)
    long = model.encode(["word " * 500])  # truncated to the run's max_length, as in training
    torch.testing.assert_close(long, model.encode(["word " * 30]), atol=1e-5, rtol=1e-4)


def test_paths_precision_and_errors(trained, tmp_path):
    best = MultitaskModel.from_pretrained(os.path.join(trained, "best"))
    chain_root = tmp_path / "chain"
    os.makedirs(chain_root)
    os.symlink(trained, chain_root / "0-multitask")
    for path in (os.path.join(trained, "last"), str(chain_root)):
        other = MultitaskModel.from_pretrained(path)
        assert other.tasks == best.tasks
        torch.testing.assert_close(other.encode(["same text"]), best.encode(["same text"]))
    bf16 = MultitaskModel.from_pretrained(trained, precision="bf16")
    assert bf16.encoder.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert bf16.encode(["x y"]).dtype == torch.float32
    with pytest.raises(ValueError, match=r"unknown task 'nli'; this model has heads for: sst, quora, sts"):
        best.predict("nli", ["x"])
    with pytest.raises(TypeError, match=r"task 'quora' takes a list of \(sentence, sentence\) pairs, got a single str"):
        best.predict("quora", "is this a pair?")
    with pytest.raises(TypeError, match=r"task 'sts': input 1 must be a \(sentence, sentence\) pair"):
        best.predict("sts", [("a", "b"), "c"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        best.encode("one text")
    with pytest.raises(TypeError, match=r"^task 'sst' takes a list of sentences, got NoneType$"):
        best.predict("sst", None)
    with pytest.raises(TypeError, match=r"^encode takes a list of texts, got int$"):
        best.encode(3)
    with pytest.raises(ValueError, match="has no class probabilities"):
        best.predict_proba("sts", [("a", "b")])
    assert best.predict("sst", []).shape == (0,) and best.predict("sts", []).dtype == torch.float32
    assert best.encode([]).shape == (0, 32) and best.predict_proba("sst", []).shape == (0, 5)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        MultitaskModel.from_pretrained(str(tmp_path / "nothing"))
