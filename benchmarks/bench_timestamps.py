"""Word-boundary accuracy of trained models, side by side (the table in docs/timestamps-training.md).

For each run directory (a fine-tuned model, e.g. plain CTC, label priors, a delay penalty) and each blank
penalty asked for, it runs ``inference --timestamps`` on a split whose manifest carries the true word times
(the synthetic corpus's ``words`` column) and prints one row:

* boundary error of the **reference** transcript's forced alignment against the truth: median and mean of
  |Δ| in ms over word starts and ends pooled, and the share within 50 ms (every word scored, by position);
* the same median for the **hypothesis** (the LM decoder's if the run has ``lm/lm.arpa``, else greedy),
  on its correct words only (word-level edit alignment);
* greedy WER and LM WER (``-`` without an LM);
* training step time from the run's own logs: ``train_runtime`` minus the in-training evaluations'
  ``eval_runtime``, over the optimiser steps (``train_metrics.json``, ``log_history.json``). It is a figure
  of the machine and load the run had, not of this benchmark's.

The blank penalty (``--blank-penalty``, several values allowed) applies to decoding and alignment alike, so
its WER columns change too. Each row's full ``summary.json`` (per-voice metrics included) is kept in
``OUT/<run name>-bp<penalty>/``. The header names the CPU and the load average at start and end: timings
on a shared machine are indicative only.

Usage::

    python benchmarks/bench_timestamps.py runs/plain runs/prior-0.3 --manifest data/synthetic/test.tsv
    python benchmarks/bench_timestamps.py runs/plain --blank-penalty 0 1 2 --out /tmp/bench_ts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _machine import load_average, machine


def step_seconds(run_dir: Path) -> float | None:
    """Seconds per optimiser step of the run's training, evaluation time excluded; None without logs."""
    metrics_path, history_path = run_dir / "train_metrics.json", run_dir / "log_history.json"
    if not metrics_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_text())
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    steps = max((int(h.get("step", 0)) for h in history), default=0)
    runtime = metrics.get("train_runtime")
    if not steps or runtime is None:
        return None
    # The last entries repeat the final evaluation after train() returned; only count evaluations logged
    # before the train summary (the entry with train_runtime).
    evals = 0.0
    for h in history:
        if "train_runtime" in h:
            break
        evals += float(h.get("eval_runtime", 0.0))
    return (float(runtime) - evals) / steps


def measure(run_dir: Path, manifest: str | None, split: str, penalty: float, out: Path, batch_size: int):
    from asr_ctc.config import DecodingConfig
    from asr_ctc.inference import run_inference

    decoder = "lm" if (run_dir / "lm" / "lm.arpa").is_file() else "greedy"
    # A run trained with label priors aligns on the scores it was trained on (docs/timestamps-training.md).
    saved = run_dir / "run_config.yaml"
    config = (yaml.safe_load(saved.read_text()) or {}) if saved.is_file() else {}
    beta = float((config.get("loss") or {}).get("label_prior_beta", 0.0))
    result = run_inference(
        run_dir,
        split=split,
        manifest=manifest,
        output_dir=out,
        batch_size=batch_size,
        decoding=DecodingConfig(decoder=decoder, blank_penalty=penalty),
        timestamps=True,
        label_prior_beta=beta,
    )
    return decoder, result.summary


def row(name: str, penalty: float, decoder: str, summary: dict[str, Any], step: float | None) -> dict:
    bounds = summary.get("boundaries")
    if bounds is None:
        raise SystemExit(f"{name}: the split's manifest has no 'words' column (no true word times)")
    ref, hyp = bounds["reference"]["boundary"], bounds["hypothesis"]["boundary"]
    return {
        "run": name,
        "blank_penalty": penalty,
        "ref_median_ms": ref["median_ms"],
        "ref_mean_ms": ref["mean_ms"],
        "ref_within_50ms": ref["within_50ms"],
        "hyp_median_ms": hyp["median_ms"],
        "hyp_words_scored": f"{bounds['hypothesis']['words_matched']}/{bounds['hypothesis']['words_truth']}",
        "greedy_wer": summary["greedy"]["wer"],
        "lm_wer": summary["lm"]["wer"] if decoder == "lm" else None,
        "step_s": step,
    }


def fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        "| run | blank pen. | median ms (ref) | mean ms (ref) | within 50 ms (ref) | median ms (hyp, correct "
        "words) | greedy WER % | LM WER % | s/step |"
    )
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['blank_penalty']:g} | {fmt(r['ref_median_ms'], '.1f')} | "
            f"{fmt(r['ref_mean_ms'], '.1f')} | {fmt(r['ref_within_50ms'], '.1f', 100)}% | "
            f"{fmt(r['hyp_median_ms'], '.1f')} ({r['hyp_words_scored']}) | "
            f"{fmt(r['greedy_wer'], '.2f', 100)} | {fmt(r['lm_wer'], '.2f', 100)} | "
            f"{fmt(r['step_s'], '.3f')} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="fine-tuned run directories")
    parser.add_argument("--manifest", help="test manifest with a words column (default: each run's --split)")
    parser.add_argument("--split", default="test", help="config split when no --manifest (default: test)")
    parser.add_argument("--blank-penalty", type=float, nargs="+", default=[0.0], help="values to measure")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_timestamps"), help="per-row outputs")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            parser.error(f"runs: not a directory: {run}")

    print(f"# bench_timestamps: {machine()}")
    print(f"# load average at start: {load_average()}; torch threads {torch.get_num_threads()}")
    rows = []
    for run in args.runs:
        step = step_seconds(run)
        for penalty in args.blank_penalty:
            out = args.out / f"{run.name}-bp{penalty:g}"
            start = time.perf_counter()
            decoder, summary = measure(run, args.manifest, args.split, penalty, out, args.batch_size)
            rows.append(row(run.name, penalty, decoder, summary, step))
            seconds = time.perf_counter() - start
            print(f"# {run.name}, blank penalty {penalty:g}: {seconds:.1f} s", file=sys.stderr)
    print_table(rows)
    print(f"# load average at end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
