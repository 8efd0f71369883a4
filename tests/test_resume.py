"""Kill and resume: a run killed (SIGKILL) after a checkpoint, then resumed, ends like an unbroken one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from helpers import tiny_run_config

from asr_ctc.finetune import latest_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 40


def _cmd(cfg_path, *extra):
    return [sys.executable, "scripts/finetune.py", "--config", str(cfg_path), *extra]


def _history(out):
    history = json.loads((out / "log_history.json").read_text())
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}
    final_eval = [e for e in history if "eval_loss" in e][-1]
    return losses, final_eval


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_corpus, tmp_path):
    # Dropout and SpecAugment-style masking on: resuming must restore the RNG states too, not only weights.
    cfg = tiny_run_config(tiny_corpus, tmp_path / "unused", max_steps=STEPS, save_steps=10, eval_steps=STEPS)
    cfg["model"].update(hidden_dropout=0.1, mask_time_prob=0.05, mask_time_length=2)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    whole = tmp_path / "whole"
    done = subprocess.run(
        _cmd(cfg_path, f"output_dir={whole}"), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(cfg_path, f"output_dir={killed}"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 240
    while not (killed.exists() and latest_complete_checkpoint(killed)):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    ckpt = latest_complete_checkpoint(killed)
    assert ckpt is not None and int(ckpt.rsplit("-", 1)[1]) < STEPS, "the kill came too late to test a resume"
    assert not (killed / "log_history.json").exists()  # the run really was cut short
    assert not list(killed.glob("*.tmp")) and not list(killed.glob(".*.tmp"))
    yaml.safe_load((killed / "run_config.yaml").read_text())  # whole, not half a file

    done = subprocess.run(
        _cmd(cfg_path, f"output_dir={killed}"), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 2 and "already holds a run" in done.stderr
    done = subprocess.run(
        _cmd(cfg_path, f"output_dir={killed}", "--resume"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    whole_losses, whole_eval = _history(whole)
    resumed_losses, resumed_eval = _history(killed)
    assert sorted(resumed_losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [resumed_losses[s] for s in range(1, STEPS + 1)],
        [whole_losses[s] for s in range(1, STEPS + 1)],
        rtol=1e-5,
    )
    assert resumed_eval["step"] == whole_eval["step"] == STEPS
    np.testing.assert_allclose(resumed_eval["eval_loss"], whole_eval["eval_loss"], rtol=1e-5)
    assert resumed_eval["eval_wer"] == whole_eval["eval_wer"]
