"""Greedy CTC decoding and word/character error rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jiwer
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def greedy_ids(logits: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> list[list[int]]:
    """Best class per frame, cut to each utterance's real frame count (the one home of that cut).

    The cut matters: a model trained on padded batches never learned what to emit on padding frames
    (they carry no loss), and it often emits letters there, so decoding uncut padded logits inflates the
    error rate.

    Args:
        logits: (B, T, C) float logits or log-probabilities, or (B, T) int64 frame ids already argmaxed.
        frame_lengths: (B,) int64, valid frames per utterance; all T when omitted.

    Returns:
        B lists of frame-level ids (not yet collapsed).
    """
    best = (logits.argmax(dim=-1) if logits.dim() == 3 else logits).cpu()
    if frame_lengths is None:
        return [row.tolist() for row in best]
    return [row[: int(n)].tolist() for row, n in zip(best, frame_lengths.cpu(), strict=True)]


def greedy_decode(
    logits: torch.Tensor, frame_lengths: torch.Tensor | None, tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    """Greedy CTC transcripts: argmax, cut to the frame length, collapse, decode.

    Args:
        logits: (B, T, C) float logits or log-probabilities, or (B, T) int64 frame ids.
        frame_lengths: (B,) int64, valid frames per utterance (None: all T).
        tokenizer: a CTC tokenizer; its pad id is the blank.

    Returns:
        B strings. The tokenizer decodes with ``group_tokens=False``: the collapse has already merged
        repeats, and grouping again would merge letters that a blank kept apart ("l <b> l" -> "ll").
    """
    blank = tokenizer.pad_token_id
    frames = greedy_ids(logits, frame_lengths)
    return [tokenizer.decode(collapse(ids, blank), group_tokens=False) for ids in frames]


def collapse(frame_ids: Sequence[int], blank: int) -> list[int]:
    """The CTC collapse: merge repeated ids, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in frame_ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def error_counts(reference: str, hypothesis: str) -> dict[str, int]:
    """Word-level substitutions, deletions and insertions of one utterance, and the reference length."""
    out = jiwer.process_words(reference, hypothesis)
    return {
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "ref_words": out.hits + out.substitutions + out.deletions,
    }


def wer_cer(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, float]:
    """Corpus-level WER and CER (jiwer; errors summed over all utterances, not averaged per utterance)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"references: {len(references)} items but hypotheses: {len(hypotheses)}")
    if not references:
        raise ValueError("references: expected at least one utterance")
    return float(jiwer.wer(list(references), list(hypotheses))), float(
        jiwer.cer(list(references), list(hypotheses))
    )
