"""Scaling efficiency on one CPU machine: training tokens/s of 1 process x T threads against T ranks x 1
thread (torchrun, gloo), on the same multitask run (same global batches, same steps).

  python -m bench.distributed_scaling [--ranks 2] [--steps 60] [--warmup 10] [--shape minilm]
      [--rounds 3] [--smoke]

Each round runs both variants, in alternating order; a variant's rate is the tokens of steps warmup+1..steps
over their seconds, from the run's metrics.jsonl (tokens_per_s of every logged step, all ranks' tokens);
the report is the median over rounds and efficiency = (T ranks x 1 thread) / (1 process x T threads).
Run it on a quiet machine only (other processes' load makes the numbers meaningless); --smoke checks
that both variants run (a tiny encoder, 3 steps) and prints no rates. A timed run writes its record to
bench/results/scaling/<shape>.json (commit, machine, per-round rates), which bench/report.py renders into
BENCHMARKS.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model.hidden_size", "32", "--model.num_hidden_layers", "2", "--model.num_attention_heads", "2",
        "--model.intermediate_size", "64"]


def command(ranks: int, threads: int, run_dir: str, args) -> list[str]:
    """The training command: torchrun with `ranks` ranks (or plain python for one), `threads` each."""
    train = ["-m", "fastbert.train", "multitask", "--max_steps", str(args.steps), "--log_every", "1",
             "--eval_every", str(10 ** 9), "--progress", "false", "--threads", str(threads), "--run_dir", run_dir]
    if args.shape == "bert-base":
        train += ["--init", args.init] if args.init else []
    if args.smoke:
        train += TINY + ["--train_limit", "64", "--eval_limit", "16"]
    if ranks == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
            "127.0.0.1", "--master_port", str(args.port), *train]


def rate(run_dir: str, warmup: int) -> float:
    """Tokens per second over the logged steps after `warmup` (each record covers one step)."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    per_step = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r["step"] > warmup]
    if not per_step:
        raise SystemExit(f"{run_dir}: no logged steps after step {warmup} (raise --steps)")
    return len(per_step) / sum(1.0 / r for r in per_step)  # harmonic mean: equal token counts per step assumed


def run(ranks: int, threads: int, args, tmp: str, tag: str) -> str:
    run_dir = os.path.join(tmp, tag)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(command(ranks, threads, run_dir, args), cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tag} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return run_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shape", default="minilm", choices=["minilm", "bert-base"])
    ap.add_argument("--init", default=None, help="bert-base: a Hugging Face BERT directory")
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--smoke", action="store_true", help="a tiny encoder, 3 steps, no rates printed")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.rounds = 3, 0, 1
    variants = {f"1x{args.ranks}": (1, args.ranks), f"{args.ranks}x1": (args.ranks, 1)}
    rates = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for v in order:
                ranks, threads = variants[v]
                rates[v].append(rate(run(ranks, threads, args, tmp, f"{v}-{r}"), args.warmup))
    if args.smoke:
        print("smoke: both variants ran")
        return
    one, many = (statistics.median(rates[v]) for v in variants)
    print(f"1 process x {args.ranks} threads: {one:,.0f} tokens/s; {args.ranks} ranks x 1 thread: {many:,.0f} "
          f"tokens/s; efficiency {many / one:.2f} (rounds: {rates})")
    write_record(args, rates, one, many)


def write_record(args, rates: dict, one: float, many: float) -> None:
    sys.path.insert(0, ROOT)
    from bench.machine import cpu_model, git_state

    record = {"kind": "scaling", "shape": args.shape, "ranks": args.ranks, "steps": args.steps,
              "warmup": args.warmup, "rounds": args.rounds, "tokens_per_s": rates,
              "median": {"one_process": one, "ranks": many}, "efficiency": many / one, "cpu_model": cpu_model(),
              "commit": git_state(ROOT), "datetime": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = os.path.join(ROOT, "bench", "results", "scaling", f"{args.shape}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
