import os

import pytest
import torch

from fastbert import BertTokenizer
from fastbert.pretrained import default_path
from tests._data import read_tsv_column

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def toks():
    return BertTokenizer.from_pretrained(), transformers.BertTokenizerFast.from_pretrained(default_path())


def _sentences(data_dir):
    d = os.path.join(data_dir, "cs224n")
    out = [r[0] for r in read_tsv_column(os.path.join(d, "ids-sst-dev.csv"), "sentence")]
    for name in ("quora-dev.csv", "sts-dev.csv"):
        for a, b in read_tsv_column(os.path.join(d, name), "sentence1", "sentence2"):
            out += [a, b]
    return out


def test_ids_match_hf_on_every_dev_sentence(toks, data_dir):
    ours, hf = toks
    sents = _sentences(data_dir)
    assert len(sents) > 30000
    mine = ours.encode(sents, truncation=False)
    theirs = hf(sents, truncation=False)["input_ids"]
    bad = [i for i, ((ids, _), ref) in enumerate(zip(mine, theirs)) if ids != ref]
    assert not bad, f"{len(bad)} sentences differ, first: {sents[bad[0]]!r}"


def test_pairs_and_truncation_match_hf(toks, data_dir):
    ours, hf = toks
    d = os.path.join(data_dir, "cs224n")
    pairs = read_tsv_column(os.path.join(d, "quora-dev.csv"), "sentence1", "sentence2")[:500]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    for max_len in (16, 37, 512):
        mine = ours.encode(a, b, max_length=max_len)
        ref = hf(a, b, truncation="longest_first", max_length=max_len)
        assert [m[0] for m in mine] == ref["input_ids"]
        assert [m[1] for m in mine] == ref["token_type_ids"]


def test_padded_batch_and_lengths(toks):
    ours, _ = toks
    batch = ours(["a b c", "hello", "the quick brown fox jumps over the lazy dog"])
    assert batch.input_ids.shape == (3, int(batch.lengths.max()))
    assert batch.lengths.tolist() == batch.attention_mask.sum(1).tolist()
    assert (batch.input_ids[batch.attention_mask == 0] == ours.pad_id).all()
    assert (batch.input_ids[:, 0] == ours.cls_id).all()
    packed = ours(["a b c", "hello"], packed=True)
    assert packed.cu_seqlens.tolist() == [0, 5, 8]
    assert packed.input_ids.tolist() == [i for ids, _ in ours.encode(["a b c", "hello"]) for i in ids]


def test_truncation_off_raises_and_on_truncates(toks):
    ours, _ = toks
    long = " ".join(["word"] * 600)
    with pytest.raises(ValueError, match="over max_length=512"):
        ours([long], truncation=False)
    assert ours([long]).input_ids.shape == (1, 512)


def test_loads_from_vocab_txt_only(tmp_path, toks):
    ours, _ = toks
    (tmp_path / "vocab.txt").write_text(open(os.path.join(default_path(), "vocab.txt")).read())
    from_vocab = BertTokenizer.from_pretrained(tmp_path)
    text = ["Héllo, WORLD! naïve café 東京 tokenization"]
    assert from_vocab.encode(text) == ours.encode(text)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)


def test_batch_to_device_keeps_fields(toks):
    b = toks[0](["x y"], packed=True).to("cpu")
    assert isinstance(b.cu_seqlens, torch.Tensor) and b.max_seqlen == 4
