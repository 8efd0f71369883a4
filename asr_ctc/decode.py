"""Greedy CTC decoding and word/character error rates."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jiwer
import torch


def greedy_ids(logits: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> list[list[int]]:
    """Best class per frame, cut to each utterance's real frame count.

    The cut matters: a model trained on padded batches never learned what to emit on padding frames
    (they carry no loss), and it often emits letters there, so decoding uncut padded logits inflates the
    error rate.

    Args:
        logits: (B, T, C) float, or log-probabilities.
        frame_lengths: (B,) int64, valid frames per utterance; all T when omitted.

    Returns:
        B lists of frame-level ids (not yet collapsed).
    """
    best = logits.argmax(dim=-1).cpu()
    if frame_lengths is None:
        return [row.tolist() for row in best]
    return [row[: int(n)].tolist() for row, n in zip(best, frame_lengths.cpu(), strict=True)]


def collapse(frame_ids: Sequence[int], blank: int) -> list[int]:
    """The CTC collapse: merge repeated ids, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in frame_ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


# ---- Token and word timestamps from a CTC frame path (e.g. align.forced_align's labels) ----


@dataclass(frozen=True)
class TokenSpan:
    """One emitted token of a CTC frame path: a run of frames carrying the same non-blank id.

    Attributes:
        token: the class id.
        start: first frame of the run.
        end: one past its last frame (exclusive).
        log_prob: sum of the frames' scores (log-probabilities) over the run, or None without scores.
    """

    token: int
    start: int
    end: int
    log_prob: float | None = None

    @property
    def confidence(self) -> float | None:
        """Per-frame geometric-mean probability of the run, ``exp(log_prob / frames)``, in [0, 1]."""
        return None if self.log_prob is None else math.exp(self.log_prob / (self.end - self.start))


@dataclass(frozen=True)
class WordSpan:
    """The tokens of one word (between two word-delimiter tokens), in frame order; never empty."""

    tokens: tuple[TokenSpan, ...]

    @property
    def start(self) -> int:
        """First frame of the word's first token."""
        return self.tokens[0].start

    @property
    def end(self) -> int:
        """One past the last frame of the word's last token (blank frames after it are not the word's)."""
        return self.tokens[-1].end

    @property
    def log_prob(self) -> float | None:
        """Sum of the tokens' log-probabilities (None when the tokens carry none)."""
        if any(t.log_prob is None for t in self.tokens):
            return None
        return sum(t.log_prob for t in self.tokens)

    @property
    def confidence(self) -> float | None:
        """Per-frame geometric-mean probability over the word's token frames (blank frames excluded)."""
        log_prob = self.log_prob
        if log_prob is None:
            return None
        return math.exp(log_prob / sum(t.end - t.start for t in self.tokens))

    def text(self, id_to_token: Mapping[int, str] | Sequence[str]) -> str:
        """The word spelt with ``id_to_token[id]`` for each token (e.g. the inverted vocabulary)."""
        return "".join(id_to_token[t.token] for t in self.tokens)


@dataclass(frozen=True)
class TimedWord:
    """A word with its time span in seconds: ``[start, end)``; confidence as in :class:`WordSpan`."""

    word: str
    start: float
    end: float
    confidence: float | None = None


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def token_spans(
    frame_labels: Sequence[int], blank: int, frame_scores: Sequence[float] | None = None
) -> list[TokenSpan]:
    """The tokens of a CTC frame path with their frame spans: the runs that :func:`collapse` keeps.

    A label repeated across a blank is two tokens, so ``[s.token for s in token_spans(p, b)] ==
    collapse(p, b)``.

    Args:
        frame_labels: (T,) int, one class id per frame (a list, or a 1-D tensor / array).
        blank: the blank class id.
        frame_scores: (T,) float, optional per-frame log-probabilities of ``frame_labels`` (e.g.
            :func:`asr_ctc.forced_align`'s scores); summed into each span's ``log_prob``.
    """
    labels = [int(i) for i in _as_list(frame_labels)]
    scores = None if frame_scores is None else [float(x) for x in _as_list(frame_scores)]
    if scores is not None and len(scores) != len(labels):
        raise ValueError(
            f"frame_scores must have one entry per frame label ({len(labels)}), got {len(scores)}"
        )
    spans: list[TokenSpan] = []
    start = 0
    for t in range(1, len(labels) + 1):
        if t < len(labels) and labels[t] == labels[start]:
            continue
        if labels[start] != blank:
            total = None if scores is None else math.fsum(scores[start:t])
            spans.append(TokenSpan(labels[start], start, t, total))
        start = t
    return spans


def word_spans(tokens: Sequence[TokenSpan], word_delimiter_id: int) -> list[WordSpan]:
    """Group tokens into words: the maximal runs of tokens other than ``word_delimiter_id``.

    Delimiters at the ends or next to each other make no empty words.
    """
    words: list[WordSpan] = []
    current: list[TokenSpan] = []
    for span in [*tokens, None]:
        if span is None or span.token == word_delimiter_id:
            if current:
                words.append(WordSpan(tuple(current)))
            current = []
        else:
            current.append(span)
    return words


def timed_words(
    words: Sequence[WordSpan], id_to_token: Mapping[int, str] | Sequence[str], seconds_per_frame: float
) -> list[TimedWord]:
    """Spell the words and put their frame spans in seconds: frame ``i`` covers ``[i * spf, (i + 1) * spf)``.

    Args:
        words: from :func:`word_spans`.
        id_to_token: token string of each id.
        seconds_per_frame: the model's frame step (wav2vec2: ``inputs_to_logits_ratio / sampling_rate``,
            0.02 s for the base models at 16 kHz).
    """
    if not seconds_per_frame > 0:
        raise ValueError(f"seconds_per_frame must be positive, got {seconds_per_frame!r}")
    return [
        TimedWord(w.text(id_to_token), w.start * seconds_per_frame, w.end * seconds_per_frame, w.confidence)
        for w in words
    ]


def to_ctm(utterance_id: str, words: Sequence[TimedWord], channel: str = "A") -> str:
    """NIST CTM lines, one per word: ``utterance channel start duration word [confidence]``.

    Times are in seconds with 3 decimals; the confidence column (4 decimals) is written when the word has
    one. Empty string for no words.
    """
    for name, value in (("utterance_id", utterance_id), ("channel", channel)):
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"{name} must be a non-empty string without whitespace, got {value!r}")
    lines = []
    for w in words:
        if not w.word or any(c.isspace() for c in w.word):
            raise ValueError(f"words: a CTM word must be non-empty without whitespace, got {w.word!r}")
        line = f"{utterance_id} {channel} {w.start:.3f} {w.end - w.start:.3f} {w.word}"
        if w.confidence is not None:
            line += f" {w.confidence:.4f}"
        lines.append(line + "\n")
    return "".join(lines)


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
