"""The Kneser-Ney estimator and its ARPA file (against hand arithmetic and KenLM), lexicon/LM directory,
the build-lm command, and lexicon/LM beam search decoding (flashlight-text)."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
import torch

from asr_ctc.cli import build_lm_main
from asr_ctc.data.manifest import write_manifest
from asr_ctc.decode import BeamSearchDecoder, collapse, greedy_ids, tune_lm_weights
from asr_ctc.lm import (
    EOS,
    FALLBACK_DISCOUNTS,
    UNK,
    _discounts,
    build_lm_dir,
    train_kneser_ney,
    write_arpa,
    write_lexicon,
)

# Toy corpus for the hand computation: "a b c" four times makes adjusted counts of 4 and 5, so the
# discounts (fallback 0.5, 1, 1.5) remove different fractions in different contexts.
TOY = ["a b c", "a b c", "a b c", "a b c", "a b d", "b c", "a c"]


def random_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Sentences over 12 words with skewed frequencies: every order gets n-grams seen 1..4+ times."""
    rng = random.Random(seed)
    words = "the a cat dog sat ran on mat home big red fast".split()
    weights = [1.0 / (i + 1) for i in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 7))) for _ in range(n)]


def contexts(model) -> set[tuple[str, ...]]:
    """Every context the model has seen (prefixes of listed n-grams) that can be followed by a word."""
    out = {gram[:-1] for table in model.log10_probs for gram in table}
    return {ctx for ctx in out if not ctx or ctx[-1] != EOS}


# ----------------------------------------------------------------------------------------- estimator


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("corpus", ["toy", "random"])
def test_distributions_sum_to_one(order, corpus):
    sentences = TOY if corpus == "toy" else random_corpus()
    model = train_kneser_ney(sentences, order=order)
    if corpus == "random":
        # The random corpus must exercise the real discount formula, not only the fallback.
        assert not any(model.discount_fallback[1:])
    words = sorted(model.vocab)
    assert EOS in words and UNK in words
    ctxs = contexts(model)
    assert len(ctxs) > 5
    # Unseen contexts too: they back off to a shorter one and must still be distributions.
    ctxs |= {("<s>", "zebra"), ("zebra", "a"), ("c", "a", "b")}
    for ctx in ctxs:
        total = sum(10 ** model.log10_prob(w, ctx) for w in words)
        assert total == pytest.approx(1.0, abs=1e-6), ctx


def test_discount_formula_by_hand():
    # Chen & Goodman with n1..n4 = 10, 4, 2, 1:  Y = 10 / (10 + 2 * 4) = 5/9
    y = 10 / 18
    expected = (1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2)  # (5/9, 7/6, 17/9)
    d, fallback = _discounts({1: 10, 2: 4, 3: 2, 4: 1})
    assert not fallback
    assert d == pytest.approx(expected)
    assert d == pytest.approx((5 / 9, 7 / 6, 17 / 9))
    # Degenerate count-of-counts: nothing seen 3 times (division by zero) -> documented fallback.
    assert _discounts({1: 5, 2: 1, 4: 2}) == (FALLBACK_DISCOUNTS, True)
    # n2 = 0 would give D1 = 1 - 0 = 1 but D2 divides by zero -> fallback as well.
    assert _discounts({1: 3, 3: 1, 4: 1}) == (FALLBACK_DISCOUNTS, True)


def test_hand_computed_probabilities():
    """Trigram model of TOY, worked out with the formulas of the module docstring.

    Tokens: 4 x "<s> a b c </s>", "<s> a b d </s>", "<s> b c </s>", "<s> a c </s>".
    Each order lacks n-grams of adjusted count 2 or 3, so all use the fallback discounts (0.5, 1, 1.5).

    Trigrams (raw counts): <s> a b 5, a b c 4, b c </s> 5, a b d 1, b d </s> 1, <s> b c 1, <s> a c 1,
    a c </s> 1.
    Bigrams: <s> a 6 and <s> b 1 (raw: they start with <s>); the others count distinct left words among
    the trigram types: a b 1 (<s>), b c 2 (a, <s>), c </s> 2 (b, a), b d 1, d </s> 1, a c 1.
    Unigrams (distinct left words among bigram types): a 1, b 2 (<s>, a), c 2 (b, a), d 1, </s> 2 (c, d);
    total 8; vocabulary {a, b, c, d, </s>, <unk>}: 6 words.
    """
    model = train_kneser_ney(TOY, order=3)
    assert model.discount_fallback == [True, True, True]
    d1, d2, d3 = 0.5, 1.0, 1.5

    # Unigrams: removed mass 2 * d1 (a, d) + 3 * d2 (b, c, </s>) = 4 of 8 -> gamma0 = 1/2, uniform 1/6.
    gamma0 = (2 * d1 + 3 * d2) / 8
    assert gamma0 == 0.5
    p_c = (2 - d2) / 8 + gamma0 / 6  # 1/8 + 1/12 = 5/24
    p_d = (1 - d1) / 8 + gamma0 / 6  # 1/16 + 1/12 = 7/48
    p_unk = gamma0 / 6  # 1/12
    p_a = (1 - d1) / 8 + gamma0 / 6  # 7/48
    # Bigram context "b": c 2, d 1 -> total 3, removed d2 + d1 = 1.5 -> gamma 1/2.
    gamma_b = (d2 + d1) / 3
    p_c_b = (2 - d2) / 3 + gamma_b * p_c  # 1/3 + 5/48 = 21/48
    p_d_b = (1 - d1) / 3 + gamma_b * p_d  # 1/6 + 7/96 = 23/96
    # Bigram context "<s>": a 6, b 1 -> total 7, removed d3 + d1 = 2 -> gamma 2/7.
    gamma_bos = (d3 + d1) / 7
    p_a_bos = (6 - d3) / 7 + gamma_bos * p_a  # 9/14 + 1/24
    # Trigram context "a b": c 4, d 1 -> total 5, removed d3 + d1 = 2 -> gamma 2/5.
    gamma_ab = (d3 + d1) / 5
    p_c_ab = (4 - d3) / 5 + gamma_ab * p_c_b  # 1/2 + 0.4 * 21/48 = 0.675
    # Trigram context "<s> b": c 1 -> total 1, removed d1 -> gamma 1/2; "<s> b d" unseen, "b d" seen.
    gamma_bos_b = d1 / 1
    p_d_bos_b = gamma_bos_b * p_d_b  # 23/192
    # Unknown word after "a b": backs off twice, down to the uniform share of <unk>.
    p_unk_ab = gamma_ab * gamma_b * p_unk  # 0.4 * 0.5 / 12 = 1/60

    assert p_c_ab == pytest.approx(0.675)
    assert p_d_bos_b == pytest.approx(23 / 192)
    assert p_unk_ab == pytest.approx(1 / 60)
    assert p_a_bos == pytest.approx(9 / 14 + 1 / 24)
    cases = [
        ("c", ("a", "b"), p_c_ab),
        ("d", ("<s>", "b"), p_d_bos_b),
        ("zebra", ("a", "b"), p_unk_ab),
        ("a", ("<s>",), p_a_bos),
        ("c", ("b",), p_c_b),
        ("d", (), p_d),
        # An unseen context ("d a") is shortened to "a": a b 1, a c 1 -> gamma 1/2.
        ("c", ("d", "a"), (1 - d1) / 2 + 0.5 * p_c),
    ]
    for word, ctx, expected in cases:
        assert 10 ** model.log10_prob(word, ctx) == pytest.approx(expected, rel=1e-12), (word, ctx)


def test_bad_input():
    with pytest.raises(ValueError, match="order"):
        train_kneser_ney(["a b"], order=0)
    with pytest.raises(ValueError, match="non-empty sentence"):
        train_kneser_ney(["", "  "])
    with pytest.raises(ValueError, match="reserved"):
        train_kneser_ney(["a </s> b"])
    with pytest.raises(ValueError, match="<s> is never predicted"):
        train_kneser_ney(["a b"]).log10_prob("<s>")


# ------------------------------------------------------------------------------------- ARPA and KenLM


def test_arpa_layout(tmp_path):
    model = train_kneser_ney(TOY, order=3)
    path = write_arpa(model, tmp_path / "lm.arpa")
    text = path.read_text()
    assert text.startswith("\\data\\\nngram 1=7\nngram 2=8\nngram 3=8\n")
    assert text.rstrip().endswith("\\end\\")
    lines = dict(
        (line.split("\t")[1], line.split("\t")) for line in text.splitlines() if line.count("\t") >= 1
    )
    # "a b": probability and its backoff (the trigram context gamma 2/5), both log10.
    assert float(lines["a b"][0]) == pytest.approx(model.log10_probs[1][("a", "b")])
    assert float(lines["a b"][2]) == pytest.approx(math.log10(0.4))
    # Highest-order n-grams carry no backoff; <unk> is listed with its uniform share.
    assert len(lines["a b c"]) == 2
    assert float(lines["<unk>"][0]) == pytest.approx(math.log10(1 / 12))
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("order", [3, 4])
def test_kenlm_scores_match(tmp_path, order):
    """flashlight's KenLM reads our ARPA and gives the same log10 probabilities, word by word."""
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    model = train_kneser_ney(random_corpus(), order=order)
    path = write_arpa(model, tmp_path / "lm.arpa")
    words = Dictionary()
    for w in sorted(model.vocab) + ["zebra"]:  # "zebra" is not in the LM: KenLM maps it to <unk>
        words.add_entry(w)
    words.set_default_index(words.get_index(UNK))
    lm = KenLM(str(path), words)
    sentences = [
        "the cat sat on the mat",
        "red red red dog",
        "fast home the zebra cat ran",
        "mat",
        "big big big big big",
    ]
    for sentence in sentences:
        state = lm.start(False)
        history = ["<s>"]
        total = 0.0
        for w in sentence.split():
            state, score = lm.score(state, words.get_index(w))
            # KenLM's scores are log10 (not natural log); float32 storage limits the agreement.
            assert score == pytest.approx(model.log10_prob(w, history), abs=2e-5), (sentence, w)
            total += score
            history.append(w)
        state, score = lm.finish(state)
        assert score == pytest.approx(model.log10_prob(EOS, history), abs=2e-5)
        assert total + score == pytest.approx(model.sentence_log10_prob(sentence), abs=1e-4)


# ---------------------------------------------------------------------------- lexicon, LM dir, command

VOCAB = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4, "c": 5, "d": 6}


def test_write_lexicon(tmp_path):
    path = write_lexicon(["cab", "a", "cab", "dad"], tmp_path / "lexicon.txt")
    assert path.read_text() == "a\ta |\ncab\tc a b |\ndad\td a d |\n"
    with pytest.raises(ValueError, match="words"):
        write_lexicon(["a|b"], tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="words"):
        write_lexicon([""], tmp_path / "bad.txt")


def test_build_lm_dir(tmp_path):
    texts = ["a cab", "dad bad", "a bed"]  # "bed": "e" is not in VOCAB
    out = build_lm_dir(texts, tmp_path / "lm", VOCAB, order=2, source="unit test")
    lexicon = (out / "lexicon.txt").read_text().splitlines()
    assert lexicon == ["a\ta |", "bad\tb a d |", "cab\tc a b |", "dad\td a d |"]
    info = json.loads((out / "lm.json").read_text())
    assert info["order"] == 2
    assert info["words"] == 5 and info["lexicon_words"] == 4 and info["words_not_in_lexicon"] == 1
    assert info["source"] == "unit test"
    # The LM keeps every word, the unspellable "bed" too; 5 words + <s> </s> <unk>.
    assert info["ngram_counts"][0] == 8
    assert "\tbed" in (out / "lm.arpa").read_text()
    with pytest.raises(ValueError, match="word delimiter"):
        build_lm_dir(texts, tmp_path / "x", {"a": 0})


def test_build_lm_command(tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "vocab.json").write_text(json.dumps(VOCAB))
    (tmp_path / "text.txt").write_text("a cab\ndad  bad\n\nbad cab a\n")
    assert build_lm_main(["--model", str(model_dir), "--text", str(tmp_path / "text.txt")]) == 0
    assert "3-gram LM" in capsys.readouterr().out
    info = json.loads((model_dir / "lm" / "lm.json").read_text())
    assert info["sentences"] == 3 and info["lexicon_words"] == 4

    rows = [{"id": f"u{i}", "audio": f"u{i}.wav", "spoken": t} for i, t in enumerate(["a cab", "cab dad"])]
    write_manifest(tmp_path / "m.tsv", rows, ["id", "audio", "spoken"])
    argv = ["--vocab", str(model_dir / "vocab.json"), "--manifest", str(tmp_path / "m.tsv")]
    argv += ["--text-column", "spoken", "--order", "2", "--out-dir", str(tmp_path / "lm2")]
    assert build_lm_main(argv) == 0
    info = json.loads((tmp_path / "lm2" / "lm.json").read_text())
    assert info["order"] == 2 and info["lexicon_words"] == 3

    # Errors: exit status 2 and a message naming the problem.
    assert build_lm_main(["--vocab", str(model_dir / "vocab.json"), "--text", "t.txt"]) == 2
    assert "--out-dir" in capsys.readouterr().err
    assert build_lm_main(["--model", str(tmp_path / "nowhere"), "--text", str(tmp_path / "text.txt")]) == 2
    assert "vocabulary file not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ decoding

TOKENS = ["<pad>", "<unk>", "|", "a", "c", "d", "e", "g", "h", "o", "t"]


def emissions(frames: list[dict[str, float]]) -> torch.Tensor:
    """(T, C) log-probabilities: each frame's listed tokens get those probabilities, the rest share what
    is left (log_softmax of a low floor for them)."""
    logits = torch.full((len(frames), len(TOKENS)), -8.0)
    for t, dist in enumerate(frames):
        for token, p in dist.items():
            logits[t, TOKENS.index(token)] = math.log(p)
    return torch.log_softmax(logits, dim=-1)


def spell(frames_tokens: str, **uncertain: dict[str, float]) -> list[dict[str, float]]:
    """One confident frame per character ("_" is the blank, " " the delimiter); `uncertain` overrides
    frames by index (key f"f{t}")."""
    out = []
    for t, ch in enumerate(frames_tokens):
        token = {"_": "<pad>", " ": "|"}[ch] if ch in "_ " else ch
        out.append(uncertain.get(f"f{t}", {token: 0.9}))
    return out


def greedy_text(log_probs: torch.Tensor) -> str:
    ids = collapse(greedy_ids(log_probs[None])[0], blank=0)
    return "".join(TOKENS[i] for i in ids).replace("|", " ").strip()


def test_lexicon_fixes_a_letter(tmp_path):
    lexicon = write_lexicon(["cat", "cot", "dog"], tmp_path / "lexicon.txt")
    # "c?t dog" where the middle frame prefers the non-word "e" over "a" (and "o" a little).
    lp = emissions(spell("c_?t_ dog", f2={"e": 0.5, "a": 0.3, "o": 0.1}))
    assert greedy_text(lp) == "cet dog"
    decoder = BeamSearchDecoder(TOKENS, 0, "|", lexicon, None, beam_size=20)
    assert decoder.decode(lp[None], torch.tensor([lp.shape[0]])) == ["cat dog"]
    text, ids = decoder.decode_one(lp)
    assert text == "cat dog"
    assert "".join(TOKENS[i] for i in ids) == "cat|dog"
    # A batch with padding: each utterance is decoded on its own frames only.
    short = emissions(spell("d_og"))
    batch = torch.zeros(2, lp.shape[0], len(TOKENS))
    batch[0] = lp
    batch[1, : short.shape[0]] = short
    batch[1, short.shape[0] :, TOKENS.index("a")] = 5.0  # garbage past the length must not matter
    assert decoder.decode(batch, torch.tensor([lp.shape[0], short.shape[0]])) == ["cat dog", "dog"]


def test_lm_picks_the_likely_word(tmp_path):
    texts = ["the cat"] * 6 + ["the dog", "a cot", "a cat", "the cat a dog"]
    out = build_lm_dir(texts, tmp_path / "lm", {t: i for i, t in enumerate(TOKENS)}, order=3)
    # "the c?t": the acoustics say "cot" (0.5 against 0.4), the LM says "cat" after "the".
    lp = emissions(spell("the c_?t", f6={"o": 0.5, "a": 0.4}))
    common = dict(tokens=TOKENS, blank_id=0, word_delimiter="|", lexicon_path=out / "lexicon.txt")
    assert BeamSearchDecoder(**common, beam_size=20).decode_one(lp)[0] == "the cot"
    with_lm = BeamSearchDecoder(**common, lm_path=out / "lm.arpa", beam_size=20, lm_weight=1.0)
    assert with_lm.decode_one(lp)[0] == "the cat"
    assert BeamSearchDecoder(**common, lm_path=out / "lm.arpa", lm_weight=0.0).decode_one(lp)[0] == "the cot"

    def decode_fn(lm_weight, word_score, log_probs, lengths):
        with_lm.set_weights(lm_weight, word_score)
        return with_lm.decode(log_probs, lengths)

    batch = [lp[None]]
    best_w, best_s, table = tune_lm_weights(
        decode_fn, batch, [torch.tensor([lp.shape[0]])], ["the cat"], [0.0, 1.0], [0.0, 0.5]
    )
    assert best_w == 1.0 and best_s in (0.0, 0.5)
    grid = [(r["lm_weight"], r["word_score"]) for r in table]
    assert grid == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]
    assert table[0]["wer"] == pytest.approx(0.5) and table[2]["wer"] == 0.0


def test_decoder_bad_input(tmp_path):
    lexicon = write_lexicon(["cat"], tmp_path / "lexicon.txt")
    with pytest.raises(ValueError, match="word_delimiter"):
        BeamSearchDecoder(TOKENS, 0, "#", lexicon)
    with pytest.raises(ValueError, match="blank_id"):
        BeamSearchDecoder(TOKENS, 99, "|", lexicon)
    with pytest.raises(FileNotFoundError, match="lm_path"):
        BeamSearchDecoder(TOKENS, 0, "|", lexicon, tmp_path / "none.arpa")
    (tmp_path / "bad.txt").write_text("cat\tc a t |\nxyz\tx y z |\n")
    with pytest.raises(ValueError, match="unknown tokens"):
        BeamSearchDecoder(TOKENS, 0, "|", tmp_path / "bad.txt")
    decoder = BeamSearchDecoder(TOKENS, 0, "|", lexicon)
    with pytest.raises(ValueError, match="log_probs"):
        decoder.decode(torch.zeros(5, len(TOKENS)))
    with pytest.raises(ValueError, match="lengths"):
        decoder.decode(torch.zeros(1, 5, len(TOKENS)), torch.tensor([6]))


def test_missing_flashlight_message(tmp_path, monkeypatch):
    lexicon = write_lexicon(["cat"], tmp_path / "lexicon.txt")
    # A None entry in sys.modules makes `import flashlight.lib.text` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "flashlight.lib.text", None)
    with pytest.raises(ImportError, match=r'pip install "asr-ctc\[lm\]"'):
        BeamSearchDecoder(TOKENS, 0, "|", lexicon)
