"""Decoding and scoring: greedy CTC decoding, lexicon/LM beam search, alignment spans and timestamps,
word/character error rates. The jobs (training metrics, inference) only call what is here."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jiwer
import torch

from .data.text import normalize_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def apply_blank_penalty(log_probs: torch.Tensor, blank: int, penalty: float) -> torch.Tensor:
    """The scores with ``penalty`` subtracted from the blank's: ``log_probs[..., blank] - penalty``.

    A positive penalty makes every path pay ``penalty`` per blank frame, so greedy decoding, beam search
    and forced alignment prefer paths with fewer blanks: fewer deleted tokens, and token runs that start
    earlier and last longer (a common fix for CTC's deletions; torchaudio's CTC decoders and k2 offer the
    same knob). The scores no longer sum to one per frame; that only matters to a loss, and decoding and
    Viterbi alignment compare paths over the same frames, so a per-frame constant never changes them:
    ``log_probs`` may be logits or log-probabilities alike.

    Args:
        log_probs: (..., C) float scores (logits or log-probabilities), class last.
        blank: the blank class id, in ``[0, C)``.
        penalty: subtracted from the blank's score at every frame; 0 returns ``log_probs`` itself, the
            plain CTC scores exactly.

    Returns:
        a new tensor of the same shape and dtype (``log_probs`` itself when ``penalty == 0``).

    Raises:
        ValueError: a non-finite ``penalty`` or ``blank`` outside the classes.
    """
    if not math.isfinite(penalty):
        raise ValueError(f"blank_penalty: expected a finite number, got {penalty!r}")
    if not 0 <= blank < log_probs.shape[-1]:
        raise ValueError(f"blank: expected an id in [0, {log_probs.shape[-1]}), got {blank}")
    if penalty == 0:
        return log_probs
    out = log_probs.clone()
    out[..., blank] -= penalty
    return out


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
    logits: torch.Tensor,
    frame_lengths: torch.Tensor | None,
    tokenizer: PreTrainedTokenizerBase,
    blank_penalty: float = 0.0,
) -> list[str]:
    """Greedy CTC transcripts: argmax, cut to the frame length, collapse, decode.

    Args:
        logits: (B, T, C) float logits or log-probabilities, or (B, T) int64 frame ids.
        frame_lengths: (B,) int64, valid frames per utterance (None: all T).
        tokenizer: a CTC tokenizer; its pad id is the blank.
        blank_penalty: subtracted from the blank's score before the argmax (:func:`apply_blank_penalty`;
            float scores only).

    Returns:
        B strings. The tokenizer decodes with ``group_tokens=False``: the collapse has already merged
        repeats, and grouping again would merge letters that a blank kept apart ("l <b> l" -> "ll").
    """
    blank = tokenizer.pad_token_id
    if blank_penalty:
        if logits.dim() != 3:
            raise ValueError("blank_penalty: needs (B, T, C) float scores, got frame ids")
        logits = apply_blank_penalty(logits, blank, blank_penalty)
    frames = greedy_ids(logits, frame_lengths)
    return [tidy_transcript(tokenizer.decode(collapse(ids, blank), group_tokens=False)) for ids in frames]


def tidy_transcript(text: str) -> str:
    """A decoded transcript as the project prints, scores and writes it: words joined by single spaces,
    none at either end (the one home of that rule for every decoder's output).

    A CTC path may emit the word delimiter twice around a blank (``a | <blank> | b``) or at either end;
    the tokenizer turns each into a space, and ``"a  b"`` would count as an error against ``"a b"`` in the
    CER (NeMo#4034). The references get the same rule when they are normalised
    (:func:`asr_ctc.data.text.normalize_text`), which this reuses without its lowercasing.
    """
    return normalize_text(text, lowercase=False)


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


# ---------------------------------------------------------------------------------------------------------
# Beam search with a lexicon and an optional word n-gram LM (flashlight-text), and tuning its weights.
# ---------------------------------------------------------------------------------------------------------

# Log-probability of an impossible class: finite, so that flashlight's score arithmetic never meets inf - inf.
_IMPOSSIBLE = -1e9
_FLASHLIGHT_HINT = 'beam and LM decoding need flashlight-text: pip install "asr-ctc[lm]"'


def _import_flashlight():
    """flashlight-text's decoder and dictionary modules and its KenLM class, imported on first use."""
    try:
        from flashlight.lib.text import decoder, dictionary
    except ImportError as exc:
        raise ImportError(_FLASHLIGHT_HINT) from exc
    try:  # KenLM's own module in recent flashlight-text; the old path still works but warns
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError:
        KenLM = decoder.KenLM
    return decoder, dictionary, KenLM


def read_lexicon(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """Read a flashlight lexicon: ``word<TAB>t o k e n s`` per line, a word may have several spellings.

    Raises:
        ValueError: a line with a word but no spelling, or a file without any entry.
    """
    lexicon: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}, line {line_number}: expected a word and a spelling, got {line!r}")
            lexicon.setdefault(fields[0], []).append(fields[1:])
    if not lexicon:
        raise ValueError(f"{path}: lexicon has no entries")
    return lexicon


class BeamSearchDecoder:
    """CTC beam search constrained to a lexicon, with an optional word n-gram LM (flashlight's decoder).

    A hypothesis may only spell words of the lexicon; each word it completes adds
    ``lm_weight * log10 p_LM(word | history) + word_score`` to its acoustic log-probability (KenLM scores
    are log10). Without ``lm_path`` the LM is flashlight's ``ZeroLM`` (``decoder: beam``): the lexicon
    constraint alone, with ``word_score`` as an insertion bonus; with an ARPA file it is KenLM
    (``decoder: lm``).

    Args:
        tokens: the CTC vocabulary's tokens in id order (``tokens[i]`` is class ``i``).
        blank_id: the CTC blank's id.
        word_delimiter: the token that separates words (``|``); every lexicon spelling ends with it.
        lexicon_path: flashlight lexicon (:func:`asr_ctc.lm.write_lexicon`).
        lm_path: ARPA (or KenLM binary) file, or None for no LM.
        beam_size: hypotheses kept per frame.
        beam_size_token: tokens tried per frame (default: all).
        beam_threshold: hypotheses more than this far (in score) below the best are dropped.
        lm_weight: weight of the LM's log10 score (1.5 was best on the synthetic demo's dev set with a
            3- or 4-gram; tune with :func:`tune_lm_weights`).
        word_score: added per emitted word (0 best without an LM on the demo, 1 to 3 with one).
        unk_score: score for a word outside the lexicon (``-inf``: never emitted).
        sil_score: added when the word delimiter is emitted outside a word.
        unk_word: the LM's unknown-word token.

    Raises:
        ImportError: flashlight-text is not installed.
        ValueError: bad token list, ids or parameters; a lexicon spelling with a token outside ``tokens``.
        FileNotFoundError: a missing lexicon or LM file.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        blank_id: int,
        word_delimiter: str,
        lexicon_path: str | os.PathLike,
        lm_path: str | os.PathLike | None = None,
        beam_size: int = 100,
        beam_size_token: int | None = None,
        beam_threshold: float = 25.0,
        lm_weight: float = 1.5,
        word_score: float = 0.0,
        unk_score: float = float("-inf"),
        sil_score: float = 0.0,
        unk_word: str = "<unk>",
    ) -> None:
        fl_decoder, fl_dictionary, kenlm_class = _import_flashlight()
        tokens = list(tokens)
        self._check_arguments(tokens, blank_id, word_delimiter, beam_size, lexicon_path, lm_path)
        self.tokens = tokens
        self.blank_id = blank_id
        self.delimiter_id = tokens.index(word_delimiter)
        lexicon = read_lexicon(lexicon_path)
        self._fl = fl_decoder
        self._words = self._word_dictionary(fl_dictionary, lexicon, unk_word)
        self._unk_id = self._words.get_index(unk_word)
        self._lm = kenlm_class(str(lm_path), self._words) if lm_path is not None else fl_decoder.ZeroLM()
        self._trie = self._lexicon_trie(lexicon)
        self.beam_size = beam_size
        self.beam_size_token = beam_size_token if beam_size_token is not None else len(tokens)
        self.beam_threshold = beam_threshold
        self.unk_score = unk_score
        self.sil_score = sil_score
        self.set_weights(lm_weight, word_score)

    # -- construction, one step each ------------------------------------------------------------------

    @staticmethod
    def _check_arguments(
        tokens: list[str],
        blank_id: int,
        word_delimiter: str,
        beam_size: int,
        lexicon_path: str | os.PathLike,
        lm_path: str | os.PathLike | None,
    ) -> None:
        """Refuse bad constructor arguments before anything is loaded (see the class's Raises)."""
        if len(set(tokens)) != len(tokens) or not tokens:
            raise ValueError("tokens: expected a non-empty list of distinct tokens in id order")
        if not 0 <= blank_id < len(tokens):
            raise ValueError(f"blank_id: expected an id in [0, {len(tokens)}), got {blank_id}")
        if word_delimiter not in tokens:
            raise ValueError(f"word_delimiter: {word_delimiter!r} is not one of the tokens")
        if beam_size < 1:
            raise ValueError(f"beam_size: expected >= 1, got {beam_size}")
        for name, path in (("lexicon_path", lexicon_path), ("lm_path", lm_path)):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{name}: no file {path}")

    @staticmethod
    def _word_dictionary(fl_dictionary, lexicon: Mapping[str, list[list[str]]], unk_word: str):
        """flashlight's word dictionary: the lexicon's words and the unknown word, its default index."""
        # Ours rather than create_word_dict: it must contain the unknown word so that KenLM maps LM words
        # missing from the lexicon, and the decoder's unk index, somewhere valid.
        words = fl_dictionary.Dictionary()
        for word in lexicon:
            words.add_entry(word)
        if not words.contains(unk_word):
            words.add_entry(unk_word)
        words.set_default_index(words.get_index(unk_word))
        return words

    def _lexicon_trie(self, lexicon: Mapping[str, list[list[str]]]):
        """The trie of every spelling over token ids, each word node carrying its unigram LM score.

        Smearing (MAX) pushes the best word score below a node up to it, so partial words compete with an
        LM look-ahead.

        Raises:
            ValueError: a spelling uses a token outside ``self.tokens`` (reported as ``lexicon_path``).
        """
        token_ids = {t: i for i, t in enumerate(self.tokens)}
        trie = self._fl.Trie(len(self.tokens), self.delimiter_id)
        start = self._lm.start(False)
        for word, spellings in lexicon.items():
            word_id = self._words.get_index(word)
            _, score = self._lm.score(start, word_id)
            for spelling in spellings:
                missing = [t for t in spelling if t not in token_ids]
                if missing:
                    raise ValueError(f"lexicon_path: {word!r} is spelled with unknown tokens {missing}")
                trie.insert([token_ids[t] for t in spelling], word_id, score)
        trie.smear(self._fl.SmearingMode.MAX)
        return trie

    def set_weights(self, lm_weight: float, word_score: float) -> None:
        """Use a new LM weight and word score, keeping the lexicon trie and the loaded LM (cheap: tuning)."""
        self.lm_weight = float(lm_weight)
        self.word_score = float(word_score)
        options = self._fl.LexiconDecoderOptions(
            beam_size=self.beam_size,
            beam_size_token=self.beam_size_token,
            beam_threshold=self.beam_threshold,
            lm_weight=self.lm_weight,
            word_score=self.word_score,
            unk_score=self.unk_score,
            sil_score=self.sil_score,
            log_add=False,
            criterion_type=self._fl.CriterionType.CTC,
        )
        # The trie's smeared scores are raw LM scores: flashlight multiplies them by lm_weight itself.
        self._decoder = self._fl.LexiconDecoder(
            options, self._trie, self._lm, self.delimiter_id, self.blank_id, self._unk_id, [], False
        )

    # -- decoding -------------------------------------------------------------------------------------

    def decode_one(self, log_probs: torch.Tensor) -> tuple[str, list[int]]:
        """Best transcript of one utterance.

        Args:
            log_probs: (T, C) float, the utterance's real frames only.

        Returns:
            the words joined by single spaces, and the collapsed token ids of the best path.

        Raises:
            ValueError: ``log_probs`` is not (T, C) with C the number of tokens.
        """
        if log_probs.dim() != 2 or log_probs.shape[1] != len(self.tokens):
            raise ValueError(f"log_probs: expected (T, {len(self.tokens)}), got {tuple(log_probs.shape)}")
        if log_probs.shape[0] == 0:
            return "", []
        emissions = self._with_closing_frame(log_probs)
        # flashlight reads T x C floats straight from this address; `emissions` stays alive until it returns.
        best = self._decoder.decode(emissions.data_ptr(), emissions.shape[0], emissions.shape[1])[0]
        text = tidy_transcript(" ".join(self._words.get_entry(w) for w in best.words if w >= 0))
        return text, self._strip_boundary_delimiters(collapse(list(best.tokens), self.blank_id))

    def _with_closing_frame(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(T + 1, C) float32 contiguous on the CPU: ``log_probs`` and a frame where only ``|`` is possible.

        The lexicon spells every word with a trailing delimiter, but CTC targets (and so the model's output)
        have none after the last word; the decoder would drop an utterance's last word when it has no frame
        left to close it.
        """
        end = torch.full((1, len(self.tokens)), _IMPOSSIBLE, dtype=torch.float32)
        end[0, self.delimiter_id] = 0.0
        return torch.cat([log_probs.detach().to(device="cpu", dtype=torch.float32), end]).contiguous()

    def _strip_boundary_delimiters(self, ids: list[int]) -> list[int]:
        """``ids`` without leading or trailing delimiters, so they read like the tokenizer's.

        The best path starts and ends at a word boundary (flashlight's sentence-start delimiter, our closing
        frame).
        """
        start, end = 0, len(ids)
        while start < end and ids[start] == self.delimiter_id:
            start += 1
        while end > start and ids[end - 1] == self.delimiter_id:
            end -= 1
        return ids[start:end]

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """Best transcript of each utterance of a batch.

        Args:
            log_probs: (B, T, C) float32 log-probabilities (log-softmax of the logits).
            lengths: (B,) int64, valid frames per utterance; all T when omitted.

        Returns:
            B transcripts (words joined by single spaces).

        Raises:
            ValueError: ``log_probs`` is not 3-D, or ``lengths`` has the wrong shape or values outside
                ``[0, T]``.
        """
        lengths = self._batch_lengths(log_probs, lengths)
        return [self.decode_one(row[: int(n)])[0] for row, n in zip(log_probs, lengths.cpu(), strict=True)]

    @staticmethod
    def _batch_lengths(log_probs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Check a batch's shapes; its (B,) frame counts (all T when ``lengths`` is None)."""
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs: expected (B, T, C), got shape {tuple(log_probs.shape)}")
        if lengths is None:
            lengths = torch.full((log_probs.shape[0],), log_probs.shape[1], dtype=torch.long)
        if lengths.shape != (log_probs.shape[0],):
            raise ValueError(f"lengths: expected shape ({log_probs.shape[0]},), got {tuple(lengths.shape)}")
        if lengths.numel() and (int(lengths.max()) > log_probs.shape[1] or int(lengths.min()) < 0):
            raise ValueError(f"lengths: expected values in [0, {log_probs.shape[1]}] (frames of log_probs)")
        return lengths


def tune_lm_weights(
    decode_fn: Callable[[float, float, torch.Tensor, torch.Tensor], list[str]],
    log_probs_list: Sequence[torch.Tensor],
    lengths: Sequence[torch.Tensor],
    references: Sequence[str],
    lm_weights: Sequence[float],
    word_scores: Sequence[float],
) -> tuple[float, float, list[dict[str, float]]]:
    """Grid search of the LM weight and word score minimising the corpus WER (ties: lower CER, then order).

    Args:
        decode_fn: ``decode_fn(lm_weight, word_score, log_probs, lengths) -> transcripts`` for one batch,
            e.g. ``decoder.set_weights(lm_weight, word_score); return decoder.decode(log_probs, lengths)``
            with one :class:`BeamSearchDecoder` (the LM is loaded once).
        log_probs_list: batches, each (B, T, C) float32 log-probabilities.
        lengths: per batch, (B,) int64 valid frames.
        references: the reference transcripts of all utterances, in batch order.
        lm_weights: values to try for the LM weight.
        word_scores: values to try for the word score.

    Returns:
        the best ``lm_weight`` and ``word_score`` and the table of every point
        (dicts with ``lm_weight``, ``word_score``, ``wer``, ``cer``) in grid order.
    """
    if len(log_probs_list) != len(lengths):
        raise ValueError(f"lengths: {len(lengths)} batches but log_probs_list: {len(log_probs_list)}")
    if not lm_weights or not word_scores:
        raise ValueError("lm_weights, word_scores: expected at least one value each")
    table: list[dict[str, float]] = []
    for lm_weight in lm_weights:
        for word_score in word_scores:
            hyps: list[str] = []
            for batch, n in zip(log_probs_list, lengths, strict=True):
                hyps.extend(decode_fn(lm_weight, word_score, batch, n))
            wer, cer = wer_cer(references, hyps)
            table.append({"lm_weight": lm_weight, "word_score": word_score, "wer": wer, "cer": cer})
    best = min(table, key=lambda row: (row["wer"], row["cer"]))
    return best["lm_weight"], best["word_score"], table
