"""Table specs (fastbert/experiments/specs/*.yaml): which runs make a table, and what the report found.

A spec:
    title: Report 1, Table 4: multitask routines
    source: report 1 ("BERT Goes to College"), Table 4, dev      # where the quoted figures come from
    note: how the setting differs from the report's (budget, data)
    seeds: 1                                                      # default number of seeds for `run`
    baseline: default                                             # optional: compare rows with this one
    targets:                                                      # optional: what the table must reach
      row: best                                                   #   the row judged by `mean` and `single_task`
      mean: 0.76                                                  #   its dev mean at least this
      single_task: {sst: report1-t1/sst, ...}                     #   each task at or above that row's figure
      fast: {mean: 0.75, minutes: 10}                             #   some row's dev curve reaches it that soon
    common: {skip_bad_rows: true}                                 # settings for every row
    rows:
      - name: additive
        stage: multitask              # a driver stage (python -m fastbert.train <stage>)
        config: multitask             # optional: a packaged recipe name or a path
        recipe: {...}                 # optional instead of config: a recipe written out for the run (chains)
        overrides: {routine: additive}
        report: {sst: 0.483, quora: 0.802, sts: 0.493}   # the report's figures, quoted (null: not reported)
      - name: additive
        same_as: report1-t4/additive  # another table's row with the same settings: run and recorded once, there
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field

import yaml

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
TASKS = ("sst", "quora", "sts")  # the dev metrics of a table: SST accuracy, Quora accuracy, STS Pearson
ROW_KEYS = {"name", "stage", "config", "recipe", "overrides", "report", "note", "same_as"}
SPEC_KEYS = {"title", "source", "note", "seeds", "common", "rows", "curves", "baseline", "targets"}
TARGET_KEYS = {"row", "mean", "single_task", "fast"}


class SpecError(ValueError):
    pass


@dataclass
class Row:
    name: str
    stage: str
    config: str | None = None
    recipe: dict | None = None
    overrides: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    note: str = ""
    same_as: str | None = None  # "table/row": this row is that row's run (recorded there)


@dataclass
class Spec:
    name: str
    path: str
    title: str
    source: str = ""
    note: str = ""
    seeds: int = 1
    common: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    curves: bool = False  # plot dev mean against wall-clock for this table's runs
    baseline: str | None = None  # a row the others are compared with ("vs <row>"), else the table's best
    targets: dict = field(default_factory=dict)  # see the module docstring

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise SpecError(f"{self.path}: no row {name!r} (rows: {', '.join(r.name for r in self.rows)})")


def names() -> list[str]:
    """The packaged tables, in file order (specs/NN-name.yaml sorts them; the name drops the NN-)."""
    return [_table_name(f) for f in sorted(os.listdir(SPECS)) if f.endswith(".yaml")]


def _table_name(filename: str) -> str:
    base = os.path.basename(filename)[:-5]
    head, _, tail = base.partition("-")
    return tail if head.isdigit() and tail else base


def path_of(name_or_path: str) -> str:
    if name_or_path.endswith(".yaml") and os.path.exists(name_or_path):
        return name_or_path
    for f in sorted(os.listdir(SPECS)):
        if f.endswith(".yaml") and _table_name(f) == name_or_path:
            return os.path.join(SPECS, f)
    raise SpecError(f"no table {name_or_path!r}: not a spec file, nor one of {', '.join(names())}")


def load(name_or_path: str) -> Spec:
    """A spec by table name or path, checked."""
    path = path_of(name_or_path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("rows"), list) or not raw["rows"]:
        raise SpecError(f"{path}: a spec is a mapping with a non-empty list `rows`")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(SPEC_KEYS)})")
    spec = Spec(name=_table_name(path), path=path, title=raw.get("title", _table_name(path)),
                source=raw.get("source", ""), note=raw.get("note", ""), seeds=int(raw.get("seeds", 1)),
                common=raw.get("common") or {}, curves=bool(raw.get("curves", False)), baseline=raw.get("baseline"),
                targets=raw.get("targets") or {})
    for i, r in enumerate(raw["rows"]):
        spec.rows.append(_row(path, i, r))
    seen = [r.name for r in spec.rows]
    if len(set(seen)) != len(seen):
        raise SpecError(f"{path}: row names repeat: {seen}")
    if spec.baseline is not None and spec.baseline not in seen:
        raise SpecError(f"{path}: baseline {spec.baseline!r} is not a row (rows: {', '.join(seen)})")
    _check_targets(path, spec.targets, seen)
    return spec


def _check_targets(path: str, t, rows: list[str]) -> None:
    def bad(problem: str):
        raise SpecError(f"{path}: targets: {problem}, got {t!r}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(t, dict):
        bad("a mapping")
    if set(t) - TARGET_KEYS:
        bad(f"unknown keys {sorted(set(t) - TARGET_KEYS)} (allowed: {sorted(TARGET_KEYS)})")
    if ("mean" in t or "single_task" in t) and t.get("row") not in rows:
        bad(f"row {t.get('row')!r} is not a row of the table")
    if "mean" in t and not number(t["mean"]):
        bad("mean: a number")
    single = t.get("single_task", {})
    if not isinstance(single, dict) or set(single) - set(TASKS) or \
            any(not isinstance(v, str) or v.count("/") != 1 for v in single.values()):
        bad(f"single_task: {{task: 'table/row'}} for tasks among {', '.join(TASKS)}")
    fast = t.get("fast", {"mean": 0, "minutes": 0})
    if not isinstance(fast, dict) or set(fast) != {"mean", "minutes"} or not all(map(number, fast.values())):
        bad("fast: {mean: number, minutes: number}")


def _row(path: str, i: int, r) -> Row:
    if isinstance(r, dict) and r.get("name") and r.get("same_as"):
        extra = set(r) - {"name", "same_as", "report", "note"}
        if extra or not isinstance(r["same_as"], str) or r["same_as"].count("/") != 1:
            raise SpecError(f"{path}: row {r['name']!r}: `same_as` takes 'table/row' and goes with only `report` "
                            f"and `note`, got same_as={r['same_as']!r} with {sorted(extra)}")
        r = {**r, "stage": None}
    elif not isinstance(r, dict) or not r.get("name") or not r.get("stage"):
        raise SpecError(f"{path}: row {i}: needs `name` and `stage` (or `same_as`), got {r!r}")
    unknown = set(r) - ROW_KEYS
    if unknown:
        raise SpecError(f"{path}: row {r['name']!r}: unknown keys {sorted(unknown)} (allowed: {sorted(ROW_KEYS)})")
    if r.get("config") and r.get("recipe"):
        raise SpecError(f"{path}: row {r['name']!r}: give `config` or `recipe`, not both")
    report = r.get("report") or {}
    bad = {k: v for k, v in report.items() if k not in TASKS or not (v is None or isinstance(v, (int, float)))}
    if bad:
        raise SpecError(f"{path}: row {r['name']!r}: report takes numbers (or null) for {TASKS}, got {bad}")
    return Row(name=str(r["name"]), stage=r["stage"], config=r.get("config"), recipe=r.get("recipe"),
               overrides=r.get("overrides") or {}, report=report, note=r.get("note", ""), same_as=r.get("same_as"))


def target(spec: Spec, row: Row) -> tuple[Spec, Row]:
    """The table and row whose run this row is: itself, or what its `same_as` names (checked)."""
    if row.same_as is None:
        return spec, row
    table, name = row.same_as.split("/")
    beside = os.path.join(os.path.dirname(spec.path), table + ".yaml")  # a table file next to this one, else packaged
    try:
        other = load(beside if os.path.exists(beside) else table)
        found = other.row(name)
    except SpecError as e:
        raise SpecError(f"{spec.path}: row {row.name!r}: same_as {row.same_as!r}: {e}") from None
    if found.same_as is not None:
        raise SpecError(f"{spec.path}: row {row.name!r}: same_as {row.same_as!r} is itself a same_as row")
    return other, found


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """{quora: {encoder: cross}} -> [("quora.encoder", "cross")]; a chain list stays one value."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _arg(value) -> str:
    """A value as the driver reads it back (YAML): strings plain, the rest in YAML flow style."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def command(row: Row, settings: dict, recipe_path: str | None) -> list[str]:
    """The driver's argv: python -m fastbert.train <stage> [--config C] --key value ..."""
    argv = [sys.executable, "-m", "fastbert.train", row.stage]
    config = recipe_path or row.config
    if config:
        argv += ["--config", config]
    for k, v in _flatten(settings):
        argv += [f"--{k}", _arg(v)]
    return argv


def display(argv: list[str]) -> str:
    """The command as a user types it (python, not this interpreter's path)."""
    return shlex.join(["python", *argv[1:]])
