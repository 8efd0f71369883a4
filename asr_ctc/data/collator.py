"""Batching: pad audio (with an attention mask) and labels (with -100)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Wav2Vec2Processor

IGNORE_INDEX = -100


@dataclass
class CTCDataCollator:
    """Pad a list of ``{"input_values": 1-D floats, "labels": list[int], "id": str}`` examples into a batch.

    Returns ``input_values`` (B, N) float32, ``attention_mask`` (B, N) int64 (1 on real samples),
    ``labels`` (B, U) int64 padded with -100, which every loss implementation reads as "no target", and
    ``utterance_ids`` (list of B str, when the examples have ids) so a bad batch can be named.
    """

    processor: Wav2Vec2Processor
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        audio = [{"input_values": f["input_values"]} for f in features]
        batch = self.processor.feature_extractor.pad(
            audio,
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_attention_mask=True,
            return_tensors="pt",
        )
        max_len = max(len(f["labels"]) for f in features)
        labels = torch.full((len(features), max_len), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = torch.as_tensor(f["labels"], dtype=torch.long)
        batch["labels"] = labels
        batch["input_values"] = batch["input_values"].to(torch.float32)
        batch["attention_mask"] = batch["attention_mask"].to(torch.long)
        out = dict(batch)
        if all("id" in f for f in features):
            out["utterance_ids"] = [str(f["id"]) for f in features]
        return out
