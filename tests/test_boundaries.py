"""Word-boundary metrics (:mod:`asr_ctc.boundaries`), eSpeak events -> word times
(:func:`asr_ctc.corpus.espeak.word_times`), and the metrics in ``inference --timestamps``."""

from __future__ import annotations

import json
import statistics

import pytest
from helpers import tiny_run_config

from asr_ctc.boundaries import (
    WordTime,
    match_words,
    score_boundaries,
    summarize_errors,
    words_from_json,
    words_to_json,
)
from asr_ctc.corpus.espeak import SynthesisEvent, word_times
from asr_ctc.decode import TimedWord

# ---- hand-made scoring cases ----

TRUTH = [
    WordTime("play", 0.050, 0.300),
    WordTime("in", 0.300, None),  # eSpeak spoke "in the" as one word: the inner boundary is unknown
    WordTime("the", None, 0.520),
    WordTime("kitchen", 0.520, 1.000),
]


def timed(*words: tuple[str, float, float]) -> list[TimedWord]:
    return [TimedWord(w, s, e) for w, s, e in words]


def test_position_match_scores_every_known_boundary():
    pred = timed(("play", 0.06, 0.33), ("in", 0.4, 0.44), ("the", 0.45, 0.5), ("kitchen", 0.52, 1.15))
    out = score_boundaries([pred], [TRUTH], "position")
    # starts: |60-50|=10, |400-300|=100, kitchen 0 (the's start unknown); ends: 30, 20, 150 (in's unknown)
    starts, ends = [10.0, 100.0, 0.0], [30.0, 20.0, 150.0]
    assert out["start"]["count"] == 3 and out["end"]["count"] == 3
    assert out["start"]["mean_ms"] == pytest.approx(110 / 3, abs=0.01)
    assert out["start"]["median_ms"] == pytest.approx(10.0, abs=1e-6)
    assert out["end"]["median_ms"] == pytest.approx(30.0, abs=1e-6)
    both = starts + ends
    assert out["boundary"]["count"] == 6
    assert out["boundary"]["median_ms"] == pytest.approx(statistics.median(both), abs=1e-6)
    assert out["boundary"]["within_20ms"] == pytest.approx(3 / 6, abs=1e-4)  # 10, 0, 20 (<= is within)
    assert out["boundary"]["within_50ms"] == pytest.approx(4 / 6, abs=1e-4)
    assert out["boundary"]["within_100ms"] == pytest.approx(5 / 6, abs=1e-4)
    assert out["words_truth"] == 4 and out["words_matched"] == 4 and out["utterances_scored"] == 1


def test_position_match_skips_an_utterance_whose_word_count_differs():
    pred = timed(("play", 0.06, 0.3), ("kitchen", 0.5, 1.0))
    out = score_boundaries([pred, None], [TRUTH, TRUTH], "position")
    assert out["utterances_unmatched"] == 1 and out["utterances_scored"] == 0
    assert out["boundary"]["count"] == 0 and out["boundary"]["median_ms"] is None
    assert match_words(["a", "b"], ["a"], "position") is None


def test_edit_match_scores_only_correct_words():
    # "in" substituted by "on", "the" deleted, an inserted "now": only play and kitchen are correct.
    pred = timed(("play", 0.070, 0.310), ("on", 0.3, 0.5), ("kitchen", 0.540, 0.990), ("now", 1.0, 1.2))
    assert match_words([w.word for w in pred], [w.word for w in TRUTH], "edit") == [(0, 0), (2, 3)]
    out = score_boundaries([pred], [TRUTH], "edit")
    assert out["words_matched"] == 2 and out["words_truth"] == 4
    assert out["start"]["count"] == 2 and out["end"]["count"] == 2
    assert out["start"]["mean_ms"] == pytest.approx((20 + 20) / 2, abs=1e-6)
    assert out["end"]["mean_ms"] == pytest.approx((10 + 10) / 2, abs=1e-6)
    # The edits are as few as the WER's: the pairs found here never exceed jiwer's hits, and equal them
    # when jiwer's alignment is also the one with the most hits.
    import jiwer

    for hyp, ref in [("a b c d", "a x c d e"), ("b a", "a b"), ("a a a", "a"), ("x y", "a b c")]:
        pairs = match_words(hyp.split(), ref.split(), "edit")
        assert all(hyp.split()[h] == ref.split()[r] for h, r in pairs)
        assert [p[0] for p in pairs] == sorted({p[0] for p in pairs})  # monotone, one-to-one
        assert len(pairs) == jiwer.process_words(ref, hyp).hits
    # case does not matter, an empty hypothesis matches nothing
    assert match_words(["PLAY"], ["play"], "edit") == [(0, 0)]
    assert match_words([], ["play"], "edit") == []


def test_per_group_summaries_partition_the_overall_one():
    exact = timed(("play", 0.05, 0.3), ("in", 0.3, 0.4), ("the", 0.4, 0.52), ("kitchen", 0.52, 1.0))
    late = [TimedWord(w.word, w.start + 0.08, w.end + 0.08) for w in exact]
    out = score_boundaries([exact, late, late], [TRUTH] * 3, "position", groups=["f3", "m1", "m1"])
    assert set(out["per_group"]) == {"f3", "m1"}
    assert out["per_group"]["f3"]["boundary"]["mean_ms"] == pytest.approx(0.0, abs=1e-6)
    assert out["per_group"]["m1"]["boundary"]["median_ms"] == pytest.approx(80.0, abs=1e-6)
    assert out["per_group"]["m1"]["boundary"]["within_50ms"] == 0.0
    assert out["boundary"]["count"] == 18
    assert out["boundary"]["within_50ms"] == pytest.approx(6 / 18, abs=1e-4)
    with pytest.raises(ValueError, match="groups"):
        score_boundaries([exact], [TRUTH], "position", groups=["a", "b"])
    with pytest.raises(ValueError, match="match"):
        score_boundaries([exact], [TRUTH], "nearest")


def test_summaries_of_nothing_are_empty_not_zero():
    out = summarize_errors([], [])
    assert out["boundary"] == {
        "count": 0,
        "mean_ms": None,
        "median_ms": None,
        "within_20ms": None,
        "within_50ms": None,
        "within_100ms": None,
    }


def test_words_json_round_trip_and_bad_values():
    text = words_to_json(TRUTH)
    assert "\t" not in text and "\n" not in text
    assert words_from_json(text) == TRUTH
    assert words_from_json(json.loads(text)) == TRUTH  # a JSONL manifest gives the parsed list
    for bad, what in [
        ("[[", "not JSON"),
        ('{"a": 1}', "list"),
        ('[["a", 0.1]]', r"words\[0\]"),
        ('[["a", 0.5, 0.1]]', "start after end"),
        ('[["a", -1, 0.1]]', "seconds"),
        ('[["", 0, 0.1]]', "non-empty"),
        ('[["a", true, 0.1]]', "seconds"),
    ]:
        with pytest.raises(ValueError, match=what):
            words_from_json(bad)


# ---- eSpeak events -> word times (hand-made event streams) ----


def ph(pos: int, sample: int, name: str = "a") -> SynthesisEvent:
    return SynthesisEvent("phoneme", pos, sample, name)


def test_word_times_from_events_with_a_pause_and_a_merged_word():
    text = "play in the room"  # positions 1, 6, 9, 13
    events = [
        SynthesisEvent("word", 1, 0),
        ph(1, 100, "p"),
        ph(1, 200, "l"),
        ph(1, 300, "eI"),
        ph(1, 400, "_:"),  # a pause ends "play"
        SynthesisEvent("word", 6, 500),
        ph(6, 500, "I"),
        ph(6, 600, "n"),
        ph(6, 700, "D"),  # "the" inside "in": no event of its own
        ph(6, 800, "@"),
        SynthesisEvent("word", 13, 900),
        ph(13, 900, "r"),
        ph(13, 1000, "u:"),
        ph(13, 1100, "m"),
        ph(17, 1200, "_"),
    ]
    got = word_times(text, events, sample_rate=1000, num_samples=1250)
    assert got == [
        WordTime("play", 0.1, 0.4),
        WordTime("in", 0.5, None),
        WordTime("the", None, 0.9),
        WordTime("room", 0.9, 1.2),
    ]
    # without a closing pause the last word ends with the audio; times clip to the (resampled) duration
    got = word_times(text, events[:-1], sample_rate=1000, num_samples=1250, duration=1.2)
    assert got[-1] == WordTime("room", 0.9, 1.2)


def test_word_times_a_leading_silent_word_takes_the_group_start():
    events = [ph(3, 100, "b"), ph(3, 200, "i:"), ph(7, 300, "s")]
    got = word_times("a bee sting", events, sample_rate=1000, num_samples=400)
    assert got == [WordTime("a", 0.1, None), WordTime("bee", None, 0.3), WordTime("sting", 0.3, 0.4)]


def test_word_times_a_token_read_as_several_words_stays_one_word():
    # "play 25": eSpeak says "twenty" at position 6 and "five" at 7, inside the token "25"
    events = [ph(1, 100, "p"), ph(1, 200, "eI"), ph(6, 300, "t"), ph(6, 400, "i"), ph(7, 500, "f")]
    got = word_times("play 25", events, sample_rate=1000, num_samples=700)
    assert got == [WordTime("play", 0.1, 0.3), WordTime("25", 0.3, 0.7)]
    # word events are not what decides: only phonemes (a word event without phonemes changes nothing)
    assert word_times("play 25", [SynthesisEvent("word", 6, 250), *events], 1000, 700) == got


# ---- inference --timestamps writes the metrics ----


def test_inference_timestamps_reports_boundary_metrics(tiny_corpus, tmp_path):
    from asr_ctc.cli import inference_main
    from asr_ctc.config import config_from_dict
    from asr_ctc.finetune import run_finetune

    run = tmp_path / "run"
    raw = tiny_run_config(tiny_corpus, run, max_steps=5, learning_rate=5e-3, eval_strategy="no", save_steps=5)
    run_finetune(config_from_dict(raw))
    out = tmp_path / "inference"
    assert inference_main(["--model", str(run), "--output-dir", str(out), "--timestamps"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    b = summary["boundaries"]
    assert b["truth"].endswith("test.tsv")
    ref, hyp = b["reference"], b["hypothesis"]
    assert ref["match"] == "position" and hyp["match"] == "edit"
    # every test utterance's reference fits the tiny model's frames: all scored, word for word
    assert ref["utterances_scored"] == summary["num_utterances"] and ref["utterances_unmatched"] == 0
    assert ref["words_matched"] == ref["words_truth"] > 0
    assert 0 < ref["start"]["count"] <= ref["words_truth"]
    assert ref["boundary"]["median_ms"] >= 0 and 0 <= ref["boundary"]["within_100ms"] <= 1
    assert hyp["words_matched"] <= hyp["words_truth"]
    # per held-out voice: the test split's variants, which together hold every boundary
    corpus = json.loads((tiny_corpus / "corpus.json").read_text())
    assert set(ref["per_group"]) <= set(corpus["test_variants"])
    assert sum(g["boundary"]["count"] for g in ref["per_group"].values()) == ref["boundary"]["count"]
    # a blank penalty changes the alignment's inputs; 0 reproduces the run above
    again = tmp_path / "again"
    assert inference_main(["--model", str(run), "--output-dir", str(again), "--timestamps"]) == 0
    assert json.loads((again / "summary.json").read_text())["boundaries"] == b
    penalised = tmp_path / "penalised"
    args = ["--model", str(run), "--output-dir", str(penalised), "--timestamps", "--blank-penalty", "5"]
    assert inference_main(args) == 0
    penalised_summary = json.loads((penalised / "summary.json").read_text())
    assert penalised_summary["blank_penalty"] == 5.0 and summary["blank_penalty"] == 0.0
    assert penalised_summary["boundaries"]["reference"] != ref
