"""Fine-tuning from checkpoints of several encoder families, offline: tiny random checkpoints saved here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run_config
from transformers import (
    AutoModel,
    AutoModelForCTC,
    Data2VecAudioConfig,
    HubertConfig,
    Wav2Vec2Config,
    Wav2Vec2ConformerConfig,
    Wav2Vec2Processor,
    WavLMConfig,
)

from asr_ctc.config import config_from_dict
from asr_ctc.data.vocab import build_processor, build_vocab
from asr_ctc.decode import greedy_decode
from asr_ctc.finetune import run_finetune
from asr_ctc.modeling import CheckpointError, build_model, frame_lengths, load_checkpoint_processor

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 4, 4),
    conv_stride=(10, 4, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer",
)
FAMILIES = {
    "wav2vec2": Wav2Vec2Config,
    "hubert": HubertConfig,
    "wavlm": WavLMConfig,
    "data2vec-audio": Data2VecAudioConfig,
    "wav2vec2-conformer": Wav2Vec2ConformerConfig,
}


def _self_supervised_checkpoint(family: str, path: Path) -> Path:
    """A randomly initialised encoder without a CTC head and without a tokenizer (like a pretrained-only
    hub checkpoint)."""
    torch.manual_seed(0)
    AutoModel.from_config(FAMILIES[family](**TINY)).save_pretrained(path)
    return path


def _run_cfg(corpus, out, name_or_path):
    raw = tiny_run_config(corpus, out, max_steps=2, eval_strategy="no", save_strategy="no", logging_steps=1)
    raw["model"]["name_or_path"] = str(name_or_path)
    raw["data"].pop("eval")
    return config_from_dict(raw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_finetune_a_self_supervised_checkpoint_then_decode(family, tiny_corpus, tmp_path):
    ckpt = _self_supervised_checkpoint(family, tmp_path / "ckpt")
    result = run_finetune(_run_cfg(tiny_corpus, tmp_path / "run", ckpt))
    out = result.output_dir
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    model = AutoModelForCTC.from_pretrained(out).eval()
    processor = Wav2Vec2Processor.from_pretrained(out)
    assert model.config.vocab_size == len(processor.tokenizer)  # a new head, sized to the data's vocabulary
    # The encoder weights are the checkpoint's (changed only by two small optimiser steps).
    base = AutoModel.from_pretrained(ckpt)
    name, weight = next((n, p) for n, p in base.named_parameters() if "feature_extractor" in n)
    tuned = model.get_submodule(model.base_model_prefix).get_parameter(name)
    assert torch.allclose(tuned, weight, atol=0.05)
    audio = [torch.randn(16000), torch.randn(9000)]
    batch = processor(
        [a.numpy() for a in audio],
        sampling_rate=16000,
        padding=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    with torch.no_grad():
        logits = model(**batch).logits
    hyps = greedy_decode(logits, frame_lengths(model, batch["attention_mask"].sum(-1)), processor.tokenizer)
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)


def _fine_tuned_checkpoint(path: Path, vocab: dict[str, int], head_size: int) -> Path:
    torch.manual_seed(1)
    config = Wav2Vec2Config(**TINY, vocab_size=head_size, pad_token_id=0, architectures=["Wav2Vec2ForCTC"])
    AutoModelForCTC.from_config(config).save_pretrained(path)
    build_processor(vocab, path).save_pretrained(path)
    return path


def test_a_fine_tuned_checkpoint_keeps_its_tokenizer_and_head(tmp_path):
    vocab = build_vocab(["hello world", "stop the music"])
    ckpt = _fine_tuned_checkpoint(tmp_path / "ckpt", vocab, len(vocab))
    processor = load_checkpoint_processor(str(ckpt))
    assert processor is not None and processor.tokenizer.get_vocab() == vocab
    cfg = config_from_dict(
        {"output_dir": "x", "model": {"name_or_path": str(ckpt)}, "data": {"train": {"manifest": "a.tsv"}}},
        check_files=False,
    )
    tok = processor.tokenizer
    model = build_model(cfg.model, len(tok), tok.pad_token_id)
    saved = AutoModelForCTC.from_pretrained(ckpt)
    assert torch.equal(model.lm_head.weight, saved.lm_head.weight)  # the trained head is kept
    # A self-supervised checkpoint has no tokenizer: the caller builds the vocabulary.
    assert load_checkpoint_processor(str(_self_supervised_checkpoint("hubert", tmp_path / "ssl"))) is None


def test_a_head_that_does_not_fit_the_tokenizer_is_refused(tmp_path):
    vocab = build_vocab(["hello world"])
    ckpt = _fine_tuned_checkpoint(tmp_path / "ckpt", vocab, len(vocab) + 5)
    with pytest.raises(CheckpointError, match=rf"CTC head of {len(vocab) + 5} outputs but its tokenizer has"):
        load_checkpoint_processor(str(ckpt))


def _cli(cfg_path, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "scripts/finetune.py", "--config", str(cfg_path), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_an_unreachable_hub_model_or_dataset_is_one_error_line(tiny_corpus, tmp_path):
    raw = tiny_run_config(tiny_corpus, tmp_path / "run", max_steps=2)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    for overrides, match in (
        (["model.name_or_path=no-such-user/no-such-model"], "model.name_or_path: cannot load 'no-such-user/"),
        (
            [
                "data.train.manifest=null",
                "data.train.hub_name=no-such-user/no-such-data",
                f"output_dir={tmp_path}/r2",
            ],
            "no-such-user/no-such-data",
        ),
    ):
        done = _cli(cfg_path, *overrides)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and match in errors[0], done.stderr[-2000:]
