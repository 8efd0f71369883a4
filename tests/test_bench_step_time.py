"""benchmarks/bench_step_time.py: the step-time arithmetic, and a tiny run that times real Trainer steps."""

from __future__ import annotations

import pytest
from helpers import load_benchmark


def test_step_time_is_the_mean_interval_after_the_warmup():
    bench = load_benchmark("bench_step_time")
    # Step starts at 0, 10, 11, 13, 16; training ends at 20: steps of 10, 1, 2, 3, 4 s.
    assert bench.step_time([0, 10, 11, 13, 16, 20], warmup=1) == pytest.approx(2.5)
    assert bench.step_time([0, 10, 11, 13, 16, 20], warmup=0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="--steps: expected more than --warmup"):
        bench.step_time([0, 1, 2], warmup=1)


def test_ratios_are_paired_within_a_round_and_give_the_equal_wall_time_steps():
    bench = load_benchmark("bench_step_time")
    # Round 2 is slow for everyone: paired ratios see through it, a ratio of medians would not.
    times = {"plain": [0.20, 0.40, 0.22], "slow": [0.25, 0.48, 0.242]}
    rows = bench.summarise(times, budget_steps=1600)
    assert [r["variant"] for r in rows] == ["plain", "slow"]
    assert rows[0]["ratio"] == 1 and rows[0]["equal_wall_steps"] == 1600
    assert rows[1]["ratio"] == pytest.approx(1.2)  # the median of 1.25, 1.2, 1.1
    assert (rows[1]["ratio_low"], rows[1]["ratio_high"]) == pytest.approx((1.1, 1.25))
    assert rows[1]["equal_wall_steps"] == round(1600 / 1.2)
    assert rows[1]["step_s"] == pytest.approx(0.25)
    assert "| slow | 0.250, 0.480, 0.242 | 0.250 | 1.200 (1.100-1.250) | 1,333 |" in bench.table(rows, 1600)


def test_a_tiny_run_times_every_trainer_step(tiny_corpus, tmp_path, capsys):
    bench = load_benchmark("bench_step_time")
    argv = ["--corpus", str(tiny_corpus), "--tiny", "--steps", "6", "--warmup", "1", "--repeats", "2"]
    argv += ["--out", str(tmp_path), "--variants", "plain", "ls=label_smoothing:0.1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| plain |", "| ls |"))]
    assert len(rows) == 2 and rows[0].endswith("| 1.000 (1.000-1.000) | 1,600 |")
    assert "2 rounds of 6 steps (first 1 left out)" in out and "load average" in out


def test_bad_arguments_name_the_flag(capsys):
    bench = load_benchmark("bench_step_time")
    with pytest.raises(SystemExit):
        bench.main(["--corpus", "x", "--steps", "5", "--warmup", "4"])
    assert "--steps: expected >= 6, got 5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--corpus", "x", "--variants", "plain", "bad=oops"])
    assert "--variants 'bad=oops': expected name=key:value" in capsys.readouterr().err
