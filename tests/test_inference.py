"""The inference job: LM decoding and tuning, timestamps, plots, audio files, checkpoints, overrides."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import tiny_run_config

from asr_ctc.cli import inference_main
from asr_ctc.config import DecodingConfig
from asr_ctc.finetune import run_finetune
from asr_ctc.inference import length_sorted_batches, run_inference


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """A tiny model fine-tuned for 30 steps; fine-tuning also writes its lm/."""
    from asr_ctc.config import config_from_dict

    out = tmp_path_factory.mktemp("run") / "run"
    raw = tiny_run_config(
        tiny_corpus, out, max_steps=30, learning_rate=5e-3, eval_strategy="no", save_steps=15
    )
    run_finetune(config_from_dict(raw))
    return out


def test_finetune_writes_the_lm_next_to_the_model(trained):
    info = json.loads((trained / "lm" / "lm.json").read_text())
    assert info["order"] == 3 and info["lexicon_words"] > 5
    assert (trained / "lm" / "lm.arpa").read_text().startswith("\n\\data\\") or "\\data\\" in (
        trained / "lm" / "lm.arpa"
    ).read_text()[:20]
    lexicon = (trained / "lm" / "lexicon.txt").read_text().splitlines()
    assert all(line.endswith(" |") for line in lexicon)


def test_lm_decoding_reports_greedy_and_lm_side_by_side(trained, tmp_path):
    res = run_inference(
        trained, split="test", output_dir=tmp_path, decoding=DecodingConfig(decoder="lm", beam_size=20)
    )
    s = res.summary
    assert (
        s["decoder"] == "lm"
        and set(s["greedy"]) == {"wer", "cer"}
        and set(s["lm"]) >= {"wer", "cer", "lm_weight"}
    )
    assert s["wer"] == s["lm"]["wer"] and s["decoding_seconds"]["beam_search"] > 0
    rows = (tmp_path / "transcripts.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["id", "reference", "hypothesis", "errors", "ref_words", "greedy"]
    # A lexicon decoder only ever spells words of the lexicon.
    lexicon = {line.split("\t")[0] for line in (trained / "lm" / "lexicon.txt").read_text().splitlines()}
    for row in rows[1:]:
        assert set(row.split("\t")[2].split()) <= lexicon


def test_tune_lm_saves_the_weights_and_later_runs_use_them(trained, tmp_path):
    res = run_inference(
        trained,
        split="test",
        output_dir=tmp_path,
        tune_lm=True,
        tune_utterances=3,
        decoding=DecodingConfig(decoder="lm", beam_size=10),
    )
    tuned = json.loads((trained / "lm" / "tuned.json").read_text())
    assert len(tuned["grid"]) == 20 and res.summary["lm_tuning"]["lm_weight"] == tuned["lm_weight"]
    assert tuned["dev_utterances"] == 3  # the first 3 of the eval split, as asked
    again = run_inference(
        trained, split="test", output_dir=tmp_path / "b", decoding=DecodingConfig(decoder="lm")
    )
    assert again.summary["lm"]["lm_weight"] == tuned["lm_weight"]
    assert again.summary["lm"]["word_score"] == tuned["word_score"]


def test_timestamps_and_plots(trained, tmp_path):
    res = run_inference(trained, split="test", output_dir=tmp_path, timestamps=True, plot=2)
    words = json.loads((tmp_path / "words.json").read_text())
    assert len(words) == res.num_utterances
    for rec in words:
        ref = rec["reference"]  # the reference transcript always fits its frames (tiny model: 100 frames/s)
        spelled = rec_text(tmp_path, rec["id"]).split()
        assert ref is not None and len(ref) == len(spelled)
        # Word by word, as the tokenizer spells it (a character outside the vocabulary reads <unk>).
        for w, word in zip(ref, spelled, strict=True):
            assert w["word"] == word or "<unk>" in w["word"]
        starts = [w["start"] for w in ref]
        assert starts == sorted(starts) and all(w["end"] > w["start"] for w in ref)
    ctm = (tmp_path / "reference.ctm").read_text().splitlines()
    assert len(ctm) == sum(len(r["reference"]) for r in words) and len(ctm[0].split()) == 6
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2


def rec_text(out, uid):
    for line in (out / "transcripts.tsv").read_text().splitlines()[1:]:
        fields = line.split("\t")
        if fields[0] == uid:
            return fields[1]
    raise KeyError(uid)


def test_transcribe_audio_files_and_a_checkpoint(trained, tiny_corpus, tmp_path, capsys):
    wavs = sorted((tiny_corpus / "wavs").glob("test-*.wav"))[:3]
    code = inference_main(
        [
            "--model",
            str(trained / "checkpoint-30"),
            "--audio",
            str(wavs[0]),
            str(wavs[1]),
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = (tmp_path / "transcripts.tsv").read_text().splitlines()
    assert rows[0] == "id\thypothesis" and [r.split("\t")[0] for r in rows[1:]] == [w.stem for w in wavs[:2]]
    # A checkpoint inside a run finds the run's config (for --split) in its parent.
    assert (
        inference_main(
            [
                "--model",
                str(trained / "checkpoint-15"),
                "--split",
                "test",
                "--output-dir",
                str(tmp_path / "ck"),
            ]
        )
        == 0
    )


def test_overrides_apply_to_the_saved_config_and_unknown_keys_fail(trained, tmp_path, capsys):
    assert inference_main(["--model", str(trained), "bogus.key=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert (
        inference_main(["--model", str(trained), "decoding.decoder=beam", "--output-dir", str(tmp_path)]) == 0
    )
    assert json.loads((tmp_path / "summary.json").read_text())["decoder"] == "beam"


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([5, 1, 9, 3, 9, 2, 7], 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert batches[0] == [2, 4, 6]  # longest first, ties in order


def test_decoding_config_rejects_unknown_decoders():
    from asr_ctc.config import ConfigError

    with pytest.raises(ConfigError, match="decoding.decoder: expected one of greedy, beam, lm"):
        DecodingConfig(decoder="viterbi")
    raw = yaml.safe_load("decoding: {decoder: lm, beam_size: 50}")
    assert DecodingConfig(**raw["decoding"]).beam_size == 50


def _frames(tokenizer, tokens: list[str], confidence: float = 0.9):
    """(1, T, C) log-probs whose best class at frame t is tokens[t] (``confidence``), the rest shared."""
    import torch

    ids = torch.tensor(tokenizer.convert_tokens_to_ids(tokens))
    probs = torch.full((len(tokens), len(tokenizer)), (1 - confidence) / (len(tokenizer) - 1))
    probs[torch.arange(len(tokens)), ids] = confidence
    return probs.log()[None]


# "a | <blank> | s" and delimiters at both ends: a tokenizer alone makes "a  s" with a space at each end.
DOUBLE_DELIMITER = ["|", "a", "|", "<pad>", "|", "s", "|"]


def test_greedy_transcripts_have_single_spaces(tiny_processor):
    from asr_ctc.decode import greedy_decode, wer_cer

    tokenizer = tiny_processor.tokenizer
    raw = tokenizer.decode(tokenizer.convert_tokens_to_ids(["a", "|", "|", "s"]), group_tokens=False)
    assert raw != "a s"  # what the tidying step is there for
    hyps = greedy_decode(_frames(tokenizer, DOUBLE_DELIMITER), None, tokenizer)
    assert hyps == ["a s"] and wer_cer(["a s"], hyps) == (0.0, 0.0)


def test_beam_transcripts_have_single_spaces(tiny_processor, tmp_path):
    pytest.importorskip("flashlight.lib.text")
    import torch

    from asr_ctc.decode import BeamSearchDecoder
    from asr_ctc.lm import write_lexicon

    tokenizer = tiny_processor.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    lexicon = write_lexicon(["a", "s"], tmp_path / "lexicon.txt")
    decoder = BeamSearchDecoder(tokens, tokenizer.pad_token_id, "|", lexicon, beam_size=10)
    log_probs = _frames(tokenizer, DOUBLE_DELIMITER)
    assert decoder.decode(log_probs, torch.tensor([log_probs.shape[1]])) == ["a s"]


def test_inference_writes_single_spaced_transcripts(trained, tmp_path, tiny_processor):
    """Every transcript the job writes is tidy; and its decoding step tidies a double delimiter."""
    import torch

    from asr_ctc.inference import _decode_batch, _Decoded

    run_inference(trained, split="test", output_dir=tmp_path)
    for row in (tmp_path / "transcripts.tsv").read_text().splitlines()[1:]:
        uid, ref, hyp, _, _, greedy = row.split("\t")
        assert hyp == " ".join(hyp.split()) and greedy == " ".join(greedy.split())
    decoded = _Decoded([""], [""], {}, 0.0, 0.0)
    log_probs = _frames(tiny_processor.tokenizer, DOUBLE_DELIMITER)
    _decode_batch(decoded, [0], log_probs, torch.tensor([log_probs.shape[1]]), tiny_processor.tokenizer, None)
    assert decoded.greedy == decoded.hyps == ["a s"]


def test_model_option_on_a_directory_that_is_not_a_model(tmp_path, capsys):
    assert inference_main(["--model", str(tmp_path), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --model {tmp_path}: not a model directory (no config.json)"


def test_audio_transcripts_are_printed(trained, tiny_corpus, tmp_path, capsys):
    wavs = sorted((tiny_corpus / "wavs").glob("test-*.wav"))[:2]
    args = ["--model", str(trained), "--audio", *map(str, wavs), "--output-dir", str(tmp_path)]
    assert inference_main(args) == 0
    printed = [line.strip().split("\t") for line in capsys.readouterr().out.splitlines() if "\t" in line]
    rows = [r.split("\t") for r in (tmp_path / "transcripts.tsv").read_text().splitlines()[1:]]
    assert [p[0] for p in printed] == [w.stem for w in wavs]
    assert [p + [""] * (2 - len(p)) for p in printed] == [r + [""] * (2 - len(r)) for r in rows]


def test_plots_are_of_the_first_utterances_given_over_their_audio(trained, tmp_path, monkeypatch):
    """--plot 2: the first two utterances of the split (not of the longest-first batches), each drawn
    over its audio as read (amplitude within [-1, 1]), not the normalised model input."""
    import numpy as np

    import asr_ctc.plots as plots
    from asr_ctc.data.audio import load_audio

    drawn = {}
    monkeypatch.setattr(plots, "plot_alignment", lambda path, wave, *a, **k: drawn.update({path.stem: wave}))
    run_inference(trained, split="test", output_dir=tmp_path, plot=2, batch_size=2)
    order = [r.split("\t")[0] for r in (tmp_path / "transcripts.tsv").read_text().splitlines()[1:]]
    assert sorted(drawn) == sorted(order[:2])
    from asr_ctc.data.manifest import read_manifest

    cfg = yaml.safe_load((trained / "run_config.yaml").read_text())
    audio = {row["id"]: row["audio"] for row in read_manifest(cfg["data"]["test"]["manifest"])}
    import soundfile as sf

    longest_first = length_sorted_batches([sf.info(audio[uid]).frames for uid in order], 2)[0]
    assert {order[i] for i in longest_first} != set(order[:2])  # so the old choice would differ
    for uid, wave in drawn.items():
        expected = load_audio(audio[uid], 16000)
        np.testing.assert_array_equal(wave, expected)
        assert np.abs(wave).max() <= 1.0


def test_split_from_another_working_directory(tiny_corpus, tmp_path, monkeypatch, capsys):
    """Fine-tuning stores the manifests' resolved paths, so `inference --split test` works from any
    working directory; a run_config.yaml with a relative path that does not resolve (a run saved before,
    or moved) fails before any work, naming the key and the rule."""
    import shutil

    from asr_ctc.config import config_from_dict

    monkeypatch.chdir(tiny_corpus.parent)
    raw = tiny_run_config(tiny_corpus, tmp_path / "run", max_steps=2, eval_strategy="no", save_steps=100)
    for split, name in (("train", "train"), ("eval", "dev"), ("test", "test")):
        raw["data"][split]["manifest"] = f"{tiny_corpus.name}/{name}.tsv"  # relative to the cwd
    run_finetune(config_from_dict(raw))
    saved = yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text())
    assert saved["data"]["test"]["manifest"] == str(tiny_corpus / "test.tsv")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert inference_main(["--model", str(tmp_path / "run"), "--output-dir", str(tmp_path / "out")]) == 0, (
        capsys.readouterr().err
    )

    # An old run whose saved path is relative: one error before the model is loaded.
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "run", old)
    saved["data"]["test"]["manifest"] = f"{tiny_corpus.name}/test.tsv"
    (old / "run_config.yaml").write_text(yaml.safe_dump(saved))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the data paths were checked")

    monkeypatch.setattr("asr_ctc.inference.load_ctc_model", no_loading)
    capsys.readouterr()
    assert inference_main(["--model", str(old), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data.test.manifest: file not found: {tiny_corpus.name}/test.tsv")
    assert f"relative to the working directory, here {elsewhere}" in err and "--config or --manifest" in err


def test_jobs_show_their_own_progress_bars_only(trained, tiny_corpus, tmp_path, capsys):
    """datasets' (indexing, saving, encoding) and transformers' (loading weights) bars are off in the
    jobs; the job's own long step (decoding) keeps its bar."""
    import datasets
    from transformers.utils import logging as transformers_logging

    wavs = sorted((tiny_corpus / "wavs").glob("dev-*.wav"))[:2]  # never indexed before: datasets would map
    try:
        args = ["--model", str(trained), "--audio", *map(str, wavs), "--output-dir", str(tmp_path)]
        assert inference_main(args) == 0
    finally:
        datasets.enable_progress_bars()
        transformers_logging.enable_progress_bar()
    err = capsys.readouterr().err
    assert "decoding" in err
    for library_bar in ("indexing audio files", "Loading weights", "Saving the dataset", "Map"):
        assert library_bar not in err, err
