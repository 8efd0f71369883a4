"""Multi-process training (DDP over gloo on the CPU) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import tiny_run_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

LAUNCHERS = {
    "single": [sys.executable],
    # accelerate's own --cpu launcher runs one process unless MPI is set up (--mpirun_hostfile); its
    # torch.distributed path is --multi_gpu, which with training.use_cpu=true runs DDP over gloo on the CPU.
    "accelerate": [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
    "torchrun": [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533"],
}


def _losses(launcher, cfg_path, out, batch, impl, reduction, overrides=()):
    cmd = [
        *LAUNCHERS[launcher],
        "scripts/finetune.py",
        "--config",
        str(cfg_path),
        f"output_dir={out}",
        f"training.per_device_train_batch_size={batch}",
        f"loss.impl={impl}",
        f"loss.reduction={reduction}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("finished:") == 1  # only the main process reports (and writes)
    history = json.loads((out / "log_history.json").read_text())
    return [e["loss"] for e in history if "loss" in e]


def one_and_two_processes(cfg, tmp_path, impl="custom", reduction="mean", launcher="torchrun", overrides=()):
    """The logged losses of the raw run config ``cfg`` on one process with a batch of 8 (``tmp_path/one``)
    and on two with 4 + 4 (``tmp_path/two``): the same global batch, split differently."""
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    one = _losses("single", cfg_path, tmp_path / "one", 8, impl, reduction, overrides)
    two = _losses(launcher, cfg_path, tmp_path / "two", 4, impl, reduction, overrides)
    return one, two


@pytest.mark.parametrize(
    ("launcher", "impl", "reduction"),
    [
        ("accelerate", "custom", "mean"),
        ("accelerate", "torch", "mean"),
        ("accelerate", "builtin", "mean"),
        ("accelerate", "reference", "mean"),
        ("torchrun", "custom", "token_mean"),
        ("torchrun", "custom", "sum"),
        ("torchrun", "builtin", "sum"),
    ],
)
def test_two_processes_match_one_process_with_the_same_global_batch(
    tiny_corpus, tmp_path, launcher, impl, reduction
):
    # Sequential batches, no dropout or masking: the only difference between the runs is how the global
    # batch of 8 is split (8 on one process, or 4 + 4) and how the loss is normalised across processes.
    cfg = tiny_run_config(
        tiny_corpus,
        tmp_path / "unused",
        max_steps=3,
        train_sampling_strategy="sequential",
        eval_strategy="no",
        save_strategy="no",
    )
    one, two = one_and_two_processes(cfg, tmp_path, impl, reduction, launcher)
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, rtol=1e-4)
    shutil.rmtree(tmp_path / "one")


def test_two_processes_build_each_index_once(tiny_corpus, tmp_path):
    # A fresh index cache: rank 0 builds each table under main_process_first, rank 1 then maps it.
    cfg = tiny_run_config(tiny_corpus, tmp_path / "run", max_steps=1, eval_strategy="no", save_strategy="no")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASR_CTC_CACHE": str(tmp_path / "cache")}
    cmd = [*LAUNCHERS["torchrun"], "scripts/finetune.py", "--config", str(cfg_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    log = done.stdout + done.stderr
    for table in ("train index", "train labels", "eval index", "eval labels"):
        assert log.count(f"built {table}") == 1, table
        assert log.count(f"reusing {table}") == 1, table  # the second rank
