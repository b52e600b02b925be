"""Exports load in the real libraries and compute what fastbert computes; the predict CLI writes TSV."""
import io
import os
import warnings

import pytest
import torch

from fastbert import MultitaskModel, export, predict
from fastbert.train import run_stage

TEXTS = ["a lovely film", "word " * 100, "How old are you?", "no"]
PAIRS = [("How old are you?", "What is your age?"), ("a cat", "stock prices fall " * 20)]


def _train(tiny_data, tmp_path_factory, name, **settings):
    from tests.train.conftest import TINY_MODEL
    threads = torch.get_num_threads()
    out = run_stage("multitask", model=TINY_MODEL, data_dir=tiny_data, threads=1, progress=False, batch_size=8,
                    eval_batch_size=32, max_length=32, max_steps=2, skip_bad_rows=True, precision="fp32",
                    run_dir=str(tmp_path_factory.mktemp(name) / "run"), **settings)
    torch.set_num_threads(threads)
    return out["run_dir"]


@pytest.fixture(scope="module")
def mean_run(tiny_data, tmp_path_factory):  # sst, quora bi-encoder, sts cross-encoder; mean pooling
    return _train(tiny_data, tmp_path_factory, "mean", sts={"encoder": "cross"})


@pytest.fixture(scope="module")
def pooler_run(tiny_data, tmp_path_factory):
    return _train(tiny_data, tmp_path_factory, "pooler", tasks=["sst"], pooling="pooler")


@pytest.mark.parametrize("which", ["mean_run", "pooler_run"])
def test_sentence_transformers_export_embeds_like_encode(which, request, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    run = request.getfixturevalue(which)
    out = export.sentence_transformers(run, str(tmp_path / "st"))
    for f in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json",
              "config.json", "model.safetensors"):
        assert os.path.exists(os.path.join(out, f)), f
    theirs = st.SentenceTransformer(out, device="cpu").encode(TEXTS, convert_to_tensor=True)
    ours = MultitaskModel.from_pretrained(run).encode(TEXTS)
    assert torch.nn.functional.cosine_similarity(theirs, ours).min() >= 0.999
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("which, task", [("mean_run", "sst"), ("mean_run", "sts"), ("pooler_run", "sst")])
def test_hf_export_gives_the_heads_logits(which, task, request, tmp_path):
    transformers = pytest.importorskip("transformers")
    run = request.getfixturevalue(which)
    standard = which == "pooler_run"  # BertForSequenceClassification pools tanh(dense([CLS])): pooling pooler
    with warnings.catch_warnings(record=True) as notices:
        warnings.simplefilter("always")
        out = export.hf(run, str(tmp_path / "hf"), task)
    said = [str(n.message) for n in notices if n.category is export.RemoteCodeNotice]
    assert said == ([] if standard else [f"{out}: pooling 'mean' has no transformers class (BertForSequence"
                                         "Classification classifies tanh(dense([CLS])), fastbert's pooling 'pooler'):"
                                         f" load it with AutoModelForSequenceClassification.from_pretrained({out!r}, "
                                         "trust_remote_code=True) (model type 'fastbert', modeling_fastbert.py)"])
    if standard:  # plain transformers, no code of ours
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert type(hf).__name__ == "BertForSequenceClassification"
    else:  # refused without trust_remote_code, not loaded as a BertForSequenceClassification with a random pooler
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            transformers.AutoModelForSequenceClassification.from_pretrained(out)
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
        assert type(hf).__name__ == "FastbertForSequenceClassification"
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=not standard)
    ours = MultitaskModel.from_pretrained(run)
    inputs = TEXTS if task == "sst" else PAIRS
    args = ([x[0] for x in inputs], [x[1] for x in inputs]) if task == "sts" else (inputs,)
    enc = tok(*args, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**enc).logits
    if task == "sst":
        torch.testing.assert_close(logits.softmax(-1), ours.predict_proba(task, inputs), atol=1e-5, rtol=1e-4)
    else:
        assert logits.shape == (2, 1)
        torch.testing.assert_close(logits[:, 0].clamp(0, 5), ours.predict(task, inputs), atol=1e-5, rtol=1e-4)


def test_export_cli_says_in_one_line_what_loading_needs(mean_run, pooler_run, tmp_path, capsys):
    assert export.main(["hf", mean_run, str(tmp_path / "mean"), "--task", "sst"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: {tmp_path / 'mean'}: pooling 'mean' has no transformers class")
    assert "trust_remote_code=True" in err[0]
    assert export.main(["hf", pooler_run, str(tmp_path / "pooler"), "--task", "sst"]) == 0
    assert capsys.readouterr().err == ""


def test_export_errors(mean_run, tmp_path, capsys):
    with pytest.raises(export.ExportError, match="task 'quora' is a bi-encoder pair head"):
        export.hf(mean_run, str(tmp_path / "a"), "quora")
    with pytest.raises(export.ExportError, match=r"the run has no head for task 'snli' \(it has: sst, quora, sts\)"):
        export.hf(mean_run, str(tmp_path / "a"), "snli")
    assert not os.path.exists(tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert export.main(["sentence-transformers", mean_run, str(tmp_path / "full")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_predict_cli_writes_tsv(mean_run, tmp_path, monkeypatch, capsys):
    model = MultitaskModel.from_pretrained(mean_run)
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{a}\t{b}\n" for a, b in PAIRS) + "\n"))
    assert predict.main([mean_run, "--task", "sts", "--input", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sentence1\tsentence2\tprediction" and len(lines) == 3
    scores = [float(line.split("\t")[2]) for line in lines[1:]]
    assert scores == pytest.approx(model.predict("sts", PAIRS).tolist(), abs=1e-4)
    path = tmp_path / "in.txt"
    path.write_text("a lovely film\nno\n", encoding="utf-8")
    assert predict.main([mean_run, "--task", "sst", "--input", str(path), "--proba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sentence\tprediction\tp0\tp1\tp2\tp3\tp4"
    assert [int(line.split("\t")[1]) for line in lines[1:]] == model.predict("sst", ["a lovely film", "no"]).tolist()
    path.write_text("only one sentence\n", encoding="utf-8")
    assert predict.main([mean_run, "--task", "quora", "--input", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}:1: expected two tab-separated sentences, got 1 field(s)"
    assert predict.main([mean_run, "--task", "nli", "--input", str(path)]) == 2
    assert "unknown task 'nli'" in capsys.readouterr().err


def test_predict_cli_input_errors_name_file_and_line(mean_run, tmp_path, capsys):
    path = tmp_path / "in.txt"
    cases = [(b"fine\nleft\tright\n", "sst", "2: expected one sentence (no tab: the task takes single sentences), "
              "got 2 field(s)"),
             (b"\xef\xbb\xbfHow old?\tWhat age?\nok\t\xff\n", "quora", "2: not UTF-8 text (byte 0xff at 3)")]
    for data, task, why in cases:
        path.write_bytes(data)
        assert predict.main([mean_run, "--task", task, "--input", str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {path}:{why}"
    assert predict.main([mean_run, "--task", "sst", "--input", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.txt'}: No such file or directory"
    path.write_bytes(b"\xef\xbb\xbfHow old?\tWhat age?\n")  # a BOM is not text
    assert predict.main([mean_run, "--task", "quora", "--input", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("How old?\tWhat age?\t")
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    assert "truncated to the run's max_length tokens" in capsys.readouterr().out
