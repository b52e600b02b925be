import numpy as np
import pytest
import torch

from fastbert import BertConfig, BertModel, BertTokenizer, tasks
from fastbert.data.batching import Loader
from fastbert.data.readers import Example
from fastbert.tasks.base import pool
from fastbert.tasks.contrastive import triplets
from fastbert.tasks.mlm import chunk, mask_tokens
from fastbert.train.loop import Encode

CFG = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.from_pretrained()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return BertModel(CFG, backend="reference").eval()


PAIRS = [Example(str(i), (f"the film number {i} was good", f"a movie {'really ' * i}fine"), i % 2) for i in range(6)]


@pytest.mark.parametrize("mode", ["mean", "cls", "pooler"])
def test_pooling_padded_equals_packed(tok, encoder, mode):
    texts = ["a lovely film", "no one goes unindicted here , which is probably for the best", "ok"]
    padded, packed = tok(texts), tok(texts, packed=True)
    with torch.no_grad():
        a = pool(encoder(**padded.model_inputs()), padded, mode)
        b = pool(encoder(**packed.model_inputs()), packed, mode)
        h = encoder(**padded.model_inputs()).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if mode == "mean":
        ref = torch.stack([h[i, :n].mean(0) for i, n in enumerate(padded.lengths.tolist())])
        torch.testing.assert_close(a, ref, atol=1e-6, rtol=1e-5)
    if mode == "cls":
        torch.testing.assert_close(a, h[:, 0])


def _batch(task, tok, examples, packed=False):
    data = task.encode(examples, tok, 32)
    return Loader(data, tok, len(examples), shuffle=False, packed=packed).batch(np.arange(len(examples)))


@pytest.mark.parametrize("name, settings, n_params, packed", [
    ("sst", {}, 32 * 5 + 5, False),
    ("sst", {"pooling": "cls"}, 32 * 5 + 5, True),
    ("quora", {"encoder": "bi", "loss": "softmax"}, 96 * 2 + 2, True),
    ("quora", {"encoder": "cross"}, 32 * 2 + 2, False),
    ("quora", {"loss": "cosine_mse"}, 0, False),
    ("quora", {"loss": "contrastive"}, 0, False),
    ("quora", {"loss": "mnr"}, 0, False),
    ("snli", {}, 96 * 3 + 3, False),
    ("sts", {}, 0, False),
    ("sts", {"loss": "contrastive"}, 0, False),
    ("sts", {"encoder": "cross", "pooling": "pooler"}, 33, True),
])
def test_task_losses_and_predictions(tok, encoder, name, settings, n_params, packed):
    task = tasks.build(name, tasks.task_config(name, settings), CFG)
    assert sum(p.numel() for p in task.parameters()) == n_params
    labels = {"classify": [0, 1, 4, 2, 3, 1], "pair": [0, 1, 1, 0, 1, 0], "similarity": [0.0, 1.5, 5.0, 2.2, 3.3, 4.0]}
    kind = task.cfg["kind"]
    ex = [Example(e.id, e.texts[:1] if kind == "classify" else e.texts, labels[kind][i]) for i, e in enumerate(PAIRS)]
    if name == "snli":
        ex = [Example(e.id, e.texts, i % 3) for i, e in enumerate(ex)]
    b = _batch(task, tok, ex, packed)
    enc = Encode(encoder)
    loss = task.loss(enc, b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    pred = task.predict(enc, b).detach()
    assert pred.shape == (6,)
    metrics = task.score(pred.numpy(), np.array(labels[kind] if name != "snli" else [i % 3 for i in range(6)]))
    assert list(metrics) == [task.metric]
    if name == "sts" and not settings:
        u = pool(encoder(**tok([e.texts[0] for e in ex]).model_inputs()), tok([e.texts[0] for e in ex]), "mean")
        v = pool(encoder(**tok([e.texts[1] for e in ex]).model_inputs()), tok([e.texts[1] for e in ex]), "mean")
        torch.testing.assert_close(pred, 5 * torch.cosine_similarity(u, v), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("settings, message", [
    ({"encoder": "cross", "loss": "mnr"}, "cross-encoder takes 'softmax' only"),
    ({"encoder": "siamese"}, "encoder must be 'bi' or 'cross'"),
    ({"loss": "hinge"}, "is not one of"),
    ({"num_labels": 3, "loss": "cosine_mse"}, "needs binary labels"),
    ({"pooling": "max"}, "pooling must be one of"),
])
def test_bad_task_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        tasks.build("quora", tasks.task_config("quora", settings), CFG)


def test_unknown_task_and_new_task():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        tasks.task_config("nope")
    cfg = tasks.task_config("mine", {"kind": "classify", "num_labels": 3, "train": "x.tsv", "text": ["s"]})
    assert cfg["num_labels"] == 3 and cfg["dropout"] == 0.1


def test_mlm_masking_rates_and_special_tokens():
    vocab, mask_id = 1000, 103
    special = torch.zeros(vocab, dtype=torch.bool)
    special[[0, 101, 102, 103]] = True
    ids = torch.randint(104, vocab, (64, 128))
    ids[:, 0], ids[:, -1], ids[:, 60] = 101, 102, 0
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, special, mask_id, vocab, 0.15, g)
    chosen = labels != -100
    assert not chosen[:, [0, 60, -1]].any()  # special tokens are never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    rate = chosen.float().sum() / (ids.numel() - 3 * 64)
    assert 0.14 < rate < 0.16
    masked = (inputs[chosen] == mask_id).float().mean()
    kept = (inputs[chosen] == ids[chosen]).float().mean()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.125  # 10% kept, plus random draws of the same id
    again, _ = mask_tokens(ids, special, mask_id, vocab, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again)


def test_mlm_blocks_and_loss(tok, encoder):
    assert chunk([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    task = tasks.build("mlm", tasks.task_config("mlm", {"block_size": 16}), CFG)
    data = task.encode([Example("0", ("the film was good and the plot was fine " * 4,))] * 3, tok, 16)
    assert all(len(s[0][0]) == 16 for s in data.seqs[:-1]) and data.seqs[0][0][0][0] == tok.cls_id
    b = Loader(data, tok, len(data), shuffle=False).batch(np.arange(len(data)), seed=5)
    loss = task.loss(Encode(encoder), b)
    assert 9 < loss.item() < 12  # ~ log(30522) for a random model
    metrics, _ = task.evaluate(Encode(encoder), Loader(data, tok, 4, shuffle=False))
    assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 5


def test_triplets_from_nli():
    ex = [Example("1", ("p1", "e1"), 0), Example("2", ("p1", "n1"), 1), Example("3", ("p1", "c1"), 2),
          Example("4", ("p2", "e2"), 0), Example("5", ("p2", "e3"), 0), Example("6", ("p2", "c2"), 2),
          Example("7", ("p3", "e4"), 0)]
    assert [t.texts for t in triplets(ex)] == [("p1", "e1", "c1"), ("p2", "e2", "c2"), ("p2", "e3", "c2")]
