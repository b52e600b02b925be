import os

import pytest

from fastbert import tasks
from fastbert.data.readers import DataError, parse_label, read_table, read_text


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def _read(name, split, data_dir, **kw):
    return tasks.read_split(name, tasks.task_config(name), split, data_dir, **kw)


@pytest.mark.parametrize("name, split, rows", [
    ("sst", "train", 8544), ("sst", "dev", 1101), ("sts", "train", 6040), ("sts", "dev", 863),
    ("cfimdb", "dev", 245), ("snli", "train", 9842), ("paws", "train", 8000), ("sst2", "dev", 872),
    ("sick", "train", 4439), ("sick", "dev", 495), ("sick", "test", 4906), ("yelp", "train", 250),
    ("yelp", "dev", 225),
])
def test_real_files_read_completely(data_dir, name, split, rows):
    ex = _read(name, split, data_dir)
    assert len(ex) == rows
    assert all(e.texts and all(e.texts) for e in ex)


def test_sst_test_file_with_doubled_index_header(data_dir):
    ex = _read("sst", "test", data_dir, labeled=False)
    assert len(ex) == 2210 and ex[0].label is None
    assert ex[0].id == "b7573736a6ddf7be102b7fee0" and ex[0].texts == ("Effective but too-tepid biopic",)


def test_quora_bad_rows_raise_with_file_and_line_or_are_skipped(data_dir):
    with pytest.raises(DataError, match=r"quora-dev\.csv:2062: missing label"):
        _read("quora", "dev", data_dir)
    skipped = []
    ex = _read("quora", "dev", data_dir, skipped=skipped)
    assert len(ex) == 16258 and len(skipped) == 2
    assert skipped[0].endswith("quora-dev.csv:2062: missing label")
    assert skipped[1].endswith("quora-dev.csv:11419: empty sentence2")
    assert {e.label for e in ex} == {0, 1}


def test_csv_quoted_fields_are_unquoted_once(data_dir):
    # quora-dev line 3 as pandas wrote it: """Which ... """"the"""" here?""" (one level of CSV quoting
    # around a text that was itself quoted): read as csv.DictReader, the CS224N starter's reader, reads it
    ex = _read("quora", "dev", data_dir, skipped=[])
    assert ex[1].texts[0].startswith('"Which is correct grammar') and ex[1].texts[0].endswith('need ""the"" here?"')


def test_yelp_text_escapes_decoded(data_dir):
    ex = _read("yelp", "train", data_dir)
    assert ex[0].texts == ("Them ribs make my mouth water!",) and ex[0].label == 3 and ex[0].id == "380688"
    assert "\n\nI like the restaurant itself" in ex[2].texts[0] and '\\"' not in ex[2].texts[0]
    assert '"close talker"' in ex[2].texts[0]


def test_multiline_csv_record_reports_its_first_line(tmp_path):
    path = _write(tmp_path, "r.csv", 'label,text,id\n1,"one\nline two",a\n9,bad,b\n2,"x ""y""",c\n')
    with pytest.raises(DataError, match=r"r\.csv:4: label '9' is not a class in 0\.\.4"):
        read_table(path, text=["text"], label="label", id="id", delimiter=",", num_labels=5)
    skipped = []
    ex = read_table(path, text=["text"], label="label", id="id", delimiter=",", num_labels=5, skipped=skipped)
    assert [e.texts[0] for e in ex] == ["one\nline two", 'x "y"'] and len(skipped) == 1


TSV = "\tid\tsentence1\tsentence2\tis_duplicate\n"


@pytest.mark.parametrize("row, why", [
    ("1\tb\tonly three\n", "3 fields, the header has 5"),
    ("1\tb\ta\tb\tyes\n", "unparsable label 'yes'"),
    ("1\tb\ta\tb\t\n", "missing label"),
    ("1\tb\ta\tb\t0.5\n", "label '0.5' is not a class"),
    ("1\tb\ta\tb\t2.0\n", "label '2.0' is not a class"),
    ("1\tb\t \tb\t1.0\n", "empty sentence1"),
    ("1\tb\ta\tb\tnan\n", "label 'nan' is not finite"),
    ("1\tb\ta\tb\t1.0\textra\n", "6 fields, the header has 5"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, why):
    path = _write(tmp_path, "q.csv", TSV + "0\ta\tfirst\tsecond\t1.0\n" + row + "2\tc\tthird\tfourth\t0.0\n")
    kw = dict(text=["sentence1", "sentence2"], label="is_duplicate", id="id", num_labels=2)
    with pytest.raises(DataError) as e:
        read_table(path, **kw)
    assert f"q.csv:3: {why}" in str(e.value)
    skipped = []
    ex = read_table(path, skipped=skipped, **kw)
    assert [x.id for x in ex] == ["a", "c"] and [x.label for x in ex] == [1, 0]
    assert len(skipped) == 1 and f"q.csv:3: {why}" in skipped[0]


def test_unbalanced_quote_stays_text_and_rows_stay_lines(tmp_path):
    path = _write(tmp_path, "u.tsv", 'sentence\tlabel\n"an open quote\t1\nnext "row"\t0\n"a ""b"""\t1\n')
    ex = read_table(path, text=["sentence"], label="label")
    assert [e.texts[0] for e in ex] == ['"an open quote', 'next "row"', 'a "b"']
    assert [e.id for e in ex] == ["2", "3", "4"]  # ids default to line numbers


def test_scores_ranges_and_label_maps(tmp_path):
    path = _write(tmp_path, "s.tsv", "a\tb\tscore\tnli\nx\ty\t4.2\tNEUTRAL\nx\ty\t5.5\tENTAILMENT\n")
    kw = dict(text=["a", "b"], label="score", label_kind="score", score_range=(0, 5))
    with pytest.raises(DataError, match=r"s\.tsv:3: score 5\.5 outside \[0, 5\]"):
        read_table(path, **kw)
    assert read_table(path, skipped=[], **kw)[0].label == pytest.approx(4.2)
    ex = read_table(path, text=["a", "b"], label="nli", label_map={"ENTAILMENT": 0, "NEUTRAL": 1})
    assert [e.label for e in ex] == [1, 0]
    with pytest.raises(DataError, match="label 'NEUTRAL' is not one of"):
        read_table(path, text=["a"], label="nli", label_map={"ENTAILMENT": 0})


def test_empty_inputs_are_errors(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        read_table(_write(tmp_path, "e.tsv", ""), text=["a"])
    with pytest.raises(DataError, match="no usable rows"):
        read_table(_write(tmp_path, "h.tsv", "a\tlabel\n"), text=["a"], label="label")
    with pytest.raises(DataError, match=r"no usable rows \(1 bad\)"):
        read_table(_write(tmp_path, "b.tsv", "a\tlabel\nx\t\n"), text=["a"], label="label", skipped=[])
    with pytest.raises(DataError, match="no column 'label'"):
        read_table(_write(tmp_path, "c.tsv", "a\tb\nx\ty\n"), text=["a"], label="label")
    with pytest.raises(DataError, match="no such file"):
        read_table(str(tmp_path / "missing.tsv"), text=["a"])
    with pytest.raises(DataError, match="no text"):
        read_text(_write(tmp_path, "t.txt", "\n  \n"))


def test_unlabeled_files_need_no_label_column(tmp_path):
    path = _write(tmp_path, "t.tsv", "0\t\tid\tsentence\n1\t0.0\tx1\thello\n")
    ex = read_table(path, text=["sentence"], label="sentiment", id="id", require_label=False)
    assert ex[0].id == "x1" and ex[0].label is None


def test_plain_text(tmp_path):
    ex = read_text(_write(tmp_path, "t.txt", "first line\n\n  second  \n"))
    assert [e.texts for e in ex] == [("first line",), ("second",)]


def test_parse_label():
    assert parse_label("1.0", "class", num_labels=2) == 1 and parse_label(" 3 ", "class") == 3
    assert parse_label("2.5", "score", score_range=(0, 5)) == 2.5
    with pytest.raises(ValueError, match="missing label"):
        parse_label("  ", "class")


def test_sick_splits_filter_rows(data_dir):
    train = _read("sick", "train", data_dir)
    assert {e.label for e in train} == {0, 1, 2}
    rel = _read("sick_r", "dev", data_dir)
    assert all(1.0 <= e.label <= 5.0 for e in rel) and len(rel) == 495
    assert os.path.basename(tasks.task_config("sick")["train"]) == "SICK.txt"


def _write_bytes(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_bytes_that_are_not_utf8_name_file_and_line_or_are_skipped(tmp_path, delimiter):
    d = delimiter.encode()
    rows = [b"id" + d + b"sentence" + d + b"sentiment", b"a" + d + b"fine" + d + b"1",
            b"b" + d + b"caf\xe9 latin-1" + d + b"2", b"c" + d + b"good" + d + b"3",
            b"d" + d + b"\x00\x01\x02\xff\xfe" + d + b"0", b"e" + d + b"also fine" + d + b"4"]
    path = _write_bytes(tmp_path, "f.csv", b"\n".join(rows) + b"\n")
    kw = {"text": ["sentence"], "label": "sentiment", "id": "id", "num_labels": 5, "delimiter": delimiter}
    with pytest.raises(DataError, match=rf"f\.csv:3: field 2 holds byte 0xe9, which is not UTF-8 .*--skip-bad-rows"):
        read_table(path, **kw)
    skipped = []
    ex = read_table(path, **kw, skipped=skipped)
    assert [e.id for e in ex] == ["a", "c", "e"] and len(skipped) == 2
    assert skipped[0].endswith("f.csv:3: field 2 holds byte 0xe9, which is not UTF-8 (binary data, or another "
                               "encoding?)")
    assert "f.csv:5: field 2 holds a NUL byte" in skipped[1]


def test_binary_garbage_is_a_data_error_not_a_decode_error(tmp_path):
    import random
    garbage = bytes(random.Random(0).randrange(256) for _ in range(4000))
    path = _write_bytes(tmp_path, "g.csv", b"id\tsentence\tsentiment\nx\tok\t1\n" + garbage)
    with pytest.raises(DataError, match=r"g\.csv:\d+: "):
        read_table(path, text=["sentence"], label="sentiment", id="id", num_labels=5)
    skipped = []
    assert [e.id for e in read_table(path, text=["sentence"], label="sentiment", id="id", num_labels=5,
                                     skipped=skipped)] == ["x"]
    assert skipped and all(s.startswith(f"{path}:") for s in skipped)
    with pytest.raises(DataError, match=r"g\.csv:1: header: field 1 holds"):
        read_table(_write_bytes(tmp_path, "g.csv", b"\xff\xfeid\tsentence\n"), text=["sentence"])
    text = _write_bytes(tmp_path, "t.txt", b"one line\n\xc3\x28 broken\nthird\n")
    with pytest.raises(DataError, match=r"t\.txt:2: the line holds byte 0xc3"):
        read_text(text)
    skipped = []
    assert [e.texts for e in read_text(text, skipped)] == [("one line",), ("third",)] and len(skipped) == 1
