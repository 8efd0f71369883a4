"""Word n-gram language models: interpolated modified Kneser-Ney, written as ARPA for KenLM.

The estimator follows Chen & Goodman (1998), "An empirical study of smoothing techniques for language
modeling", section 3 (interpolated modified Kneser-Ney), with the count conventions of KenLM's ``lmplz``:

* Every sentence is padded to ``<s> w1 ... wk </s>``; ``<s>`` is only ever a context, never predicted.
* Adjusted counts ``a(g)`` of an n-gram ``g``: the raw count at the highest order and for n-grams that start
  with ``<s>`` (they have no left neighbour to be "continued" from); otherwise the continuation count
  ``N1+(. g)``, the number of distinct words seen immediately left of ``g``.
* Per order, three discounts from that order's count-of-counts ``n1..n4`` (how many n-grams have adjusted
  count 1, 2, 3, 4)::

      Y = n1 / (n1 + 2 n2);  D1 = 1 - 2 Y n2 / n1;  D2 = 2 - 3 Y n3 / n2;  D3+ = 3 - 4 Y n4 / n3

* Interpolation, for a context ``h`` with total ``a(h.) = sum_w a(hw)`` and lower-order context ``h'``
  (``h`` without its first word)::

      p(w | h) = max(a(hw) - D(a(hw)), 0) / a(h.) + gamma(h) p(w | h')
      gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / a(h.)

  where ``Nk(h.)`` counts the words following ``h`` with adjusted count ``k`` (3 or more for ``N3+``).
  The unigram level interpolates with the uniform distribution ``1 / |V|`` over the vocabulary: every word
  seen in a sentence, ``</s>`` and ``<unk>`` (which has no count, so it receives only the uniform share).

ARPA representation: the ARPA file lists, for every n-gram with a non-zero adjusted count, ``log10 p(w|h)``
of the formula above, and for every context ``h`` that has continuations, ``log10 gamma(h)`` as its backoff
weight. Under the standard backoff rule (``p(w|h) = bow(h) p(w|h')`` when ``hw`` is not listed) this gives
exactly the interpolated probabilities: an unseen ``hw`` has ``a(hw) = 0``, so its interpolated probability
is ``gamma(h) p(w|h')`` as well. The listed set is closed under taking prefixes and suffixes (every
occurrence of a word sequence has a left neighbour, at least ``<s>``), which KenLM requires.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import atomic_write, atomic_write_text

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
# lmplz's --discount_fallback values, used where the count-of-counts cannot give valid discounts.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
# log10 "probability" ARPA files give <s>: it is never predicted, only used as a context.
_BOS_LOG10 = -99.0

NGram = tuple[str, ...]


@dataclass
class NGramModel:
    """An interpolated modified Kneser-Ney model in backoff form (what the ARPA file holds).

    Attributes:
        order: the n of the n-gram model.
        log10_probs: per order ``n`` (index ``n - 1``), n-gram -> ``log10 p(w_n | w_1 .. w_{n-1})``.
        log10_backoffs: context n-gram -> ``log10 gamma(context)`` (only contexts with continuations).
        discounts: per order, ``(D1, D2, D3+)``.
        discount_fallback: per order, True where the count-of-counts were degenerate and
            :data:`FALLBACK_DISCOUNTS` were used.
        vocab: the predictable words: every training word, ``</s>`` and ``<unk>``.
    """

    order: int
    log10_probs: list[dict[NGram, float]]
    log10_backoffs: dict[NGram, float]
    discounts: list[tuple[float, float, float]]
    discount_fallback: list[bool]
    vocab: frozenset[str] = field(default_factory=frozenset)

    def counts(self) -> list[int]:
        """Number of n-grams listed per order (the ARPA header)."""
        return [len(table) for table in self.log10_probs]

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """``log10 p(word | context)`` by the ARPA backoff rule.

        Args:
            word: the predicted word; words outside the vocabulary are scored as ``<unk>``.
            context: the preceding words, oldest first (``("<s>",)`` for the sentence start); only the last
                ``order - 1`` matter, and unknown words in it become ``<unk>``.
        """
        if word == BOS:
            raise ValueError("word: <s> is never predicted (it is only a context)")
        word = word if word in self.vocab else UNK
        ctx = tuple(w if (w in self.vocab or w == BOS) else UNK for w in context)
        ctx = ctx[max(0, len(ctx) - (self.order - 1)) :]
        backoff = 0.0
        # Longest listed n-gram ending in `word` wins; each context given up on the way adds its backoff.
        while True:
            gram = (*ctx, word)
            prob = self.log10_probs[len(gram) - 1].get(gram)
            if prob is not None:
                return backoff + prob
            backoff += self.log10_backoffs.get(ctx, 0.0)
            ctx = ctx[1:]

    def sentence_log10_prob(self, sentence: str) -> float:
        """``log10 p(w1 .. wk </s> | <s>)`` of a whitespace-separated sentence."""
        words = [BOS, *sentence.split(), EOS]
        return sum(self.log10_prob(w, words[:i]) for i, w in enumerate(words) if i > 0)


# The directory, next to a fine-tuned model, that holds its LM files (where inference looks for them).
LM_DIR = "lm"

def _discounts(count_of_counts: Mapping[int, int]) -> tuple[tuple[float, float, float], bool]:
    """Chen & Goodman's D1, D2, D3+ from n1..n4; the fallback (and True) when they are degenerate.

    Degenerate: one of n1..n4 is zero (tiny corpora, or small closed vocabularies whose unigrams all have
    many continuations), so a formula divides by zero or estimates from nothing; or a discount falls
    outside ``(0, k]`` for count ``k`` (a negative or over-large discount breaks the probability mass
    accounting). Both use :data:`FALLBACK_DISCOUNTS`, as ``lmplz --discount_fallback`` does.
    """
    n1, n2, n3, n4 = (count_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return FALLBACK_DISCOUNTS, True
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < dk <= k for k, dk in zip((1, 2, 3), d, strict=True)):
        return FALLBACK_DISCOUNTS, True
    return d, False


def _discount(count: int, discounts: tuple[float, float, float]) -> float:
    return discounts[min(count, 3) - 1]


def train_kneser_ney(sentences: Iterable[str], order: int = 3) -> NGramModel:
    """Estimate an interpolated modified Kneser-Ney n-gram model.

    Args:
        sentences: normalised text, one sentence per item, words separated by whitespace. Empty sentences
            are skipped.
        order: n >= 1.

    Raises:
        ValueError: bad ``order``, no non-empty sentence, or a sentence containing ``<s>``, ``</s>`` or
            ``<unk>`` as a word.
    """
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order: expected an integer >= 1, got {order!r}")
    # raw[n-1]: raw counts of n-grams (highest order; those starting with <s> at lower orders).
    raw: list[Counter] = [Counter() for _ in range(order)]
    num_sentences = 0
    for sentence in sentences:
        words = sentence.split()
        if not words:
            continue
        for w in words:
            if w in (BOS, EOS, UNK):
                raise ValueError(f"sentences: the reserved token {w!r} cannot be a word")
        num_sentences += 1
        tokens = [BOS, *words, EOS]
        for n in range(1, order + 1):
            table = raw[n - 1]
            for i in range(len(tokens) - n + 1):
                gram = tuple(tokens[i : i + n])
                if (n == order or gram[0] == BOS) and gram != (BOS,):
                    table[gram] += 1
    if num_sentences == 0:
        raise ValueError("sentences: expected at least one non-empty sentence")

    # Adjusted counts, from the top order down: each distinct n-gram adds one continuation to its suffix.
    adjusted: list[Counter] = [Counter() for _ in range(order)]
    adjusted[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        table = adjusted[n - 1]
        for gram in adjusted[n]:
            table[gram[1:]] += 1
        # Raw counts for <s>-initial n-grams: never a suffix of anything, so they are not in `table` yet.
        table.update(raw[n - 1])

    discounts: list[tuple[float, float, float]] = []
    fallback: list[bool] = []
    for n in range(1, order + 1):
        d, fb = _discounts(Counter(adjusted[n - 1].values()))
        discounts.append(d)
        fallback.append(fb)

    vocab = frozenset({g[0] for g in adjusted[0]} | {UNK})
    probs: list[dict[NGram, float]] = []
    gammas: dict[NGram, float] = {}
    for n in range(1, order + 1):
        d = discounts[n - 1]
        totals: dict[NGram, int] = defaultdict(int)
        removed: dict[NGram, float] = defaultdict(float)
        for gram, c in adjusted[n - 1].items():
            ctx = gram[:-1]
            totals[ctx] += c
            removed[ctx] += _discount(c, d)
        level_gamma = {ctx: removed[ctx] / totals[ctx] for ctx in totals}
        table: dict[NGram, float] = {}
        if n == 1:
            uniform = 1.0 / len(vocab)
            total = totals[()]
            g0 = level_gamma[()]
            for gram, c in adjusted[0].items():
                table[gram] = (c - _discount(c, d)) / total + g0 * uniform
            table[(UNK,)] = g0 * uniform
            gammas[()] = g0
        else:
            lower = probs[n - 2]
            for gram, c in adjusted[n - 1].items():
                ctx = gram[:-1]
                table[gram] = (c - _discount(c, d)) / totals[ctx] + level_gamma[ctx] * lower[gram[1:]]
            gammas.update(level_gamma)
        probs.append(table)

    log10_probs = [{g: math.log10(p) for g, p in table.items()} for table in probs]
    log10_probs[0][(BOS,)] = _BOS_LOG10
    log10_backoffs = {ctx: math.log10(g) for ctx, g in gammas.items() if ctx}
    return NGramModel(
        order=order,
        log10_probs=log10_probs,
        log10_backoffs=log10_backoffs,
        discounts=discounts,
        discount_fallback=fallback,
        vocab=vocab,
    )


def write_arpa(model: NGramModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as an ARPA file (log10 probabilities and backoff weights), atomically.

    N-grams are written in sorted order so the same corpus always gives the same file. ``repr`` keeps every
    digit of the float, so nothing is lost beyond KenLM's own float32 storage.
    """
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as out:
        out.write("\\data\\\n")
        for n, count in enumerate(model.counts(), start=1):
            out.write(f"ngram {n}={count}\n")
        for n, table in enumerate(model.log10_probs, start=1):
            out.write(f"\n\\{n}-grams:\n")
            for gram in sorted(table):
                line = f"{table[gram]!r}\t{' '.join(gram)}"
                bow = model.log10_backoffs.get(gram) if n < model.order else None
                if bow is not None:
                    line += f"\t{bow!r}"
                out.write(line + "\n")
        out.write("\n\\end\\\n")
    return path


def spell_word(word: str, vocab: dict[str, int], word_delimiter: str = "|") -> list[str] | None:
    """The acoustic model's tokens spelling ``word`` (its characters, then the word delimiter).

    Returns None when a character of ``word`` is not in ``vocab`` (the acoustic model cannot emit it).
    """
    if not word or any(c not in vocab for c in word):
        return None
    return [*word, word_delimiter]


def write_lexicon(words: Iterable[str], path: str | os.PathLike, word_delimiter: str = "|") -> Path:
    """Write a flashlight lexicon, one ``word<TAB>c h a r s |`` line per distinct word, sorted, atomically.

    Each word is spelled as its characters followed by ``word_delimiter``: this project's vocabulary spells
    the space between words as ``|``, so a word ends when the model emits it.

    Raises:
        ValueError: a word that is empty, contains whitespace, or is the ``word_delimiter`` itself.
    """
    lines = []
    for word in sorted(set(words)):
        if not word or any(c.isspace() for c in word) or word_delimiter in word:
            raise ValueError(
                f"words: {word!r} cannot be a lexicon entry (empty, whitespace or {word_delimiter!r} inside)"
            )
        lines.append(f"{word}\t{' '.join([*word, word_delimiter])}\n")
    atomic_write_text(path, "".join(lines))
    return Path(path)


def build_lm_dir(
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    vocab: dict[str, int],
    order: int = 3,
    word_delimiter: str = "|",
    source: str | None = None,
) -> Path:
    """Train an n-gram model on ``texts``; write ``lm.arpa``, ``lexicon.txt`` and ``lm.json`` to ``out_dir``.

    The LM is trained on all words; the lexicon holds only the words the acoustic model can spell (every
    character in ``vocab``), the others are counted in ``lm.json`` as ``words_not_in_lexicon``.

    Args:
        texts: normalised transcripts (lowercase, single spaces).
        out_dir: created if missing.
        vocab: the acoustic model's token -> id map (``vocab.json``).
        order: n-gram order.
        word_delimiter: the token that ends a word.
        source: where the texts came from, recorded in ``lm.json``.

    Returns:
        ``out_dir``.
    """
    if word_delimiter not in vocab:
        raise ValueError(f"vocab: has no word delimiter token {word_delimiter!r}")
    out_dir = Path(out_dir)
    texts = list(texts)
    model = train_kneser_ney(texts, order=order)
    write_arpa(model, out_dir / "lm.arpa")
    words = {w for text in texts for w in text.split()}
    spellable = sorted(w for w in words if spell_word(w, vocab, word_delimiter) is not None)
    write_lexicon(spellable, out_dir / "lexicon.txt", word_delimiter)
    info = {
        "order": order,
        "ngram_counts": model.counts(),
        "discounts": [list(d) for d in model.discounts],
        "discount_fallback": model.discount_fallback,
        "sentences": sum(1 for t in texts if t.split()),
        "words": len(words),
        "lexicon_words": len(spellable),
        "words_not_in_lexicon": len(words) - len(spellable),
        "word_delimiter": word_delimiter,
        "source": source,
    }
    atomic_write_text(out_dir / "lm.json", json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    return out_dir
