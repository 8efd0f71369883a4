"""Kill and resume: a run killed (SIGKILL) after a checkpoint, then resumed, ends like an unbroken one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_run_config

from asr_ctc.config import RUN_CONFIG
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


# -- resume in any epoch --------------------------------------------------------------------------------
# 96 training utterances in batches of 8: 12 steps an epoch; 30 steps span three epochs. A checkpoint every
# 4 steps gives one inside the first epoch (4), one exactly at an epoch boundary (12) and one inside a later
# epoch (20). Each resume must log the unbroken run's loss at every step, for every training order.
EPOCH_STEPS, LONG_STEPS = 12, 30


@pytest.fixture(scope="module")
def corpus96(tmp_path_factory):
    from asr_ctc.corpus.synthetic import make_synthetic_corpus

    out = tmp_path_factory.mktemp("corpus96")
    summary = make_synthetic_corpus(
        out, num_utterances=120, seed=1, dev_fraction=0.1, test_fraction=0.1, num_workers=1, progress=False
    )
    assert summary["splits"]["train"]["utterances"] == 96
    return out


def _long_run_config(corpus, out, strategy, **training):
    raw = tiny_run_config(
        corpus,
        out,
        max_steps=LONG_STEPS,
        save_steps=4,
        eval_strategy="no",
        train_sampling_strategy=strategy,
        **training,
    )
    raw["data"].pop("eval")
    raw["model"].update(hidden_dropout=0.1, mask_time_prob=0.05, mask_time_length=2)
    return raw


def _run(raw, out, resume=False):
    from asr_ctc.config import config_from_dict
    from asr_ctc.finetune import run_finetune

    torch.manual_seed(1234)  # a global RNG state unlike the first run's: the order must not depend on it
    run_finetune(config_from_dict({**raw, "output_dir": str(out)}), resume=resume)
    history = json.loads((out / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


# The random order with accelerate's seedable sampler off, too: the order must not rest on that option.
ORDERS = {
    "group_by_length": {},
    "random": {},
    "random-unseedable": {"accelerator_config": {"use_seedable_sampler": False}},
}


@pytest.fixture(scope="module", params=list(ORDERS))
def unbroken_run(request, corpus96, tmp_path_factory):
    """One unbroken run per training order, shared by the three resumes."""
    out = tmp_path_factory.mktemp(f"unbroken-{request.param}") / "run"
    raw = _long_run_config(corpus96, out, request.param.split("-")[0], **ORDERS[request.param])
    losses = _run(raw, out)
    assert sorted(losses) == list(range(1, LONG_STEPS + 1))
    return raw, out, losses


@pytest.mark.parametrize("step", [4, EPOCH_STEPS, 20], ids=["in-epoch-1", "epoch-boundary", "in-epoch-2"])
def test_resume_in_any_epoch_matches_unbroken_run_at_every_step(unbroken_run, step, tmp_path):
    raw, whole, whole_losses = unbroken_run
    # The run as a kill after checkpoint-{step} leaves it: the run config and the checkpoints up to then.
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(whole / RUN_CONFIG, cut / RUN_CONFIG)
    shutil.copytree(whole / f"checkpoint-{step}", cut / f"checkpoint-{step}")
    resumed = _run(raw, cut, resume=True)
    assert sorted(resumed) == list(range(1, LONG_STEPS + 1))  # the first {step} from the checkpoint's log
    steps = list(range(step + 1, LONG_STEPS + 1))
    np.testing.assert_allclose(
        [resumed[s] for s in steps], [whole_losses[s] for s in steps], rtol=1e-5, err_msg=f"steps {steps}"
    )
