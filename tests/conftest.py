"""Shared fixtures: a tiny vocabulary, processor and wav2vec2 that train in seconds on a CPU."""

from __future__ import annotations

import numpy as np
import pytest

from asr_ctc.config import ArchitectureConfig, ModelConfig
from asr_ctc.data.dataset import SpeechDataset
from asr_ctc.data.vocab import build_processor, build_vocab

TINY_ARCH = ArchitectureConfig(
    conv_dim=[16, 16, 16],
    conv_kernel=[10, 4, 4],
    conv_stride=[10, 4, 4],  # 160 samples per frame: 100 frames per second of 16 kHz audio
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def tiny_model_config(**overrides) -> ModelConfig:
    """No dropout or masking by default, so runs that split batches differently see the same math."""
    base = dict(
        architecture=TINY_ARCH,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )
    base.update(overrides)
    return ModelConfig(**base)


WORDS = ["play", "jazz", "stop", "music", "louder", "next", "song", "hello"]


@pytest.fixture
def tiny_processor(tmp_path):
    return build_processor(build_vocab(WORDS), tmp_path / "vocab")


def random_dataset(processor, n: int, seed: int = 0) -> SpeechDataset:
    """Noise 'audio' of varied lengths with short random transcripts (always feasible at 100 frames/s)."""
    rng = np.random.default_rng(seed)
    ids, texts, audio, labels = [], [], [], []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 3)))
        samples = int(rng.integers(8000, 16000))
        ids.append(f"utt{i}")
        texts.append(text)
        audio.append(rng.standard_normal(samples).astype(np.float32))
        labels.append(processor.tokenizer(text).input_ids)
    return SpeechDataset(ids, texts, audio, labels)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A 48-utterance eSpeak corpus (train/dev/test manifests), synthesized once per test session."""
    from asr_ctc.corpus.synthetic import make_synthetic_corpus

    out = tmp_path_factory.mktemp("corpus")
    make_synthetic_corpus(
        out, num_utterances=48, seed=1, dev_fraction=0.15, test_fraction=0.15, num_workers=1, progress=False
    )
    return out


def tiny_run_config(corpus, output_dir, **training) -> dict:
    """A raw config (as YAML would give) for a few-second fine-tuning run of the tiny model on ``corpus``."""
    import dataclasses

    model = dataclasses.asdict(tiny_model_config())
    return {
        "output_dir": str(output_dir),
        "model": model,
        "data": {
            "train": {"manifest": str(corpus / "train.tsv")},
            "eval": {"manifest": str(corpus / "dev.tsv")},
            "test": {"manifest": str(corpus / "test.tsv")},
        },
        "loss": {"impl": "custom"},
        "training": {
            "use_cpu": True,
            "seed": 0,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "learning_rate": 3e-3,
            "max_steps": 20,
            "logging_steps": 1,
            "eval_strategy": "steps",
            "eval_steps": 10,
            "save_steps": 10,
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            **training,
        },
    }
