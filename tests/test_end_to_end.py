"""The whole job on a tiny corpus: fine-tune a few steps, then decode and score with the inference script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, **kw
    )


def test_finetune_then_inference_scripts(tiny_corpus, tmp_path):
    cfg = tiny_run_config(tiny_corpus, tmp_path / "run", max_steps=20, learning_rate=5e-3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    done = _run(["scripts/finetune.py", "--config", str(tmp_path / "c.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished:" in done.stdout

    run = tmp_path / "run"
    history = json.loads((run / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # it learned something
    for name in (
        "model.safetensors",
        "config.json",
        "vocab.json",
        "run_config.yaml",
        "training_curves.png",
        "train_metrics.json",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob("**/*.tmp"))

    done = _run(["scripts/inference.py", "--model", str(run), "--split", "test"])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "inference_test" / "summary.json").read_text())
    assert summary["num_utterances"] == len((tiny_corpus / "test.tsv").read_text().splitlines()) - 1
    assert 0.0 <= summary["cer"] and 0.0 <= summary["wer"]
    assert f"WER {100 * summary['wer']:.2f}%" in done.stdout
    rows = (run / "inference_test" / "transcripts.tsv").read_text().splitlines()
    assert rows[0] == "id\treference\thypothesis\terrors\tref_words\tgreedy"
    assert len(rows) == summary["num_utterances"] + 1
