"""eSpeak synthesis, the sentence grammar, and the synthetic corpus builder."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_ctc.corpus import grammar
from asr_ctc.corpus.espeak import ESpeakError, ESpeakSynthesizer
from asr_ctc.corpus.synthetic import make_synthetic_corpus, plan_corpus, read_word_times
from asr_ctc.data.manifest import read_manifest

SENTENCE = "play some jazz by miles on spotify"


@pytest.fixture(scope="module")
def synth():
    with ESpeakSynthesizer() as synthesizer:
        yield synthesizer


def test_synthesis_has_plausible_duration_and_is_not_silent(synth):
    audio = synth.synthesize(SENTENCE, voice="en-us+f3")
    assert synth.sample_rate == 22050
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / synth.sample_rate
    words = len(SENTENCE.split())
    assert 0.3 * words < seconds < 1.0 * words, seconds
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.02  # speech, not silence
    # Speech fills the utterance: at most a short silence at either end.
    voiced = np.flatnonzero(np.abs(audio) > 0.01)
    assert voiced[0] / synth.sample_rate < 0.3 and (len(audio) - voiced[-1]) / synth.sample_rate < 0.3


def test_rate_and_pitch_change_the_audio(synth):
    slow = synth.synthesize(SENTENCE, rate=140)
    fast = synth.synthesize(SENTENCE, rate=200)
    assert len(slow) > 1.2 * len(fast)
    low = synth.synthesize(SENTENCE, pitch=30)
    high = synth.synthesize(SENTENCE, pitch=70)
    assert len(low) != len(high) or not np.array_equal(low, high)


def test_synthesis_does_not_depend_on_history(synth):
    # eSpeak carries pitch-flutter and gain state across utterances; each call must start afresh.
    first = synth.synthesize(SENTENCE, voice="en+m4", rate=160, pitch=40, seed=3)
    synth.synthesize("something else entirely", voice="en-us+klatt4", rate=190, pitch=65)
    with ESpeakSynthesizer() as other:
        from_other = other.synthesize(SENTENCE, voice="en+m4", rate=160, pitch=40, seed=3)
    again = synth.synthesize(SENTENCE, voice="en+m4", rate=160, pitch=40, seed=3)
    assert np.array_equal(first, again)
    assert np.array_equal(first, from_other)


def test_unknown_voices_are_refused(synth):
    with pytest.raises(ESpeakError, match="variant"):
        synth.synthesize(SENTENCE, voice="en-us+nosuchvariant")  # eSpeak itself would silently ignore it
    with pytest.raises(ESpeakError, match="language"):
        synth.synthesize(SENTENCE, voice="xx-nowhere")
    with pytest.raises(ValueError):
        synth.synthesize(SENTENCE, rate=10)


# Onsets: a vowel, a stop (its closure is silent: the burst comes after the phoneme's start), a nasal,
# a fricative; voices of each kind, the Klatt synthesiser included.
TIMED = [
    ("okay speaker play some jazz by miles on spotify", "en-us+m3", 150),
    ("turn the volume up to twenty five percent", "en-gb-x-rp+f2", 200),
    ("i'd like to hear some hip hop from the nineties", "en-029+klatt4", 175),
    ("set a sleep timer for ten minutes", "en-gb-scotland+f5", 140),
    ("make a playlist called summer hits", "en-us-nyc+m7", 190),
    # not grammar text: eSpeak reads "25" as two words, the second at a position inside "25"
    ("play 25 songs by ac dc", "en-us+f3", 175),
]


def _energy_span(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Start of the first and end of the last 10 ms window (5 ms hops) whose RMS reaches 5% of the
    loudest window's, in seconds."""
    hop, win = sample_rate // 200, sample_rate // 100
    windows = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop]
    rms = np.sqrt((windows.astype(np.float64) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms >= 0.05 * rms.max())
    return float(loud[0] * hop / sample_rate), float((loud[-1] * hop + win) / sample_rate)


@pytest.mark.parametrize(("text", "voice", "rate"), TIMED)
def test_word_times_are_monotone_inside_the_audio_and_start_with_the_speech(synth, text, voice, rate):
    from asr_ctc.corpus.espeak import word_times
    from asr_ctc.data.audio import resample

    audio, events = synth.synthesize_with_events(text, voice=voice, rate=rate)
    assert np.array_equal(audio, synth.synthesize(text, voice=voice, rate=rate))  # events change nothing
    resampled = resample(audio, synth.sample_rate, 16000)
    duration = len(resampled) / 16000
    words = word_times(text, events, synth.sample_rate, len(audio), duration)
    assert [w.word for w in words] == text.split()
    known = [t for w in words for t in (w.start, w.end) if t is not None]
    assert known == sorted(known) and 0 <= known[0] and known[-1] <= duration
    assert all(w.end > w.start for w in words if w.start is not None and w.end is not None)
    assert words[0].start is not None and words[-1].end is not None
    # Only boundaries inside a merged group ("from the") are unknown, and they come in pairs.
    unknown = [k for k, w in enumerate(words) if w.end is None]
    assert all(words[k + 1].start is None for k in unknown)
    assert len(unknown) <= 1
    # Independent check: the first phoneme starts where the audio's energy rises (the 16 kHz audio,
    # so resampling does not shift the times), within tens of ms.
    onset, offset = _energy_span(resampled, 16000)
    assert abs(onset - words[0].start) < 0.04, (onset, words[0])
    # and the speech has ended by the last word's end (the closing pause after it is silent)
    assert offset < words[-1].end + 0.02, (offset, words[-1])


def test_grammar_sentences_are_distinct_clean_and_deterministic():
    sentences = grammar.generate_sentences(2000, random.Random(7))
    assert len(set(sentences)) == 2000
    assert all(grammar.is_valid_sentence(s) for s in sentences)
    assert sentences == grammar.generate_sentences(2000, random.Random(7))
    assert sentences != grammar.generate_sentences(2000, random.Random(8))
    assert 200 <= len(grammar.vocabulary()) <= 400
    used = {word for s in sentences for word in s.split()}
    assert used <= grammar.vocabulary()


def test_split_sentences_are_disjoint_and_complete():
    sentences = grammar.generate_sentences(500, random.Random(0))
    splits = grammar.split_sentences(
        sentences + sentences[:10], {"a": 0.8, "b": 0.05, "c": 0.15}, random.Random(1)
    )
    assert [len(v) for v in splits.values()] == [400, 25, 75]
    assert sorted(sum(splits.values(), [])) == sorted(sentences)
    with pytest.raises(ValueError):
        grammar.split_sentences(sentences, {"a": 0.5, "b": 0.2}, random.Random(1))


def test_plan_holds_out_test_voices_and_sentences():
    plan = plan_corpus(300, seed=3)
    by_split = {s: [u for u in plan.utterances if u.split == s] for s in ("train", "dev", "test")}
    assert [len(v) for v in by_split.values()] == [255, 15, 30]
    test_variants = {u.voice.partition("+")[2] for u in by_split["test"]}
    seen_variants = {u.voice.partition("+")[2] for u in by_split["train"] + by_split["dev"]}
    assert test_variants <= set(plan.test_variants) and len(plan.test_variants) == 3
    assert not test_variants & seen_variants
    train_texts = {u.text for u in by_split["train"]}
    assert not train_texts & {u.text for u in by_split["test"] + by_split["dev"]}
    assert all(140 <= u.rate <= 200 and 30 <= u.pitch <= 70 for u in plan.utterances)
    assert plan == plan_corpus(300, seed=3)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same tiny corpus built twice: with 2 worker processes and in-process."""
    a = tmp_path_factory.mktemp("corpus_a")
    b = tmp_path_factory.mktemp("corpus_b")
    summary_a = make_synthetic_corpus(a, num_utterances=40, seed=11, num_workers=2, progress=False)
    summary_b = make_synthetic_corpus(b, num_utterances=40, seed=11, num_workers=1, progress=False)
    return a, b, summary_a, summary_b


def test_tiny_corpus_manifests_point_to_16k_mono_wavs(corpora):
    out_dir, _, summary, _ = corpora
    rows = {split: read_manifest(out_dir / f"{split}.tsv") for split in ("train", "dev", "test")}
    assert {k: len(v) for k, v in rows.items()} == {"train": 34, "dev": 2, "test": 4}
    for split_rows in rows.values():
        for row in split_rows:
            info = sf.info(row["audio"])
            assert Path(row["audio"]).parent == out_dir / "wavs"
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert 0.5 < info.duration < 10.0
            assert grammar.is_valid_sentence(row["text"]) and row["voice"]
    assert not set(r["voice"] for r in rows["test"]) & set(r["voice"] for r in rows["train"] + rows["dev"])
    assert not set(r["text"] for r in rows["test"]) & set(r["text"] for r in rows["train"])
    assert json.loads((out_dir / "corpus.json").read_text()) == summary
    assert summary["format"] == "asr-ctc synthetic corpus v2" and "phoneme" in summary["word_times"]
    # Every row has its words' true times: the text's words, in order, inside the audio.
    truth = read_word_times(out_dir / "test.tsv")
    for row in rows["test"]:
        words, group = truth[row["id"]]
        assert [w.word for w in words] == row["text"].split() and group == row["voice"].partition("+")[2]
        known = [t for w in words for t in (w.start, w.end) if t is not None]
        assert known == sorted(known) and known[-1] <= sf.info(row["audio"]).duration + 1e-4
    assert summary["total"]["utterances"] == 40 and 0.005 < summary["total"]["hours"] < 0.1
    assert set(summary["splits"]["test"]["variants"]) <= set(summary["test_variants"])


def test_corpus_is_identical_for_a_seed_whatever_the_workers(corpora):
    a, b, summary_a, summary_b = corpora
    assert summary_a == summary_b
    for name in ("train.tsv", "dev.tsv", "test.tsv", "corpus.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    wavs_a = sorted(p.name for p in (a / "wavs").iterdir())
    assert wavs_a == sorted(p.name for p in (b / "wavs").iterdir()) and len(wavs_a) == 40
    for name in wavs_a:
        assert (a / "wavs" / name).read_bytes() == (b / "wavs" / name).read_bytes(), name


def test_existing_corpus_is_reused(corpora, caplog):
    out_dir, _, summary, _ = corpora
    wav = out_dir / "wavs" / "train-000000.wav"
    before = wav.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="asr_ctc.corpus.synthetic"):
        again = make_synthetic_corpus(out_dir, num_utterances=40, seed=11, num_workers=2, progress=False)
    assert again == summary
    assert wav.stat().st_mtime_ns == before
    assert "reusing" in caplog.text


def test_corpus_command_counts_become_exact_split_sizes():
    # make-corpus turns --num-dev/--num-test into fractions; the plan must give back the very counts.
    from asr_ctc.cli import make_corpus_main

    plan = plan_corpus(14250, 0, 500 / 14250, 1000 / 14250)
    sizes = {split: sum(u.split == split for u in plan.utterances) for split in ("train", "dev", "test")}
    assert sizes == {"train": 12750, "dev": 500, "test": 1000}
    with pytest.raises(SystemExit):
        make_corpus_main(["--num-utterances", "100", "--num-dev", "50", "--num-test", "50"])


@pytest.mark.parametrize("num_utterances", [3, 10, 60, 14250])
def test_corpus_command_defaults_fit_any_size(num_utterances, monkeypatch, tmp_path):
    """make-corpus --num-utterances N alone: the default dev/test sizes scale with N (the demo's 500 and
    1,000 of 14,250), at least one utterance per split, and the plan gives back those counts."""
    import asr_ctc.corpus.synthetic as synthetic
    from asr_ctc.cli import make_corpus_main

    seen = {}

    def fake(out_dir, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before synthesising anything

    monkeypatch.setattr(synthetic, "make_synthetic_corpus", fake)
    with pytest.raises(SystemExit) as stop:
        make_corpus_main(["--num-utterances", str(num_utterances), "--out-dir", str(tmp_path)])
    assert stop.value.code == 0 and seen["num_utterances"] == num_utterances
    plan = plan_corpus(num_utterances, 0, seen["dev_fraction"], seen["test_fraction"])
    sizes = {split: sum(u.split == split for u in plan.utterances) for split in ("train", "dev", "test")}
    assert sum(sizes.values()) == num_utterances and min(sizes.values()) >= 1, sizes
    if num_utterances == 14250:
        assert sizes == {"train": 12750, "dev": 500, "test": 1000}


def test_corpus_command_rejects_sizes_that_leave_no_training(capsys):
    from asr_ctc.cli import make_corpus_main

    with pytest.raises(SystemExit):
        make_corpus_main(["--num-utterances", "2"])
    assert "--num-utterances: expected at least 3 (one utterance per split), got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_corpus_main(["--num-utterances", "60", "--num-dev", "59"])
    assert "got 59 and 4" in capsys.readouterr().err
