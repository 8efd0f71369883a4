"""Word-boundary accuracy: predicted word times scored against the true ones (pure functions, no I/O).

The truth is a list of :class:`WordTime` per utterance (the synthetic corpus stores eSpeak's own word
timings in its manifests' ``words`` column, see :mod:`asr_ctc.corpus.synthetic`); a prediction is any
sequence of objects with ``word``, ``start`` and ``end`` in seconds (:class:`asr_ctc.decode.TimedWord`).

Which predicted word is scored against which true word:

* ``match="position"``: the i-th predicted word against the i-th true word. For the forced alignment of
  the reference transcript, whose words are the truth's words; an utterance whose word counts differ is
  not scored (counted in ``utterances_unmatched``).
* ``match="edit"``: a word-level edit alignment of the predicted words against the true words (fewest
  edits, as the WER counts them; among those, most equal words); only the words it pairs as *equal*
  (correct words) are scored. Substituted,
  inserted and deleted words have no true time to compare with; ``words_matched`` / ``words_truth`` says
  how many were scored.

A boundary whose true time is unknown (None: eSpeak spoke the word inside its neighbour) is not scored.
Errors are absolute differences in milliseconds; a summary gives, for starts, ends and both pooled
("boundary"), the count, mean, median and the share of errors within 20, 50 and 100 ms.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "THRESHOLDS_MS",
    "WordTime",
    "boundary_errors",
    "match_words",
    "score_boundaries",
    "summarize_errors",
    "words_from_json",
    "words_to_json",
]

THRESHOLDS_MS = (20, 50, 100)
MATCHES = ("position", "edit")


@dataclass(frozen=True)
class WordTime:
    """A word and when it is spoken, in seconds from the start of the audio; None where unknown.

    For the synthetic corpus: ``start`` is the start of the word's first phoneme, ``end`` the start of
    what follows its last phoneme (see :func:`asr_ctc.corpus.espeak.word_times`).
    """

    word: str
    start: float | None
    end: float | None


class _Timed(Protocol):
    word: str
    start: float
    end: float


def words_to_json(words: Sequence[WordTime]) -> str:
    """One line of JSON, ``[["play",0.0499,0.2478],...]`` (seconds, null when unknown): the manifest's
    ``words`` column. No tabs or newlines, so it fits a TSV field."""
    return json.dumps([[w.word, w.start, w.end] for w in words], separators=(",", ":"))


def words_from_json(value: str | Sequence[Any]) -> list[WordTime]:
    """Parse a ``words`` value (the JSON text of :func:`words_to_json`, or its already-parsed list).

    Raises:
        ValueError: not JSON, or not a list of ``[word, start, end]`` with a non-empty string word and
            each time a finite number >= 0 or null, and ``start <= end`` when both are known.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"words: not JSON ({exc.msg}): {value[:80]!r}") from exc
    if not isinstance(value, list):
        raise ValueError(f"words: expected a JSON list of [word, start, end], got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and item[0]):
            raise ValueError(f"words[{i}]: expected [word, start, end] with a non-empty word, got {item!r}")
        times = item[1:]
        for t in times:
            ok = t is None or (
                isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
            )
            if not ok:
                raise ValueError(f"words[{i}]: times must be seconds >= 0 or null, got {item!r}")
        if None not in times and times[0] > times[1]:
            raise ValueError(f"words[{i}]: start after end in {item!r}")
        out.append(WordTime(item[0], *(None if t is None else float(t) for t in times)))
    return out


def match_words(predicted: Sequence[str], truth: Sequence[str], match: str) -> list[tuple[int, int]] | None:
    """Pairs ``(predicted index, true index)`` of the words to score.

    Args:
        predicted: the predicted words, in order.
        truth: the true words, in order.
        match: ``"position"`` (all words pairwise; None when the counts differ) or ``"edit"`` (the words a
            word-level edit alignment finds equal, compared case-insensitively; see the module docstring).
    """
    if match not in MATCHES:
        raise ValueError(f"match: expected one of {MATCHES}, got {match!r}")
    if match == "position":
        return [(k, k) for k in range(len(truth))] if len(predicted) == len(truth) else None
    hyp = [w.casefold() for w in predicted]
    ref = [w.casefold() for w in truth]
    # Levenshtein over words; among the alignments with the fewest edits (the WER's edit distance) the
    # one with the most equal pairs, so a tie between "substitute twice" and "delete, match, insert"
    # keeps the match. cost[i][j] = (edits, -hits) for hyp[:i] against ref[:j].
    rows, cols = len(hyp) + 1, len(ref) + 1
    cost = [[(i + j, 0) if i == 0 or j == 0 else (0, 0) for j in range(cols)] for i in range(rows)]
    for i in range(1, rows):
        for j in range(1, cols):
            same = hyp[i - 1] == ref[j - 1]
            diag = cost[i - 1][j - 1]
            cost[i][j] = min(
                (diag[0] + (not same), diag[1] - same),
                (cost[i - 1][j][0] + 1, cost[i - 1][j][1]),  # an inserted word
                (cost[i][j - 1][0] + 1, cost[i][j - 1][1]),  # a deleted word
            )
    pairs = []
    i, j = len(hyp), len(ref)
    while i and j:
        same = hyp[i - 1] == ref[j - 1]
        diag = cost[i - 1][j - 1]
        if cost[i][j] == (diag[0] + (not same), diag[1] - same):
            if same:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i][j] == (cost[i - 1][j][0] + 1, cost[i - 1][j][1]):
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def boundary_errors(
    predicted: Sequence[_Timed], truth: Sequence[WordTime], pairs: Sequence[tuple[int, int]]
) -> tuple[list[float], list[float]]:
    """Absolute start and end errors in ms of the paired words, skipping unknown true times.

    Returns:
        ``(start_errors, end_errors)``, each a list of ``|predicted - true| * 1000``, rounded to 1e-6 ms so
        that float noise in seconds (0.52 - 0.5 = 0.020000000000000018) does not decide a threshold.
    """
    starts, ends = [], []
    for p, t in pairs:
        if truth[t].start is not None:
            starts.append(round(abs(predicted[p].start - truth[t].start) * 1000.0, 6))
        if truth[t].end is not None:
            ends.append(round(abs(predicted[p].end - truth[t].end) * 1000.0, 6))
    return starts, ends


def _stats(errors: Sequence[float]) -> dict[str, Any]:
    if not errors:
        empty = {f"within_{t}ms": None for t in THRESHOLDS_MS}
        return {"count": 0, "mean_ms": None, "median_ms": None, **empty}
    return {
        "count": len(errors),
        "mean_ms": round(math.fsum(errors) / len(errors), 2),
        "median_ms": round(statistics.median(errors), 2),
        **{f"within_{t}ms": round(sum(e <= t for e in errors) / len(errors), 4) for t in THRESHOLDS_MS},
    }


def summarize_errors(start_errors: Sequence[float], end_errors: Sequence[float]) -> dict[str, Any]:
    """``{"start": stats, "end": stats, "boundary": stats of both pooled}``; stats are ``count``,
    ``mean_ms``, ``median_ms`` and ``within_{20,50,100}ms`` (share of errors <= the threshold, in [0, 1];
    None for no errors)."""
    return {
        "start": _stats(start_errors),
        "end": _stats(end_errors),
        "boundary": _stats([*start_errors, *end_errors]),
    }


def score_boundaries(
    predicted: Sequence[Sequence[_Timed] | None],
    truth: Sequence[Sequence[WordTime] | None],
    match: str,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Boundary accuracy over a set of utterances, overall and per group.

    Args:
        predicted: per utterance, the predicted timed words, or None (no prediction: not scored).
        truth: per utterance, the true word times, or None (no truth: not scored).
        match: ``"position"`` or ``"edit"``, see the module docstring.
        groups: per utterance, a group name (e.g. the held-out voice); None for no per-group summary.

    Returns:
        ``{"match", "utterances_scored", "utterances_unmatched", "words_truth", "words_matched", "start",
        "end", "boundary", "per_group"}``: the counts and :func:`summarize_errors` over all utterances,
        and ``per_group`` (only with ``groups``) the same without ``match`` for each group, by name. An
        utterance with both a prediction and a truth counts; ``words_truth`` counts its true words,
        ``words_matched`` the word pairs scored.

    Raises:
        ValueError: the three sequences differ in length, or an unknown ``match``.
    """
    if match not in MATCHES:
        raise ValueError(f"match: expected one of {MATCHES}, got {match!r}")
    if len(predicted) != len(truth) or (groups is not None and len(groups) != len(truth)):
        raise ValueError(
            f"predicted, truth, groups: expected one entry per utterance each, got {len(predicted)}, "
            f"{len(truth)}, {'-' if groups is None else len(groups)}"
        )
    names = list(groups) if groups is not None else [None] * len(truth)

    def new_bucket() -> dict[str, Any]:
        return {"scored": 0, "unmatched": 0, "truth": 0, "matched": 0, "s": [], "e": []}

    overall = new_bucket()
    per_group: dict[str, dict[str, Any]] = {}

    for pred, true, name in zip(predicted, truth, names, strict=True):
        if pred is None or true is None:
            continue
        pairs = match_words([w.word for w in pred], [w.word for w in true], match)
        targets = [overall] + ([per_group.setdefault(name, new_bucket())] if groups is not None else [])
        for b in targets:
            b["truth"] += len(true)
            if pairs is None:
                b["unmatched"] += 1
                continue
            b["scored"] += 1
            b["matched"] += len(pairs)
        if pairs is None:
            continue
        starts, ends = boundary_errors(pred, true, pairs)
        for b in targets:
            b["s"].extend(starts)
            b["e"].extend(ends)

    def report(b: dict[str, Any]) -> dict[str, Any]:
        return {
            "utterances_scored": b["scored"],
            "utterances_unmatched": b["unmatched"],
            "words_truth": b["truth"],
            "words_matched": b["matched"],
            **summarize_errors(b["s"], b["e"]),
        }

    out = {"match": match, **report(overall)}
    if groups is not None:
        out["per_group"] = {name: report(per_group[name]) for name in sorted(per_group)}
    return out
