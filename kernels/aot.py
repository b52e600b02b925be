"""Compile every Triton kernel variant ahead of time for real GPUs, without one, and report its resources.

    python -m fastbert.kernels.aot [--arch 80 90] [--pairwise] [--match TEXT] [--json report.json] [--jobs N]

Collects `aot_specs()` from every module of fastbert.kernels, compiles each spec with
triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)), and reads registers, stack frame and
local memory (where register spills go: a spill-free kernel has neither) from the cubin with the
cuobjdump bundled in Triton; "shared" is the shared memory Triton allocates. Integer arguments carry no
divisibility hints, so this is the code the JIT builds for sizes that are not multiples of 16: the
worst case for registers (a multiple of 16 lets it vectorise and use fewer).
--pairwise compiles an all-pairs subset instead: for each kernel, specs chosen until every pair of
parameter values (argument dtypes, constexprs, launch options) that any spec has occurs in one chosen.
Needs TRITON_INTERPRET unset or 0: the interpreter's @triton.jit functions cannot be compiled.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ARCHS = (80, 90)
_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def kernel_modules():
    """The fastbert.kernels modules that define aot_specs()."""
    import fastbert.kernels as pkg

    mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return [m for m in mods if hasattr(m, "aot_specs")]


def resources(cubin: bytes) -> dict:
    """REG / SHARED / LOCAL / STACK of the cubin's kernel, from cuobjdump --dump-resource-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    usage = dict(re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", out))
    return {"registers": int(usage["REG"]), "static_shared": int(usage["SHARED"]),
            "local_bytes": int(usage["LOCAL"]), "stack_bytes": int(usage["STACK"])}


def _compile(job):
    module, index, arch = job
    spec = importlib.import_module(module).aot_specs()[index]
    start = time.perf_counter()
    record = dict(module=module.rsplit(".", 1)[-1], kernel=spec["name"], arch=f"sm_{arch}",
                  num_warps=spec["num_warps"], num_stages=spec["num_stages"])
    try:
        kernel = triton.compile(ASTSource(spec["fn"], spec["signature"], spec["constexprs"]),
                                target=GPUTarget("cuda", arch, 32),
                                options={k: spec[k] for k in ("num_warps", "num_stages", "maxnreg") if k in spec})
        record.update(ok=True, shared=kernel.metadata.shared, **resources(kernel.asm["cubin"]))
    except Exception as e:  # report every failure, not only the first
        chain = []
        while e is not None:
            chain.append(f"{type(e).__name__}: {e}")
            e = e.__cause__
        record.update(ok=False, error="\n".join(reversed(chain))[-3000:])  # the root cause first
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _features(spec):
    """(parameter, value) pairs that make a spec: argument types, constexpr values, launch options."""
    launch = {k: spec[k] for k in ("num_warps", "num_stages", "maxnreg") if k in spec}
    return {(k, str(v)) for d in (spec["signature"], spec["constexprs"], launch) for k, v in d.items()
            if v != "constexpr"}


def pairwise(specs: list[dict]) -> list[int]:
    """Indices of specs covering, per kernel function, every pair of features some spec of it has (greedy)."""
    chosen = []
    for fn in dict.fromkeys(s["fn"] for s in specs):
        group = [i for i, s in enumerate(specs) if s["fn"] is fn]
        pairs = {i: {(a, b) for a in _features(specs[i]) for b in _features(specs[i]) if a < b} for i in group}
        todo = set().union(*pairs.values())
        while todo:
            best = max(group, key=lambda i: len(pairs[i] & todo))
            chosen.append(best)
            todo -= pairs[best]
    return sorted(chosen)


def compile_all(archs=ARCHS, jobs: int | None = None, subset: bool = False, match: str = "") -> list[dict]:
    """Compile every spec (or the pairwise subset) whose name contains `match`, for each arch."""
    work = []
    for m in kernel_modules():
        specs = m.aot_specs()
        work += [(m.__name__, i, arch) for i in (pairwise(specs) if subset else range(len(specs)))
                 if match in specs[i]["name"] for arch in archs]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [_compile(w) for w in work]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile, work, chunksize=4))


def table(records: list[dict]) -> str:
    head = f"{'kernel':<72} {'arch':<6} {'warps':>5} {'regs':>4} {'shared':>6} {'local':>5} {'s':>5}"
    lines = [head, "-" * len(head)]
    for r in records:
        if r["ok"]:
            lines.append(f"{r['kernel']:<72} {r['arch']:<6} {r['num_warps']:>5} {r['registers']:>4} "
                         f"{r['shared']:>6} {r['local_bytes']:>5} {r['seconds']:>5.2f}")
        else:
            lines.append(f"{r['kernel']:<72} {r['arch']:<6} FAILED: {r['error'].splitlines()[0][:200]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--pairwise", action="store_true", help="compile the all-pairs subset only")
    parser.add_argument("--match", default="", help="only kernels whose name contains this text")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    args = parser.parse_args(argv)
    if triton.knobs.runtime.interpret:
        sys.exit("fastbert.kernels.aot: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    start = time.perf_counter()
    records = compile_all(args.arch, args.jobs, args.pairwise, args.match)
    print(table(records))
    failed = [r for r in records if not r["ok"] or r["local_bytes"] or r["stack_bytes"]]
    print(f"{len(records)} compiles, {len(failed)} failed or spilled, {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
