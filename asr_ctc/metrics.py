"""The evaluation metrics the fine-tuning job reports (WER, CER), usable with any ``transformers.Trainer``.

``CTCTrainer.prediction_step`` returns logits whose padding frames put all the probability on the blank;
:func:`argmax_logits` (a ``preprocess_logits_for_metrics``) turns them into frame ids so that only
(B, T) ints are accumulated over the evaluation set instead of (B, T, C) floats, and
:func:`make_compute_metrics` scores either form.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers import EvalPrediction, Wav2Vec2Processor

from .data.collator import IGNORE_INDEX
from .decode import greedy_decode, wer_cer


def argmax_logits(logits: torch.Tensor | tuple, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``preprocess_logits_for_metrics`` that keeps the best class per frame.

    Args:
        logits: (B, T, C) float (or a tuple whose first element is).
        labels: unused (part of the Trainer's signature).

    Returns:
        (B, T) int64 frame ids.
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _frames_and_lengths(predictions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions as a tensor and each row's frame count.

    The Trainer concatenates evaluation batches of different lengths by padding them on the right with
    -100 (its ``padding_index``): a -100 frame id, or a logits frame that is -100 in every class, is not a
    frame of the utterance.
    """
    pred = torch.as_tensor(np.asarray(predictions))
    if pred.dim() == 3:
        real = ~(pred == IGNORE_INDEX).all(dim=-1)
    elif pred.dim() == 2:
        real = pred != IGNORE_INDEX
    else:
        shape = tuple(pred.shape)
        raise ValueError(f"predictions: expected (B, T) ids or (B, T, C) logits, got shape {shape}")
    return pred, real.sum(dim=-1)


def make_compute_metrics(processor: Wav2Vec2Processor) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``compute_metrics`` giving corpus WER and CER of greedy CTC transcripts.

    It accepts ``predictions`` as (B, T) int frame ids (after :func:`argmax_logits`) or (B, T, C) logits,
    and ``label_ids`` (B, U) padded with -100.
    """
    tokenizer = processor.tokenizer

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        predictions = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        frames, lengths = _frames_and_lengths(predictions)
        hyps = greedy_decode(frames, lengths, tokenizer)
        # Targets are not collapsed: "ll" in a reference is two letters.
        refs = [
            tokenizer.decode([int(i) for i in row if i != IGNORE_INDEX], group_tokens=False)
            for row in np.asarray(pred.label_ids)
        ]
        wer, cer = wer_cer(refs, hyps)
        return {"wer": wer, "cer": cer}

    return compute_metrics
