"""fastbert's CPU training-step targets, in one table that test_train_speedup asserts (`pytest bench/
--benchmark-only` fails on a target missed by more than the measured spread) and bench/report.py reports (met /
NOT met), and the rule that judges one interleaved measurement (a "speedup" record) against them.

A target is judged on its per-round values: fastbert's speed-up over a baseline in round i is the baseline's round
time over fastbert's (the same batches, run back to back); its MFU in round i is the round's model FLOPs per second
over the measured matmul rate.
  met                         median >= target
  NOT met (within the spread) median < target <= median + spread: noise may hide a met target; the run passes
  NOT met                     median + spread < target: the benchmark fails
Each target is set for the precision fastbert trains in on the machine: bf16 (a CPU with bf16 matmuls: AMX /
AVX512-BF16), or fp32 (a CPU without, where a bf16 matmul runs a slow reference loop and bf16 baselines are left
out); MFU is over the machine's measured matmul rate in that precision.
Pure Python (no torch): the report imports it.
"""
from __future__ import annotations

import dataclasses
import statistics


@dataclasses.dataclass(frozen=True)
class Target:
    shape: str  # minilm | bert-base
    metric: str  # "speedup": fastbert's over `baseline` | "mfu": fastbert's model FLOPs over the matmul rate in its precision
    minimum: float
    baseline: str | None = None  # the variant fastbert is compared with (speedup)
    batch: int = 32  # judged on batches of this many sequences
    threads: int | None = None  # judged at this many torch threads only (None: any)
    precision: str = "bf16"  # judged where fastbert trained in this precision (fp32: a CPU without bf16 matmuls)

    def name(self) -> str:
        what = f"fastbert {self.precision} / {self.baseline}" if self.metric == "speedup" else \
            f"fastbert {self.precision} MFU"
        where = f"batch {self.batch}" + (f", {self.threads} threads" if self.threads else "")
        return f"{self.shape} ({where}): {what}"

    def show(self, value: float, digits: str = ".2f") -> str:
        return f"{value:{digits}}x" if self.metric == "speedup" else f"{100 * value:.0f}%"


# hf-bf16-pad8 is the fair bf16 baseline (fewer distinct matmul shapes); plain hf-bf16 is held to the same target.
CPU_TARGETS = (
    Target("minilm", "speedup", 8.0, "hf-fp32"),
    Target("minilm", "speedup", 5.0, "hf-bf16"),
    Target("minilm", "speedup", 5.0, "hf-bf16-pad8"),
    Target("bert-base", "speedup", 6.0, "hf-fp32"),
    Target("bert-base", "speedup", 3.5, "hf-bf16"),
    Target("bert-base", "speedup", 3.5, "hf-bf16-pad8"),
    Target("minilm", "mfu", 0.5, threads=2),
    Target("bert-base", "mfu", 0.5, threads=2),
    # a CPU without bf16 matmuls (AVX2 only): fastbert trains in fp32, the matmuls the same as Hugging Face's; what
    # is left to gain is the padding it does not compute and its fused ops and optimizer
    Target("minilm", "speedup", 2.0, "hf-fp32", precision="fp32"),
    Target("bert-base", "speedup", 1.7, "hf-fp32", precision="fp32"),
    Target("minilm", "mfu", 0.5, threads=2, precision="fp32"),
    Target("bert-base", "mfu", 0.5, threads=2, precision="fp32"),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    target: Target
    median: float | None  # None: not judged (why in `note`)
    spread: float = 0.0  # interquartile range of the per-round values
    rounds: int = 0
    note: str = ""

    @property
    def met(self) -> bool:
        return self.median is not None and self.median >= self.target.minimum

    @property
    def failed(self) -> bool:
        """Missed by more than the measured spread: what fails the benchmark."""
        return self.median is not None and self.median + self.spread < self.target.minimum

    def line(self) -> str:
        t = self.target
        head = f"{t.name()} >= {t.show(t.minimum, 'g')}"
        if self.median is None:
            return f"{head}: not judged ({self.note})"
        status = "met" if self.met else "NOT met" if self.failed else "NOT met (within the spread)"
        how = f"IQR {t.show(self.spread)} over {self.rounds} rounds" if self.rounds > 1 else "no per-round spread"
        return f"{head}: {t.show(self.median)} ({how}{f'; {self.note}' if self.note else ''}): {status}"


def spread(values: list[float]) -> float:
    """Interquartile range (inclusive quartiles); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def judge(target: Target, values: list[float], note: str = "") -> Verdict:
    """The target against per-round values of its metric: their median and spread."""
    return Verdict(target, statistics.median(values), spread(values), len(values), note)


def round_values(target: Target, record: dict) -> list[float] | None:
    """Per-round values of the target's metric in a speedup record (test_train_speedup's extra_info); None when
    the record lacks them. Records written before per-round times were kept give one value: the medians'."""
    times = record.get("round_s") or {v: [m] for v, m in record.get("median_s", {}).items()}
    ours = times.get("fastbert")
    if not ours:
        return None
    if target.metric == "speedup":
        base = times.get(target.baseline)
        return [b / f for b, f in zip(base, ours)] if base else None
    peak = record.get("matmul_tflops", record.get("bf16_matmul_tflops"))  # older records: bf16 only
    flops = record.get("round_flops") or [record.get("model_flops")] * len(ours)
    return [fl / t / 1e12 / peak for fl, t in zip(flops, ours)] if peak and all(flops) else None


def missed(record: dict) -> list[str]:
    """The targets a record misses by more than the measured spread, one line each: what fails the benchmark."""
    return [v.line() for v in verdicts(record) if v.failed]


def verdicts(record: dict, threads: int | None = None) -> list[Verdict]:
    """Every CPU target of the record's shape judged on it. threads: the run's torch threads where the record
    does not say."""
    out = []
    batch = record.get("batch") or record["sequences"] // record["batches"]
    threads = record.get("threads", threads)
    precision = record.get("precision", "bf16")
    for t in (t for t in CPU_TARGETS if t.shape == record["shape"] and t.precision == precision):
        values = round_values(t, record)
        if batch != t.batch:
            out.append(Verdict(t, None, note=f"measured on batches of {batch}"))
        elif t.threads and threads != t.threads:
            out.append(Verdict(t, None, note=f"measured at {threads} threads"))
        elif values is None:
            out.append(Verdict(t, None, note="not measured in this run"))
        else:
            out.append(judge(t, values, "" if "round_s" in record else "medians only: an older record"))
    return out
