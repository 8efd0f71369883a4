"""Tests of CTC forced alignment (:mod:`asr_ctc.align`), token/word timestamps and CTM (:mod:`asr_ctc.decode`)
and the alignment figure (:mod:`asr_ctc.plots`)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from asr_ctc import ctc_loss, forced_align
from asr_ctc.decode import (
    TimedWord,
    TokenSpan,
    WordSpan,
    apply_blank_penalty,
    collapse,
    timed_words,
    to_ctm,
    token_spans,
    word_spans,
)
from asr_ctc.plots import plot_alignment

DTYPES = (torch.float32, torch.float64)
SCORE_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def brute_force(log_probs: torch.Tensor, target: list[int], blank: int) -> tuple[list[int], float, float]:
    """Best frame path, its score and the log-likelihood, over ALL C^T frame sequences collapsing to target.

    Args:
        log_probs: (T_b, C), one utterance's valid frames.
    """
    rows = log_probs.double().tolist()
    frames, n_classes = log_probs.shape
    best_path, best, total = None, -math.inf, []
    for path in itertools.product(range(n_classes), repeat=frames):
        if collapse(path, blank) != target:
            continue
        score = math.fsum(row[c] for row, c in zip(rows, path, strict=True))
        total.append(score)
        if score > best:
            best_path, best = list(path), score
    if not total:
        return [], -math.inf, -math.inf
    top = max(total)
    log_lik = top + math.log(math.fsum(math.exp(s - top) for s in total)) if top > -math.inf else top
    return best_path, best, log_lik


def random_log_probs(gen, shape, dtype):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).log_softmax(-1).to(dtype)


def check_against_brute_force(log_probs, targets_list, input_lengths, blank, labels, scores):
    """labels/scores (B, T) of forced_align vs the brute force of each utterance; log_probs (T, B, C)."""
    dtype = log_probs.dtype
    frames = log_probs.shape[0]
    for b, (target, n) in enumerate(zip(targets_list, input_lengths, strict=True)):
        path, best, log_lik = brute_force(log_probs[:n, b], target, blank)
        assert labels[b, :n].tolist() == path, f"utterance {b}"
        assert labels[b, n:].tolist() == [blank] * (frames - n)
        assert scores[b, n:].tolist() == [0.0] * (frames - n)
        assert scores.dtype == dtype
        expected = log_probs[torch.arange(n), b, labels[b, :n]]
        assert torch.equal(scores[b, :n], expected)  # the gathered log-probs, bit for bit
        total = scores[b].double().sum()
        torch.testing.assert_close(total, torch.tensor(best, dtype=torch.float64), **SCORE_TOL[dtype])
        assert float(total) <= log_lik + 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blank", [0, 2])
def test_padded_batch_matches_brute_force(dtype, blank):
    gen = torch.Generator().manual_seed(10 + blank)
    n_classes, frames = 4, 6
    others = [c for c in range(n_classes) if c != blank]
    # varied lengths, a repeat (needs a blank between), an empty target, a target filling all frames
    targets_list = [
        [others[0], others[1]],
        [others[2], others[2]],
        [],
        [others[1], others[0], others[2]],
        [others[0], others[0], others[1]],
        [others[2]],
    ]
    input_lengths = [6, 5, 4, 3, 6, 1]
    padded = torch.full((len(targets_list), 4), others[0])  # padding holds a real id: it must be ignored
    for b, t in enumerate(targets_list):
        padded[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    log_probs = random_log_probs(gen, (frames, len(targets_list), n_classes), dtype)
    target_lengths = torch.tensor([len(t) for t in targets_list])
    labels, scores = forced_align(log_probs, padded, torch.tensor(input_lengths), target_lengths, blank)
    assert labels.shape == (len(targets_list), frames) and labels.dtype == torch.int64
    check_against_brute_force(log_probs, targets_list, input_lengths, blank, labels, scores)


@pytest.mark.parametrize("dtype", DTYPES)
def test_concatenated_and_sequence_lengths_match_brute_force(dtype):
    gen = torch.Generator().manual_seed(3)
    targets_list = [[1, 2, 1], [3], [2, 2], [1, 3, 3, 1]]
    input_lengths = [7, 2, 7, 7]
    log_probs = random_log_probs(gen, (7, 4, 4), dtype)
    concatenated = torch.tensor([c for t in targets_list for c in t])
    labels, scores = forced_align(log_probs, concatenated, input_lengths, [len(t) for t in targets_list])
    check_against_brute_force(log_probs, targets_list, input_lengths, 0, labels, scores)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_and_batch_of_one(dtype):
    gen = torch.Generator().manual_seed(4)
    log_probs = random_log_probs(gen, (7, 3), dtype)
    target = [1, 2, 2]
    labels, scores = forced_align(log_probs, torch.tensor(target), 7, 3)
    assert labels.shape == (7,) and scores.shape == (7,)
    check_against_brute_force(log_probs.unsqueeze(1), [target], [7], 0, labels[None], scores[None])
    # 0-d tensor lengths; a (1, T) batch gives the same answer
    labels0, scores0 = forced_align(log_probs, torch.tensor(target), torch.tensor(7), torch.tensor(3))
    labels1, scores1 = forced_align(
        log_probs.unsqueeze(1), torch.tensor([target]), torch.tensor(7), torch.tensor(3)
    )
    assert torch.equal(labels0, labels) and torch.equal(labels1[0], labels)
    assert torch.equal(scores0, scores) and torch.equal(scores1[0], scores)


def test_half_precision_runs_in_float32():
    gen = torch.Generator().manual_seed(5)
    log_probs = random_log_probs(gen, (6, 2, 4), torch.float32)
    targets = torch.tensor([[1, 2], [3, 3]])
    for half in (torch.float16, torch.bfloat16):
        low = log_probs.to(half)
        labels, scores = forced_align(low, targets, [6, 6], [2, 2])
        assert scores.dtype == half
        ref_labels, _ = forced_align(low.float(), targets, [6, 6], [2, 2])
        assert torch.equal(labels, ref_labels)


def _soft_max_score(log_probs, targets, input_lengths, target_lengths, blank, sharpness):
    """(1/k) log sum_paths exp(k * score): above the best path score by at most log(#paths) / k."""
    scaled = log_probs.double() * sharpness
    return -ctc_loss(scaled, targets, input_lengths, target_lengths, blank, reduction="none") / sharpness


@pytest.mark.parametrize("dtype", DTYPES)
def test_bigger_random_batches_valid_and_maximal(dtype):
    gen = torch.Generator().manual_seed(6)
    frames, batch, n_classes, blank = 80, 6, 7, 3
    input_lengths = torch.tensor([80, 73, 40, 80, 12, 55])
    target_lengths = torch.tensor([20, 30, 15, 0, 5, 25])
    ids = torch.randint(0, n_classes - 1, (batch, 30), generator=gen)
    ids = ids + (ids >= blank).long()
    # many adjacent repeats
    same = torch.rand(ids.shape, generator=gen) < 0.3
    for j in range(1, ids.shape[1]):
        ids[:, j] = torch.where(same[:, j], ids[:, j - 1], ids[:, j])
    log_probs = random_log_probs(gen, (frames, batch, n_classes), dtype)
    labels, scores = forced_align(log_probs, ids, input_lengths, target_lengths, blank)
    log_lik = -ctc_loss(log_probs, ids, input_lengths, target_lengths, blank, reduction="none")
    sharpness = 1e6
    soft_max = _soft_max_score(log_probs, ids, input_lengths, target_lengths, blank, sharpness)
    for b in range(batch):
        n, length = int(input_lengths[b]), int(target_lengths[b])
        assert collapse(labels[b, :n].tolist(), blank) == ids[b, :length].tolist()
        assert (labels[b, n:] == blank).all() and (scores[b, n:] == 0).all()
        total = scores[b].double().sum()
        assert total <= log_lik[b].double() + 1e-4
        # the best path's score is the max over paths: (1/k) logsumexp(k * path scores) -> max as k grows
        slack = n * math.log(3) / sharpness + (1e-3 if dtype == torch.float32 else 1e-9)
        assert float(soft_max[b]) - slack <= float(total) <= float(soft_max[b]) + 1e-9 * abs(float(total))


def test_ties_follow_the_documented_order():
    """Uniform posteriors make every path equally good: the documented tie rule emits tokens first."""
    log_probs = torch.full((6, 3, 4), -math.log(4))
    targets = torch.tensor([[1, 2, 0], [3, 3, 0], [1, 2, 3]])
    labels, scores = forced_align(log_probs, targets, [6, 6, 6], [2, 2, 3])
    assert labels.tolist() == [[1, 2, 0, 0, 0, 0], [3, 0, 3, 0, 0, 0], [1, 2, 3, 0, 0, 0]]
    assert torch.equal(scores, log_probs[:, :, 0].t())


def test_no_frames_and_empty_target():
    log_probs = torch.randn(4, 2, 3).log_softmax(-1)
    labels, scores = forced_align(log_probs, torch.tensor([[1], [2]]), [0, 4], [0, 1])
    assert labels[0].tolist() == [0, 0, 0, 0] and scores[0].tolist() == [0.0] * 4
    assert collapse(labels[1].tolist(), 0) == [2]


def test_infeasible_targets_name_the_utterance():
    log_probs = torch.randn(5, 3, 4).log_softmax(-1)
    targets = torch.tensor([[1, 2, 0], [1, 1, 2], [3, 0, 0]])
    # utterance 1: 3 labels + 1 repeat = 4 frames needed, 3 given
    with pytest.raises(ValueError, match=r"utterance 1\b.*needs at least 4 frames.*input_lengths\[1\] = 3"):
        forced_align(log_probs, targets, [5, 3, 5], [2, 3, 1])
    with pytest.raises(ValueError, match=r"utterance 2\b.*needs at least 1 frames.*= 0"):
        forced_align(log_probs, targets, [5, 5, 0], [2, 3, 1])
    # every path of utterance 0 crosses a -inf
    dead = log_probs.clone()
    dead[:, 0, 2] = -math.inf
    with pytest.raises(ValueError, match=r"utterance 0\b.*probability 0.*needs at least 2 frames.* = 5"):
        forced_align(dead, targets, [5, 5, 5], [2, 3, 1])
    # -inf off the best path is fine
    ok = log_probs.clone()
    ok[2, 2, 3] = -math.inf
    labels, _ = forced_align(ok, targets, [5, 5, 5], [2, 3, 1])
    assert labels[2, 2] != 3


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(log_probs=torch.zeros(5, 2, 3, 1)), "log_probs"),
        (dict(log_probs=torch.zeros(5, 2, 4, dtype=torch.int64)), "log_probs"),
        (dict(blank=4), "blank"),
        (dict(targets=torch.tensor([[1, 0], [2, 3]])), "targets"),  # blank inside a target
        (dict(targets=torch.tensor([[1, 4], [2, 3]])), "targets"),  # id out of range
        (dict(input_lengths=[5, 6]), "input_lengths"),
        (dict(input_lengths=[5]), "input_lengths"),
        (dict(target_lengths=[2, 3]), "target_lengths"),
        (dict(target_lengths=torch.tensor(2)), "target_lengths"),  # 0-d only for a batch of one
        (dict(log_probs=torch.full((5, 2, 4), math.nan)), "log_probs"),
        (dict(blank_penalty=math.inf), "blank_penalty"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(
        log_probs=torch.randn(5, 2, 4).log_softmax(-1),
        targets=torch.tensor([[1, 2], [2, 3]]),
        input_lengths=[5, 5],
        target_lengths=[2, 2],
        blank=0,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        forced_align(**args)


# ---- blank penalty ----


def test_blank_penalty_zero_is_plain_alignment_and_greedy_exactly():
    gen = torch.Generator().manual_seed(21)
    log_probs = random_log_probs(gen, (7, 3, 5), torch.float32)
    targets, lengths, target_lengths = torch.tensor([[1, 2, 2], [3, 4, 1], [4, 0, 0]]), [7, 6, 4], [3, 3, 1]
    plain = forced_align(log_probs, targets, lengths, target_lengths)
    zero = forced_align(log_probs, targets, lengths, target_lengths, blank_penalty=0.0)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])
    assert apply_blank_penalty(log_probs, 0, 0.0) is log_probs  # untouched, not even copied
    shifted = apply_blank_penalty(log_probs, 2, 1.5)
    assert torch.equal(shifted[..., 2], log_probs[..., 2] - 1.5)
    assert torch.equal(shifted[..., [0, 1, 3, 4]], log_probs[..., [0, 1, 3, 4]])
    with pytest.raises(ValueError, match="blank"):
        apply_blank_penalty(log_probs, 5, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", [0.7, 2.5, -1.0])
def test_blank_penalty_path_is_the_brute_force_best_under_the_penalised_scores(dtype, penalty):
    gen = torch.Generator().manual_seed(30)
    blank, n_classes, frames = 1, 4, 6
    targets_list = [[0, 2], [3, 3], [2], [0, 3, 2], []]
    input_lengths = [6, 5, 6, 4, 3]
    padded = torch.zeros((len(targets_list), 3), dtype=torch.long)
    for b, t in enumerate(targets_list):
        padded[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    log_probs = random_log_probs(gen, (frames, len(targets_list), n_classes), dtype)
    penalised = log_probs.clone()
    penalised[..., blank] -= penalty
    labels, scores = forced_align(
        log_probs, padded, input_lengths, [len(t) for t in targets_list], blank, blank_penalty=penalty
    )
    changed = 0
    for b, (target, n) in enumerate(zip(targets_list, input_lengths, strict=True)):
        path, best, _ = brute_force(penalised[:n, b], target, blank)
        assert labels[b, :n].tolist() == path, f"utterance {b}"
        # the reported scores are the unpenalised log-probs of that path; re-penalised they sum to the best
        assert torch.equal(scores[b, :n], log_probs[torch.arange(n), b, labels[b, :n]])
        n_blank = sum(label == blank for label in path)
        total = scores[b, :n].double().sum() - penalty * n_blank
        torch.testing.assert_close(total, torch.tensor(best, dtype=torch.float64), **SCORE_TOL[dtype])
        changed += path != brute_force(log_probs[:n, b], target, blank)[0]
    assert changed > 0  # the penalty moved at least one path: the check above has something to catch


def test_greedy_decode_blank_penalty(tiny_processor):
    from asr_ctc.decode import greedy_decode

    blank = tiny_processor.tokenizer.pad_token_id
    letter = tiny_processor.tokenizer.convert_tokens_to_ids("a")
    log_probs = torch.full((1, 4, len(tiny_processor.tokenizer)), -10.0)
    log_probs[0, :, blank] = -0.1
    log_probs[0, 1, letter] = -0.5  # second best at frame 1: the blank wins unless penalised by > 0.4
    assert greedy_decode(log_probs, None, tiny_processor.tokenizer) == [""]
    assert greedy_decode(log_probs, None, tiny_processor.tokenizer, blank_penalty=0.0) == [""]
    assert greedy_decode(log_probs, None, tiny_processor.tokenizer, blank_penalty=0.3) == [""]
    assert greedy_decode(log_probs, None, tiny_processor.tokenizer, blank_penalty=0.5) == ["a"]


# ---- token and word spans, CTM ----

# blank 0, word delimiter 2: "|ab|a a" -> tokens 2, 3, 4(x2 frames), 2, 3, 3 (a repeat across a blank)
PATH = [0, 2, 3, 3, 0, 4, 4, 2, 0, 3, 0, 3, 0]
SCORES = [-0.5, -0.1, -0.2, -0.3, -1.0, -0.4, -0.6, -0.05, -2.0, -0.7, -3.0, -0.9, -0.1]
VOCAB = ["<pad>", "<unk>", "|", "a", "b"]


def test_token_spans_exact():
    spans = token_spans(PATH, blank=0)
    assert spans == [
        TokenSpan(2, 1, 2),
        TokenSpan(3, 2, 4),
        TokenSpan(4, 5, 7),
        TokenSpan(2, 7, 8),
        TokenSpan(3, 9, 10),
        TokenSpan(3, 11, 12),
    ]
    assert [s.token for s in spans] == collapse(PATH, 0)
    scored = token_spans(torch.tensor(PATH), 0, torch.tensor(SCORES, dtype=torch.float64))
    assert [s.log_prob for s in scored] == pytest.approx([-0.1, -0.5, -1.0, -0.05, -0.7, -0.9])
    assert scored[1].confidence == pytest.approx(math.exp(-0.25))
    assert spans[0].confidence is None
    assert token_spans([], 0) == [] and token_spans([0, 0], 0) == []
    assert token_spans([5, 5, 5], 0) == [TokenSpan(5, 0, 3)]
    with pytest.raises(ValueError, match="frame_scores"):
        token_spans(PATH, 0, SCORES[:-1])


def test_word_spans_timed_words_and_ctm():
    spans = token_spans(PATH, 0, SCORES)
    words = word_spans(spans, word_delimiter_id=2)
    assert words == [WordSpan((spans[1], spans[2])), WordSpan((spans[4], spans[5]))]
    assert (words[0].start, words[0].end) == (2, 7) and (words[1].start, words[1].end) == (9, 12)
    assert words[0].text(VOCAB) == "ab" and words[1].text(dict(enumerate(VOCAB))) == "aa"
    assert words[0].log_prob == pytest.approx(-1.5)
    assert words[0].confidence == pytest.approx(math.exp(-1.5 / 4))  # 4 token frames
    # delimiters at the ends and doubled make no empty words
    assert word_spans([TokenSpan(2, 0, 1), TokenSpan(2, 1, 2)], 2) == []
    assert word_spans([TokenSpan(3, 0, 1), TokenSpan(2, 1, 2), TokenSpan(2, 3, 4)], 2) == [
        WordSpan((TokenSpan(3, 0, 1),))
    ]

    timed = timed_words(words, VOCAB, seconds_per_frame=0.02)
    assert [(w.word, w.start, w.end) for w in timed] == [
        ("ab", pytest.approx(0.04), pytest.approx(0.14)),
        ("aa", pytest.approx(0.18), pytest.approx(0.24)),
    ]
    assert to_ctm("utt7", timed) == (
        f"utt7 A 0.040 0.100 ab {math.exp(-1.5 / 4):.4f}\nutt7 A 0.180 0.060 aa {math.exp(-1.6 / 2):.4f}\n"
    )
    plain = timed_words(word_spans(token_spans(PATH, 0), 2), VOCAB, 0.025)
    assert to_ctm("u", plain, channel="1") == "u 1 0.050 0.125 ab\nu 1 0.225 0.075 aa\n"
    assert to_ctm("u", []) == ""
    with pytest.raises(ValueError, match="utterance_id"):
        to_ctm("utt 7", timed)
    with pytest.raises(ValueError, match="words"):
        to_ctm("u", [TimedWord("a b", 0.0, 1.0)])
    with pytest.raises(ValueError, match="seconds_per_frame"):
        timed_words(words, VOCAB, 0.0)


def test_forced_align_to_ctm_end_to_end():
    """Posteriors that spell "ab|b" on known frames: the alignment and CTM recover those frames."""
    frames, n_classes = 12, 5
    log_probs = torch.full((frames, n_classes), math.log(0.01))
    truth = [0, 3, 3, 0, 4, 0, 2, 0, 4, 4, 4, 0]
    log_probs[torch.arange(frames), truth] = math.log(0.96)
    target = torch.tensor([3, 4, 2, 4])
    labels, scores = forced_align(log_probs, target, frames, 4)
    assert labels.tolist() == truth
    words = timed_words(word_spans(token_spans(labels, 0, scores), 2), VOCAB, 0.02)
    assert to_ctm("x", words) == "x A 0.020 0.080 ab 0.9600\nx A 0.160 0.060 b 0.9600\n"


def test_plot_alignment_writes_png(tmp_path):
    gen = torch.Generator().manual_seed(8)
    log_probs = random_log_probs(gen, (20, 5), torch.float32)
    labels, scores = forced_align(log_probs, torch.tensor([3, 2, 4]), 20, 3)
    words = timed_words(word_spans(token_spans(labels, 0, scores), 2), VOCAB, 0.02)
    waveform = torch.randn(6400, generator=gen)
    out = tmp_path / "fig" / "align.png"
    plot_alignment(out, waveform, 16000, log_probs, labels, words, VOCAB, 0.02, title="smoke")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["align.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="frame_labels"):
        plot_alignment(out, waveform, 16000, log_probs, labels[:-1], words, VOCAB, 0.02)
    with pytest.raises(ValueError, match="token_names"):
        plot_alignment(out, waveform, 16000, log_probs, labels, words, VOCAB[:3], 0.02)
