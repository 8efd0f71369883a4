#!/usr/bin/env bash
# Fresh machine -> virtual environment -> synthetic corpus -> fine-tuning -> inference with WER.
# The README's demo command. Extra arguments are config overrides for the fine-tuning step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[lm]"
# Timings on a shared machine mean little without the load next to them.
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
.venv/bin/python scripts/make_synthetic_corpus.py --out-dir data/synthetic --num-utterances 14250 --num-dev 500 --num-test 1000 --seed 0
.venv/bin/python scripts/finetune.py --config configs/synthetic.yaml --overwrite "$@"
# Greedy and lexicon + 3-gram LM side by side; the LM weights are tuned on 250 dev utterances first.
.venv/bin/python scripts/inference.py --model runs/synthetic --split test --decoder lm --tune-lm \
  --tune-utterances 250
echo "demo wall time (corpus + training + inference): $(( $(date +%s) - start )) s"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
