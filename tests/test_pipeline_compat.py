"""A run directory and each ``checkpoint-N`` in it load in plain ``transformers.pipeline``.

The pipeline runs in a subprocess that never imports asr_ctc (asserted there), so what is checked is the
saved files alone: config, weights, tokenizer and feature extractor. Its transcripts must equal the greedy
output of ``asr_ctc.inference`` on the same test utterances. The audio is handed over as arrays read with
soundfile (``{"raw": ..., "sampling_rate": ...}``), so the pipeline needs no torchcodec/FFmpeg decoder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_run_config

from asr_ctc.config import config_from_dict
from asr_ctc.data.manifest import read_manifest
from asr_ctc.finetune import run_finetune
from asr_ctc.inference import run_inference

# Runs in the child: plain transformers + soundfile; prints {id: transcript} as JSON.
PIPELINE_SCRIPT = r"""
import json, sys
import soundfile as sf
from transformers import pipeline

model_dir, pairs = sys.argv[1], json.loads(sys.argv[2])
asr = pipeline("automatic-speech-recognition", model=model_dir, device="cpu")
out = {}
for utt_id, path in pairs:
    audio, rate = sf.read(path, dtype="float32")
    out[utt_id] = asr({"raw": audio, "sampling_rate": rate})["text"]
assert "asr_ctc" not in sys.modules, sorted(m for m in sys.modules if m.startswith("asr_ctc"))
print(json.dumps(out))
"""


def _randomise_the_head(model_dir: Path, audio: list[str], seed: int) -> None:
    """Replace the CTC head in the saved weights with a random one, so that greedy output varies.

    A few CPU steps only teach the tiny model the class prior (blank, then the word delimiter, on every
    frame), and comparing empty transcripts would show nothing. The new head is a random projection of the
    encoder's features standardised over ``audio`` (their frame-to-frame variation is small next to their
    mean), which gives frame-dependent classes: blanks, repeats and delimiters, every path of the decoder.
    Only ``model.safetensors`` is rewritten (same tensor names, shapes, dtypes and metadata); the config,
    tokenizer and feature-extractor files under test stay as the run wrote them.
    """
    import soundfile as sf
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCTC, AutoProcessor

    model = AutoModelForCTC.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    features = []
    for path in audio:
        wave, rate = sf.read(path, dtype="float32")
        inputs = processor(wave, sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            # What the head sees: the encoder's last hidden state (after its final layer norm).
            features.append(model.base_model(inputs.input_values).last_hidden_state[0])
    frames = torch.cat(features)
    mean, std = frames.mean(dim=0), frames.std(dim=0).clamp_min(1e-6)

    path = model_dir / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    weights = load_file(str(path))
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(weights["lm_head.weight"].shape, generator=generator) / std
    weights["lm_head.weight"] = projection.to(weights["lm_head.weight"].dtype)
    weights["lm_head.bias"] = (-projection @ mean).to(weights["lm_head.bias"].dtype)
    save_file(weights, str(path), metadata=metadata)


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory):
    """The tiny model fine-tuned 24 steps (a checkpoint at 12), its head randomised (see above)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    raw = tiny_run_config(
        tiny_corpus, out, max_steps=24, learning_rate=5e-3, eval_strategy="no", save_steps=12
    )
    run_finetune(config_from_dict(raw))
    audio = [row["audio"] for row in read_manifest(tiny_corpus / "test.tsv")]
    for seed, model_dir in enumerate((out, out / "checkpoint-12")):
        _randomise_the_head(model_dir, audio, seed)
    return out


def _pipeline_transcripts(model_dir: Path, pairs: list[tuple[str, str]], cwd: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # nothing from the repository is put on the child's path
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, str(model_dir), json.dumps(pairs)],
        cwd=cwd,  # not the repository root: a stray `import asr_ctc` could not find the source tree there
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _greedy_transcripts(model_dir: Path, out_dir: Path) -> dict[str, str]:
    result = run_inference(model_dir, split="test", output_dir=out_dir, batch_size=4, device="cpu")
    assert result.summary["decoder"] == "greedy"
    lines = result.transcripts_path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    return {row["id"]: row["hypothesis"] for row in rows}


@pytest.mark.parametrize("which", ["run", "checkpoint"])
def test_pipeline_transcripts_equal_inference_greedy(trained_run, tiny_corpus, tmp_path, which):
    model_dir = trained_run if which == "run" else trained_run / "checkpoint-12"
    assert model_dir.is_dir()
    test_rows = read_manifest(tiny_corpus / "test.tsv")
    greedy = _greedy_transcripts(model_dir, tmp_path / "inference")
    assert set(greedy) == {r["id"] for r in test_rows}
    # Characters, word delimiters and collapsed repeats, not blanks only: a comparison that can fail.
    assert all(greedy.values()) and any(" " in h for h in greedy.values())
    piped = _pipeline_transcripts(model_dir, [(r["id"], r["audio"]) for r in test_rows], tmp_path)
    assert piped == greedy
