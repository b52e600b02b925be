"""fastbert's CPU training speed-up over Hugging Face, in one process: every variant's round (the same real
SST / Quora / STS batches) in turn, the order rotated every round, repeated; the median round time per
variant; ratios of medians. On a shared machine, interleaving the variants spreads the noise over all alike.
Every round draws new batches, as training does (new token counts: a bf16 matmul on CPU pays to build a
kernel for each new shape); --repeat runs the same batches every round instead.

  python -m bench.cpu_speedup [--shape minilm|bert-base] [--batch 32] [--batches 3] [--rounds 7] [--threads 1]
      [--variants fastbert,hf-fp32,hf-bf16,hf-bf16-pad8] [--repeat]
"""
import argparse

import torch

from bench.machine import git_state, matmul_tflops
from bench.rounds import batch_rounds, interleaved_train_rounds, speedup_record, speedup_variants
from bench.targets import verdicts
from bench.workload import DATA_DIR, ROOT, Runner, load_tasks, model_weights, timed_skip
from fastbert import BertTokenizer, malloc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="fastbert,fastbert-bf16-autocast,fastbert-fp32,hf-fp32,hf-bf16,hf-bf16-pad8")
    ap.add_argument("--repeat", action="store_true", help="the same batches every round")
    args = ap.parse_args()
    git = git_state(ROOT)
    print(f"commit {git['commit'][:10]}" + (" + UNCOMMITTED CHANGES: no commit reproduces this" * git["dirty"]))
    torch.set_num_threads(args.threads)
    malloc.configure("keep")  # the driver's default; process-wide, so every variant runs under it
    cpu = torch.device("cpu")
    rounds = batch_rounds(load_tasks(DATA_DIR), BertTokenizer.from_pretrained(), args.rounds, args.batches,
                          args.batch, seed=1, device=cpu, repeat=args.repeat)
    weights = model_weights(args.shape)
    names = speedup_variants(cpu, args.variants.split(","))
    left_out = [v for v in args.variants.split(",") if v not in names]
    if left_out:
        print(f"left out: {', '.join(left_out)}: {timed_skip(left_out[0], cpu)}")
    runners = {v: Runner(v, args.shape, cpu, weights=weights) for v in names}
    times = interleaved_train_rounds(runners, rounds, cpu)
    precision = runners["fastbert"].precision if "fastbert" in runners else "bf16"
    peak = matmul_tflops(cpu, torch.float32 if precision == "fp32" else torch.bfloat16, quick=False)
    show(speedup_record(args.shape, next(iter(runners.values())).config, rounds[1:], times, peak,
                        "fp32" if precision == "fp32" else "bf16"), args.repeat)


def show(r: dict, repeat: bool) -> None:
    """Per variant: ms per step, MFU, speed-ups over the Hugging Face variants; then the CPU targets."""
    med, peak = r["median_s"], r["matmul_tflops"]
    print(f"{r['shape']}, {r['batches']} batches x {r['batch']} sequences (median {r['real_tokens']:.0f} real "
          f"tokens), {r['rounds']} rounds of {'the same' if repeat else 'new'} batches, {r['threads']} threads; "
          f"fastbert in {r['precision']}, {r['precision']} matmul rate {peak:.2f} TFLOP/s")
    for v, m in med.items():
        ratios = ", ".join(f"{med[o] / m:.2f}x {o}" for o in med if o != v and o.startswith("hf"))
        mfu = r["model_flops"] / m / 1e12 / peak
        print(f"  {v:24s} {1e3 * m / r['batches']:8.1f} ms/step  MFU {100 * mfu:5.1f}%  {ratios}")
    if "fastbert" in med:
        print("targets (bench/targets.py; median and IQR of the per-round values):")
        for verdict in verdicts(r):
            print(f"  {verdict.line()}")


if __name__ == "__main__":
    main()
