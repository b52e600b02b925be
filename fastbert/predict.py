"""Predict on new text with a trained run, TSV to stdout.

    python -m fastbert.predict RUN --task sst --input reviews.txt        # one sentence a line
    printf 'How old are you?\\tWhat is your age?\\n' | python -m fastbert.predict RUN --task quora --input -

Input: UTF-8 text, one sentence a line (single-sentence tasks), or two tab-separated sentences a line
(pair tasks); blank lines are skipped; a line of another shape, or not UTF-8, stops with file:line. Each
text is truncated to the run's max_length tokens, as in training. Output: a header, then the input's
columns and the prediction (class id, or the score for STS), with --proba the class probabilities too.
RUN: a run directory, a chain's root or a checkpoint directory (see fastbert.MultitaskModel).
"""
from __future__ import annotations

import argparse
import sys

from fastbert.errors import UserError, describe


class InputError(UserError, ValueError):
    pass


def read_inputs(lines, source: str, pairs: bool) -> list:
    """Sentences, or (sentence, sentence) pairs, of the non-blank lines (bytes are decoded as UTF-8, a BOM
    dropped); InputError names file:line."""
    out = []
    for n, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{source}:{n}: not UTF-8 text (byte {line[e.start]:#04x} at {e.start})") from None
        line = line.removeprefix("\ufeff") if n == 1 else line
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != (2 if pairs else 1):
            want = "two tab-separated sentences" if pairs else "one sentence (no tab: the task takes single sentences)"
            raise InputError(f"{source}:{n}: expected {want}, got {len(fields)} field(s)")
        out.append((fields[0], fields[1]) if pairs else line)
    return out


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def write_tsv(out, inputs: list, pred, proba=None) -> None:
    """Header, then one row per input: its text(s), the prediction, the class probabilities (if any)."""
    pairs = bool(inputs) and isinstance(inputs[0], tuple)
    header = ["sentence1", "sentence2"] if pairs else ["sentence"]
    header.append("prediction")
    if proba is not None:
        header += [f"p{i}" for i in range(proba.shape[1])]
    out.write("\t".join(header) + "\n")
    for i, x in enumerate(inputs):
        row = [_clean(t) for t in (x if pairs else (x,))]
        v = pred[i].item()
        row.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        if proba is not None:
            row += [f"{p:.4f}" for p in proba[i].tolist()]
        out.write("\t".join(row) + "\n")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fastbert.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory, a chain's root or a checkpoint directory")
    p.add_argument("--task", required=True, help="the task whose head predicts (sst, quora, sts, ...)")
    p.add_argument("--input", required=True, help="a text file, or - for stdin")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--proba", action="store_true", help="also write the class probabilities")
    p.add_argument("--precision", default=None, help="fp32 | bf16 (default: the run's)")
    args = p.parse_args(argv)
    from fastbert.inference import MultitaskModel

    try:
        model = MultitaskModel.from_pretrained(args.run, precision=args.precision)
        pairs = model.takes_pairs(args.task)
        if args.input == "-":
            inputs = read_inputs(getattr(sys.stdin, "buffer", sys.stdin), "<stdin>", pairs)
        else:
            with open(args.input, "rb") as f:
                inputs = read_inputs(f, args.input, pairs)
        if args.proba:  # one pass: a head with probabilities predicts their argmax
            proba = model.predict_proba(args.task, inputs, batch_size=args.batch_size).cpu()
            pred = proba.argmax(-1)
        else:
            proba, pred = None, model.predict(args.task, inputs, batch_size=args.batch_size).cpu()
    except (UserError, ValueError, TypeError, OSError) as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2
    write_tsv(sys.stdout, inputs, pred, proba)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
