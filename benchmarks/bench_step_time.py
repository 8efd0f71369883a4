"""Step time of each CTC loss variant against plain CTC, interleaved and repeated; equal-wall-time steps.

A variant that wins at equal steps but costs more per step has to be compared at equal wall time: its
steps cut to ``steps x (plain's step time / its step time)``. One timing per variant is not enough for
that cut on a shared CPU, where a run of the same configuration moves by 10% from one run to the next. So
this benchmark runs the variants in turn (plain, A, B, plain, A, B, ...: a slow spell hits every variant of
a round alike), ``--repeats`` rounds, each a fresh short fine-tuning of the config (same seed and data
order, so the same batches), and times every step with a Trainer callback.

Per run, the step time is the mean interval between consecutive step starts after ``--warmup`` steps (the
mean, not the median: wall time is the sum of the steps, long batches included); it includes data loading,
forward, loss, backward and the optimiser. Per variant the table gives the median over rounds, and the ratio
to plain CTC paired within each round (median over rounds, with the lowest and highest), and the steps that
give ``--budget-steps`` of plain CTC's wall time.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_step_time.py --corpus data/synthetic \\
        --variants plain label_smoothing=label_smoothing:0.1 max_entropy=max_entropy:0.1
    # a quick check that it runs (tiny model, a few steps)
    python benchmarks/bench_step_time.py --corpus /tmp/corpus --tiny --steps 8 --warmup 2 --repeats 1
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from _machine import load_average, machine
from bench_variants import DEFAULT_VARIANTS, add_run_arguments, parse_variant, run_overrides
from transformers import TrainerCallback

from asr_ctc.config import load_config


class StepTimer(TrainerCallback):
    """Records ``time.perf_counter()`` at the start of every optimiser step."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())  # closes the last step's interval


def step_time(starts: list[float], warmup: int) -> float:
    """Mean seconds per step from step start times (the last entry: the end of training), after ``warmup``.

    Raises:
        ValueError: fewer than two intervals left after the warmup.
    """
    intervals = [b - a for a, b in zip(starts[warmup:-1], starts[warmup + 1 :], strict=True)]
    if len(intervals) < 2:
        raise ValueError(f"--steps: expected more than --warmup + 1 steps, got {len(starts) - 1} steps")
    return statistics.fmean(intervals)


def time_variant(name: str, loss_overrides: list[str], args: argparse.Namespace, out: Path) -> float:
    """One short fine-tuning of the variant: its mean step time in seconds."""
    from asr_ctc.finetune import run_finetune

    timer = StepTimer()
    cfg = load_config(args.config, run_overrides(name, loss_overrides, args, args.corpus, out))
    run_finetune(cfg, overwrite=True, callbacks=[timer])
    return step_time(timer.starts, args.warmup)


def summarise(times: dict[str, list[float]], budget_steps: int) -> list[dict[str, Any]]:
    """Per variant: median step time over rounds, the round-paired ratio to the first variant, and the
    steps that match ``budget_steps`` of the first variant's wall time."""
    base = next(iter(times.values()))
    rows = []
    for name, seconds in times.items():
        ratios = [s / b for s, b in zip(seconds, base, strict=True)]
        ratio = statistics.median(ratios)
        rows.append(
            dict(
                variant=name,
                runs=seconds,
                step_s=statistics.median(seconds),
                ratio=ratio,
                ratio_low=min(ratios),
                ratio_high=max(ratios),
                equal_wall_steps=round(budget_steps / ratio),
            )
        )
    return rows


def table(rows: list[dict[str, Any]], budget_steps: int) -> str:
    lines = [
        f"| variant | s/step, each round | s/step (median) | ratio to {rows[0]['variant']} (min-max) "
        f"| steps for {budget_steps} of its wall time |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        each = ", ".join(f"{s:.3f}" for s in r["runs"])
        lines.append(
            f"| {r['variant']} | {each} | {r['step_s']:.3f} | {r['ratio']:.3f} "
            f"({r['ratio_low']:.3f}-{r['ratio_high']:.3f}) | {r['equal_wall_steps']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="name=key:value,...; first: the base"
    )
    parser.add_argument("--steps", type=int, default=250, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=30, help="first steps left out of each run's mean")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants")
    parser.add_argument("--budget-steps", type=int, default=1600, help="the base variant's steps to match")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_step_time"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for flag, value, least in (("--steps", args.steps, args.warmup + 2), ("--repeats", args.repeats, 1)):
        if value < least:
            parser.error(f"{flag}: expected >= {least}, got {value}")
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as exc:
        parser.error(str(exc))

    before = load_average()
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):
        for name, overrides in variants:  # interleaved: a slow spell hits every variant of the round
            times[name].append(time_variant(name, overrides, args, args.out))
    print(table(summarise(times, args.budget_steps), args.budget_steps))
    print(
        f"\n{args.repeats} rounds of {args.steps} steps (first {args.warmup} left out); {machine()}; "
        f"load average {before} before, {load_average()} after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
