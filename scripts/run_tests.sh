#!/usr/bin/env bash
# Fresh machine -> virtual environment -> lint -> tests. The README's test command; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: on a CPU machine this is the local CPU wheel, and the package's own `torch>=2.4`
# is then satisfied without pulling the CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/ruff check asr_ctc scripts tests benchmarks
.venv/bin/python -m pytest "$@"
