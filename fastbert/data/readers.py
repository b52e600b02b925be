"""Data files -> typed examples. Every malformed row is an error naming its file and line.

Two readers cover every data set the driver uses:
  read_table(path, text=[...], label=..., ...)  a delimited file with a header row (the CS224N CSVs,
                                                SNLI, SICK, PAWS, SST-2: tab separated; Yelp: comma CSV)
  read_text(path)                               plain text, one document per non-empty line (MLM)

Tab-separated files are split on tabs only (csv.QUOTE_NONE: some sentences hold unbalanced quotes),
one row per line; a field that is a complete CSV-quoted string ("...", inner quotes doubled, as pandas
writes them) is unquoted. Comma CSVs use standard CSV quoting, so fields may span lines. Columns are
found by header name, so extra or doubled index columns (ids-sst-test-student.csv) do not matter; every
row must have the header's field count.

A bad row (wrong field count, empty text, missing or unparsable label, label out of range, bytes that
are not UTF-8, a NUL byte, a line csv cannot parse) raises DataError("file:line: why"); with `skipped=[]`
it is appended there instead and left out. Bytes are decoded row by row (undecodable ones kept as
surrogate escapes until the row is checked), so one bad row does not stop the others. A file with no
usable rows is always an error.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence

from fastbert.errors import UserError

csv.field_size_limit(sys.maxsize)  # cfimdb reviews and Yelp texts run past the default 128 KiB cap

_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
_UNREADABLE = re.compile("[\udc80-\udcff\x00]")  # an undecodable byte (surrogateescape) or a NUL byte


class DataError(UserError, ValueError):
    """A data file that cannot be read as asked: the message starts with file:line."""


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    texts: tuple[str, ...]  # one sentence, a pair, or a triplet
    label: int | float | None = None


def _unquote(field: str) -> str:
    m = _QUOTED.fullmatch(field)
    return m[1].replace('""', '"') if m else field


def _rows(path: str, delimiter: str):
    """The header, then (line number, fields or the csv.Error of that line) for every record after it."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        tsv = delimiter == "\t"
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise DataError(f"{path}:1: {e}") from None
        yield header
        start = reader.line_num + 1
        while True:  # a record may span lines (comma CSV): report the line it starts on
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, e
                start = reader.line_num + 1
                continue
            yield start, [_unquote(x) for x in fields] if tsv else fields
            start = reader.line_num + 1


def _unreadable(text: str) -> str | None:
    """What in `text` is not text: its first byte that is not UTF-8, or a NUL byte; None if nothing."""
    m = _UNREADABLE.search(text)
    if m is None:
        return None
    what = "a NUL byte" if m[0] == "\x00" else f"byte 0x{ord(m[0]) - 0xDC00:02x}, which is not UTF-8"
    return f"{what} (binary data, or another encoding?)"


def _check_bytes(fields: list[str]) -> None:
    """ValueError naming the first field that is not text (see _unreadable)."""
    for i, field in enumerate(fields, 1):
        why = _unreadable(field)
        if why:
            raise ValueError(f"field {i} holds {why}")


def parse_label(raw: str, kind: str, *, num_labels: int | None = None, label_map: Mapping | None = None,
                score_range: Sequence[float] | None = None) -> int | float:
    """One label: "class" -> int in [0, num_labels) (accepts "1.0"), "score" -> float in score_range."""
    raw = raw.strip()
    if raw == "":
        raise ValueError("missing label")
    if label_map is not None:
        if raw not in label_map:
            raise ValueError(f"label {raw!r} is not one of {sorted(label_map)}")
        raw = str(label_map[raw])
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"unparsable label {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"label {raw!r} is not finite")
    if kind == "score":
        lo, hi = score_range if score_range is not None else (-math.inf, math.inf)
        if not lo <= value <= hi:
            raise ValueError(f"score {value} outside [{lo}, {hi}]")
        return value
    if value != int(value) or (num_labels is not None and not 0 <= value < num_labels):
        raise ValueError(f"label {raw!r} is not a class in 0..{num_labels - 1 if num_labels else 'n'}")
    return int(value)


def read_table(path: str, *, text: Sequence[str], label: str | None = None, id: str | None = None,
               delimiter: str = "\t", label_kind: str = "class", num_labels: int | None = None,
               label_map: Mapping | None = None, score_range: Sequence[float] | None = None,
               where: Mapping[str, str] | None = None, unescape: bool = False, require_label: bool = True,
               skipped: list[str] | None = None) -> list[Example]:
    """Examples from a delimited file with a header row.

    text: the text column(s); label: the label column (absent from the file is fine when
    require_label is False: unlabeled test files); id: the id column (default: the line number);
    where: keep only rows whose column equals the value (SICK's SemEval_set); unescape: texts are
    JSON string escapes (Yelp's \\n, \\", \\u00e9).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    rows = _rows(path, delimiter)
    header = next(rows)
    if not header:
        raise DataError(f"{path}:1: empty file (no header row)")
    try:
        _check_bytes(header)
    except ValueError as e:
        raise DataError(f"{path}:1: header: {e}") from None
    header = [h.strip() for h in header]

    def column(name):
        if name not in header:
            raise DataError(f"{path}:1: no column {name!r} in the header {header}")
        return header.index(name)

    text_cols = [column(c) for c in text]
    label_col = column(label) if label is not None and (require_label or label in header) else None
    id_col = column(id) if id is not None else None
    where_cols = {column(c): v for c, v in (where or {}).items()}
    out = []
    for line, fields in rows:
        try:
            if isinstance(fields, csv.Error):
                raise ValueError(f"unreadable line ({fields})")
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, the header has {len(header)}")
            if any(fields[c] != v for c, v in where_cols.items()):
                continue
            _check_bytes(fields)
            texts = tuple(fields[c].strip() for c in text_cols)
            if unescape:
                texts = tuple(json.loads(f'"{t}"', strict=False) for t in texts)
            for name, t in zip(text, texts):
                if not t:
                    raise ValueError(f"empty {name}")
            value = None
            if label_col is not None:
                value = parse_label(fields[label_col], label_kind, num_labels=num_labels, label_map=label_map,
                                    score_range=score_range)
        except ValueError as e:
            msg = f"{path}:{line}: {e}"
            if skipped is None:
                raise DataError(msg + " (--skip-bad-rows skips such rows)") from None
            skipped.append(msg)
            continue
        out.append(Example(fields[id_col].strip() if id_col is not None else str(line), texts, value))
    if not out:
        raise DataError(f"{path}: no usable rows" + (f" ({len(skipped)} bad)" if skipped else ""))
    return out


def read_text(path: str, skipped: list[str] | None = None) -> list[Example]:
    """Plain text: one example per non-empty line (a line that is not UTF-8 text: DataError, or skipped)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for i, line in enumerate(f, 1):
            why = _unreadable(line)
            if why:
                if skipped is None:
                    raise DataError(f"{path}:{i}: the line holds {why} (--skip-bad-rows skips such rows)")
                skipped.append(f"{path}:{i}: the line holds {why}")
                continue
            if line.strip():
                out.append(Example(str(i), (line.strip(),)))
    if not out:
        raise DataError(f"{path}: no text")
    return out
