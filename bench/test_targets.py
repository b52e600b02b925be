"""The CPU targets' judging rule (bench/targets.py) on made-up per-round times: runs in quick mode, no timing."""
import pytest

from bench import targets
from bench.rounds import SPEEDUP_VARIANTS, speedup_record
from bench.targets import CPU_TARGETS, Target, judge, missed, spread, verdicts
from bench.workload import model_config, real_batches

SPEED = Target("minilm", "speedup", 5.0, "hf-bf16")


def test_spread_is_the_interquartile_range():
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)
    assert spread([5.0, 1.0, 3.0]) == pytest.approx(2.0)  # order does not matter: quartiles 2 and 4
    assert spread([4.2]) == 0.0


@pytest.mark.parametrize("values,met,failed", [
    ([5.0, 5.2, 4.9, 5.4, 5.1], True, False),  # median 5.1 >= 5
    ([4.6, 4.9, 5.3, 4.8, 5.2], False, False),  # median 4.9, IQR 0.4: missed within the spread
    ([4.5, 4.6, 4.4, 4.7, 4.5], False, True),  # median 4.5 + IQR 0.1 < 5: missed by more than the spread
    ([4.9], False, True),  # one value: no spread to hide a miss
])
def test_judge_median_and_spread_against_the_target(values, met, failed):
    v = judge(SPEED, values)
    assert (v.met, v.failed) == (met, failed), v.line()
    assert v.line().endswith("met" if met else "NOT met" if failed else "NOT met (within the spread)")


def _record(tasks, tokenizer, fastbert, baselines, threads=2, batch=32):
    """A speedup record of 5 timed rounds with these per-round seconds (fastbert: a list, baselines: name -> list)."""
    rounds = [real_batches(tasks, tokenizer, 3, batch, seed=i) for i in range(5)]
    times = {"fastbert": fastbert, **baselines}
    record = speedup_record("minilm", model_config("minilm"), rounds, times, matmul_tflops=1.0)
    return {**record, "threads": threads}


def test_record_per_round_ratios_decide_which_targets_fail(tasks, tokenizer):
    ours = [1.0, 1.1, 0.9, 1.0, 1.2]
    record = _record(tasks, tokenizer, ours, {
        "hf-fp32": [9.0, 9.9, 8.1, 9.0, 10.8],  # 9x every round: met
        "hf-bf16": [4.0, 4.4, 3.6, 4.0, 4.8],  # 4x every round, no spread: fails
        "hf-bf16-pad8": [4.6, 5.6, 4.5, 5.3, 6.0]})  # ratios 4.6 5.09 5 5.3 5: median 5.0: met
    by_baseline = {v.target.baseline: v for v in verdicts(record)}
    assert by_baseline["hf-fp32"].met and by_baseline["hf-fp32"].median == pytest.approx(9.0)
    assert by_baseline["hf-bf16"].failed and by_baseline["hf-bf16"].spread == pytest.approx(0.0)
    assert by_baseline["hf-bf16-pad8"].met
    mfu = by_baseline[None]
    flops = record["round_flops"]
    assert mfu.median == pytest.approx(sorted(f / t / 1e12 for f, t in zip(flops, ours))[2])
    assert mfu.failed  # a one-layer quick-mode model does nowhere near 50% of 1 TFLOP/s in 1 s
    assert missed(record) == [by_baseline["hf-bf16"].line(), mfu.line()]  # what fails test_train_speedup


def test_targets_are_not_judged_on_other_batch_sizes_threads_or_missing_baselines(tasks, tokenizer):
    record = _record(tasks, tokenizer, [1.0] * 5, {"hf-fp32": [2.0] * 5}, threads=4)
    notes = {v.target.baseline: v for v in verdicts(record)}
    assert notes["hf-fp32"].failed  # 2x < 8x
    assert notes["hf-bf16"].median is None and "not measured" in notes["hf-bf16"].line()
    assert notes[None].median is None and "4 threads" in notes[None].line()
    small = _record(tasks, tokenizer, [1.0] * 5, {"hf-fp32": [9.0] * 5}, batch=4)
    assert all(v.median is None and "batches of 4" in v.note for v in verdicts(small))


def test_older_records_are_judged_on_their_medians():
    record = {"shape": "bert-base", "rounds": 5, "batches": 3, "sequences": 96, "model_flops": 3e12,
              "median_s": {"fastbert": 2.0, "hf-fp32": 13.0, "hf-bf16": 6.0}, "bf16_matmul_tflops": 2.0}
    by_baseline = {v.target.baseline: v for v in verdicts(record, threads=2)}
    assert by_baseline["hf-fp32"].met and by_baseline["hf-fp32"].median == pytest.approx(6.5)
    assert by_baseline["hf-bf16"].failed and "medians only" in by_baseline["hf-bf16"].line()
    assert by_baseline[None].median == pytest.approx(0.75) and by_baseline[None].met


def test_every_target_is_measured_by_the_interleaved_comparison():
    assert {t.baseline for t in CPU_TARGETS if t.metric == "speedup"} <= set(SPEEDUP_VARIANTS)
    assert {t.shape for t in CPU_TARGETS} == {"minilm", "bert-base"}
    assert targets.Target.__dataclass_params__.frozen
