"""Reading the test data files."""
import csv


def read_tsv_column(path, *names):
    """Columns of a tab-separated file with a header row (QUOTE_NONE: quotes are text)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows)
        cols = [header.index(n) for n in names]
        return [[r[c] for c in cols] for r in rows if len(r) == len(header)]
