"""Shared test helpers (plain functions and constants; fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from asr_ctc.config import ArchitectureConfig, ModelConfig


class InMemorySpeechDataset:
    """Decoded audio held in memory, with the item layout and ``lengths`` of
    :class:`asr_ctc.data.dataset.SpeechDataset`: for trainer tests that need exact control of the audio."""

    def __init__(
        self, ids: list[str], texts: list[str], input_values: list[np.ndarray], labels: list[list[int]]
    ):
        self.ids, self.texts, self.input_values, self.labels = ids, texts, input_values, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_values": self.input_values[i], "labels": self.labels[i], "id": self.ids[i]}

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_values]


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
    # A LayerNorm per frame: outputs do not depend on a batch's padding, which the tests that compare
    # batch splits (padded vs one at a time, 1 vs 2 processes, accumulation) rely on. The demo model's
    # GroupNorm normalises over the padded input (see the README's GroupNorm caveat).
    feat_extract_norm="layer",
)


# The model's dropout and masking knobs, all off: a model in training mode then computes without randomness.
NO_RANDOMNESS = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.0,
)


def tiny_model_config(**overrides) -> ModelConfig:
    """No dropout or masking by default, so runs that split batches differently see the same math."""
    base = dict(architecture=TINY_ARCH, **NO_RANDOMNESS)
    base.update(overrides)
    return ModelConfig(**base)


WORDS = ["play", "jazz", "stop", "music", "louder", "next", "song", "hello"]


def random_dataset(processor, n: int, seed: int = 0) -> InMemorySpeechDataset:
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
    return InMemorySpeechDataset(ids, texts, audio, labels)


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


def plain_ctc_nll(log_probs, target: list[int], blank: int = 0):
    """-log p(target) of one utterance by the CTC forward recursion in plain autograd ops (log space).

    An independent reference that autograd differentiates to any order (second derivatives included).
    "log 0" is a large finite number, so that no -inf - -inf makes a NaN in any derivative.

    Args:
        log_probs: (T, C) float64, the utterance's frames only.
        target: label ids, without the blank.
    """
    import torch

    log_zero = -1e30
    ext = [blank]
    for label in target:
        ext += [label, blank]
    n = len(ext)
    skip = torch.tensor([s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] for s in range(n)])
    emissions = log_probs[:, ext]  # (T, S)
    alpha = torch.full((n,), log_zero, dtype=log_probs.dtype)
    alpha = torch.where(torch.arange(n) < min(2, n), emissions[0], alpha)
    pad = torch.full((2,), log_zero, dtype=log_probs.dtype)
    for t in range(1, log_probs.shape[0]):
        shifted = torch.cat((pad, alpha))
        stay, step, jump = alpha, shifted[1 : n + 1], shifted[:n]
        jump = torch.where(skip, jump, torch.full_like(jump, log_zero))
        alpha = torch.logsumexp(torch.stack((stay, step, jump)), 0) + emissions[t]
    return -torch.logsumexp(alpha[-2:] if n > 1 else alpha, 0)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, imported the way the script runs: its folder first on sys.path
    (the benchmarks import their siblings, ``_machine``, ``bench_variants``, by plain name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
