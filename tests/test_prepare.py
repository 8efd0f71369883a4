"""``asr-ctc-prepare``: LibriSpeech trees, Common Voice folders and tables to manifests; manifests to shards.

The corpora are the synthetic one laid out as each public corpus ships (tests/corpus_layouts.py); each
prepared corpus then fine-tunes two steps and decodes with a config that only names the prepared manifests.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus_layouts import make_commonvoice_folder, make_librispeech_tree
from helpers import tiny_run_config

from asr_ctc.cli import prepare_main
from asr_ctc.config import config_from_dict
from asr_ctc.data.manifest import read_manifest
from asr_ctc.finetune import run_finetune
from asr_ctc.inference import run_inference
from asr_ctc.prepare import PrepareError, prepare_librispeech, prepare_table, write_shards


def _train_two_steps_and_decode(manifests: dict[str, Path], out: Path) -> dict:
    """Fine-tune the tiny model 2 steps on the prepared manifests, then greedy-decode the test split."""
    raw = tiny_run_config(Path("unused"), out, max_steps=2, eval_strategy="no", save_strategy="no")
    raw["data"] = {split: {"manifest": str(path)} for split, path in manifests.items()}
    run_finetune(config_from_dict(raw))
    result = run_inference(out, split="test", batch_size=8, device="cpu")
    return result.summary


# -- LibriSpeech -------------------------------------------------------------------------------------------


def test_librispeech_tree_to_manifests_then_train_and_decode(librispeech_tree, tmp_path, capsys):
    root, made = librispeech_tree
    assert prepare_main(["librispeech", str(root), "--out-dir", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out
    for subset, utterances in made.items():
        manifest = tmp_path / "m" / f"{subset}.tsv"
        assert f"{subset}: {manifest}" in printed
        rows = read_manifest(manifest)
        assert [r["id"] for r in rows] == sorted(u for u, _, _ in utterances)
        by_id = {u: (wav, text) for u, wav, text in utterances}
        for row in rows:
            wav, text = by_id[row["id"]]
            assert row["text"] == text and row["speaker"] == row["id"].split("-")[0]
            assert row["chapter"] == row["id"].split("-")[1]
            # FLAC is lossless: the manifest points at the same samples as the source WAV.
            assert np.array_equal(sf.read(row["audio"], dtype="int16")[0], sf.read(wav, dtype="int16")[0])
        header = (tmp_path / "m" / f"{subset}.tsv").read_text().splitlines()[0]
        assert header == "id\taudio\ttext\tspeaker\tchapter"
    # Audio paths are written relative to the manifest, so manifests and corpus move together.
    first = (tmp_path / "m" / "dev-clean.tsv").read_text().splitlines()[1].split("\t")[1]
    assert not Path(first).is_absolute()

    # One subset folder works as DIR too; the default output is DIR/manifests.
    written = prepare_librispeech(root / "dev-clean")
    assert list(written) == ["dev-clean"] and written["dev-clean"] == root / "dev-clean" / "manifests" / (
        "dev-clean.tsv"
    )
    assert len(read_manifest(written["dev-clean"])) == len(made["dev-clean"])

    m = tmp_path / "m"
    summary = _train_two_steps_and_decode(
        {"train": m / "train-clean-100.tsv", "eval": m / "dev-clean.tsv", "test": m / "test-clean.tsv"},
        tmp_path / "run",
    )
    assert summary["num_utterances"] == len(made["test-clean"])


def test_librispeech_missing_flac_is_skipped_with_a_warning(tiny_corpus, tmp_path, caplog):

    made = make_librispeech_tree(tiny_corpus, tmp_path / "LS")
    victim = made["dev-clean"][0][0]
    spk, chapter, _ = victim.split("-")
    (tmp_path / "LS" / "dev-clean" / spk / chapter / f"{victim}.flac").unlink()
    written = prepare_librispeech(tmp_path / "LS", tmp_path / "m")
    ids = [r["id"] for r in read_manifest(written["dev-clean"])]
    assert victim not in ids and len(ids) == len(made["dev-clean"]) - 1
    assert f"1 of {len(made['dev-clean'])} rows skipped" in caplog.text
    assert "audio file not found" in caplog.text


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "not found"),
        (lambda d: d.mkdir(), "no '<speaker>-<chapter>.trans.txt' files under"),
        (lambda d: d.write_text("x"), "is a file; expected the corpus folder"),
    ],
    ids=["missing", "empty", "a-file"],
)
def test_librispeech_bad_dir_is_one_error_line(tmp_path, capsys, setup, message):
    target = tmp_path / "LibriSpeech"
    setup(target)
    assert prepare_main(["librispeech", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: librispeech DIR:") and message in err and len(err.splitlines()) == 1


def test_librispeech_malformed_transcript_line(tmp_path, capsys):
    chapter = tmp_path / "LS" / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 HELLO\n1-2-0001\n")
    assert prepare_main(["librispeech", str(tmp_path / "LS")]) == 2
    err = capsys.readouterr().err
    assert "1-2.trans.txt, line 2: expected '<utterance id> <transcript>'" in err
    assert len(err.splitlines()) == 1


# -- Common Voice and plain tables -------------------------------------------------------------------------


def test_mp3_round_trip_through_libsndfile(tmp_path):
    """Common Voice ships MP3: this libsndfile writes and reads it (no FFmpeg, no torchcodec)."""
    tone = (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    sf.write(tmp_path / "a.mp3", tone, 16000, format="MP3")
    back, rate = sf.read(tmp_path / "a.mp3", dtype="float32")
    assert rate == 16000 and abs(len(back) - len(tone)) <= 1152  # at most one MPEG frame of padding
    # Lossy, but the same tone: strongly correlated once aligned on the encoder delay.
    n = min(len(back), len(tone))
    best = max(np.corrcoef(back[d : n], tone[: n - d])[0, 1] for d in range(0, 1200, 1))
    assert best > 0.95


def test_commonvoice_folder_to_manifests_then_train_and_decode(tiny_corpus, tmp_path, caplog):
    cv = tmp_path / "cv-corpus" / "en"
    made = make_commonvoice_folder(tiny_corpus, cv)
    # A row whose clip was withdrawn: skipped with a warning, not an error.
    with open(cv / "test.tsv", "a") as f:
        f.write("\t".join(["clientx", "gone.mp3", "s0", "Gone.", "0", "0", "", "en"]) + "\n")
    assert prepare_main(["commonvoice", str(cv)]) == 0
    out = cv / "manifests"
    for split, clips in made.items():
        rows = read_manifest(out / f"{split}.tsv")
        assert [(r["id"], r["text"]) for r in rows] == [(stem, sentence) for stem, _, sentence in clips]
        assert all(Path(r["audio"]).parent == cv / "clips" for r in rows)
        assert {"client_id", "sentence_id", "up_votes", "locale"} <= set(rows[0])
        assert "path" not in rows[0] and "sentence" not in rows[0]  # renamed to audio / text
    assert "1 of" in caplog.text and "gone.mp3: audio file not found" in caplog.text
    # The corpus's own tables are untouched.
    assert (cv / "train.tsv").read_text().startswith("client_id\tpath\t")

    summary = _train_two_steps_and_decode(
        {"train": out / "train.tsv", "eval": out / "dev.tsv", "test": out / "test.tsv"}, tmp_path / "run"
    )
    assert summary["num_utterances"] == len(made["test"])


def test_commonvoice_bad_folder_is_one_error_line(tmp_path, capsys):
    (tmp_path / "cv").mkdir()
    assert prepare_main(["commonvoice", str(tmp_path / "cv")]) == 2
    assert "has no clips/ folder" in capsys.readouterr().err
    (tmp_path / "cv" / "clips").mkdir()
    assert prepare_main(["commonvoice", str(tmp_path / "cv")]) == 2
    assert "has none of train.tsv, dev.tsv, test.tsv" in capsys.readouterr().err
    (tmp_path / "cv" / "train.tsv").write_text("client_id\tfile\tsentence\nc\ta.mp3\tHi.\n")
    assert prepare_main(["commonvoice", str(tmp_path / "cv")]) == 2
    err = capsys.readouterr().err
    assert "no audio column 'path'; columns found: 'client_id', 'file', 'sentence'" in err
    assert len(err.splitlines()) == 1
    assert prepare_main(["commonvoice", str(tmp_path / "cv"), "--out-dir", str(tmp_path / "cv")]) == 2
    assert "is the corpus folder" in capsys.readouterr().err


def test_any_csv_with_named_columns_and_an_audio_root(tiny_corpus, tmp_path):
    rows = read_manifest(tiny_corpus / "dev.tsv")
    audio_dir = Path(rows[0]["audio"]).parent
    table = tmp_path / "meta" / "sheet.csv"
    table.parent.mkdir()
    # Spreadsheet CSV: quoted cells with commas and a line break inside a transcript.
    lines = ["file,transcription,speaker"]
    for i, r in enumerate(rows):
        text = f'"{r["text"]}, indeed\n(yes)"' if i == 0 else r["text"]
        lines.append(f"{Path(r['audio']).name},{text},{r['voice']}")
    table.write_text("\n".join(lines) + "\n")
    assert prepare_main(
        ["table", str(table), "--audio-column", "file", "--text-column", "transcription", "--audio-root",
         str(audio_dir)]
    ) == 0
    got = read_manifest(tmp_path / "meta" / "manifests" / "sheet.tsv")
    assert [g["audio"] for g in got] == [r["audio"] for r in rows]
    assert got[0]["text"] == f"{rows[0]['text']}, indeed (yes)"  # whitespace collapsed, punctuation kept
    assert [g["speaker"] for g in got] == [r["voice"] for r in rows]
    # Without --audio-root the paths are relative to the table: none exists, so nothing is written.
    with pytest.raises(PrepareError, match="no utterances with an existing audio file"):
        prepare_table(table, tmp_path / "x.tsv", "file", "transcription")
    assert not (tmp_path / "x.tsv").exists()


def test_table_errors_name_the_argument(tmp_path, capsys):
    table = tmp_path / "t.tsv"
    table.write_text("a\tb\nx.wav\thello\n")
    assert prepare_main(["table", str(table)]) == 2
    assert "no audio column 'audio'; columns found: 'a', 'b'" in capsys.readouterr().err
    assert prepare_main(["table", str(table), "--audio-column", "a", "--text-column", "b", "--audio-root",
                         str(tmp_path / "nope")]) == 2
    assert "audio root" in capsys.readouterr().err
    assert prepare_main(["table", str(table), "--audio-column", "a", "--text-column", "b", "--out",
                         str(table)]) == 2
    assert "would overwrite the table" in capsys.readouterr().err


# -- shards ------------------------------------------------------------------------------------------------


def _members(shard: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_shards_keep_the_source_bytes_and_split_by_count(librispeech_tree, tmp_path, capsys):
    root, made = librispeech_tree
    manifest = prepare_librispeech(root, tmp_path / "m")["dev-clean"]
    rows = read_manifest(manifest)
    out = tmp_path / "shards"
    assert prepare_main(["shards", str(manifest), "--out-dir", str(out), "--max-utterances", "3"]) == 0
    assert "shard-{000000.." in capsys.readouterr().out
    shards = sorted(out.glob("shard-*.tar"))
    assert len(shards) == -(-len(rows) // 3)
    seen = []
    for shard in shards:
        members = _members(shard)
        assert len(members) % 3 == 0 and len(members) <= 9
        for i in range(0, len(members), 3):
            (audio_name, audio), (txt_name, txt), (json_name, meta) = members[i : i + 3]
            key = audio_name.split(".")[0]
            assert (audio_name, txt_name, json_name) == (f"{key}.flac", f"{key}.txt", f"{key}.json")
            row = next(r for r in rows if r["id"] == key)
            assert audio == Path(row["audio"]).read_bytes()  # the FLAC bytes, not re-encoded
            assert txt.decode() == row["text"]
            info = json.loads(meta)
            assert info["speaker"] == row["speaker"] and info["sampling_rate"] == 16000
            assert info["num_samples"] == sf.info(io.BytesIO(audio)).frames
            seen.append(key)
    assert seen == [r["id"] for r in rows]  # manifest order, every utterance once
    listing = json.loads((out / "shards.json").read_text())
    assert listing["utterances"] == len(rows) and [s["name"] for s in listing["shards"]] == [
        p.name for p in shards
    ]


def test_shards_by_size_and_wav_sources(tiny_corpus, tmp_path):
    manifest = tiny_corpus / "train.tsv"
    rows = read_manifest(manifest)
    sizes = [Path(r["audio"]).stat().st_size for r in rows]
    limit_mb = 3 * max(sizes) / 1e6
    summary = write_shards(manifest, tmp_path / "s", max_size_mb=limit_mb, max_utterances=None)
    assert sum(summary.counts) == len(rows) and len(summary.shards) > 1
    for shard in summary.shards:
        assert shard.stat().st_size <= limit_mb * 1e6 + 10240  # tar end blocks and PAX headers
        names = [n for n, _ in _members(shard)]
        assert all(n.endswith((".wav", ".txt", ".json")) for n in names)
    # Shuffled with a seed: the same order every time, not the manifest's.
    a = write_shards(manifest, tmp_path / "a", max_size_mb=None, max_utterances=1000, shuffle_seed=3)
    b = write_shards(manifest, tmp_path / "b", max_size_mb=None, max_utterances=1000, shuffle_seed=3)
    assert a.shards[0].read_bytes() == b.shards[0].read_bytes()
    order = [n.split(".")[0] for n, _ in _members(a.shards[0])][::3]
    assert sorted(order) == sorted(r["id"] for r in rows) and order != [r["id"] for r in rows]


def test_non_copied_audio_is_reencoded_to_flac(tmp_path):
    tone = (0.3 * np.sin(np.arange(8000) / 50)).astype(np.float32)
    sf.write(tmp_path / "a.aiff", tone, 16000, subtype="PCM_16")
    (tmp_path / "m.tsv").write_text("id\taudio\ttext\nu1\ta.aiff\thello\n")
    summary = write_shards(tmp_path / "m.tsv", tmp_path / "s", max_utterances=10)
    (name, data), *_ = _members(summary.shards[0])
    assert name == "u1.flac"
    source = sf.read(tmp_path / "a.aiff", dtype="int16")[0]
    assert np.array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], source)


def test_shards_are_atomic_and_never_mix_two_runs(tiny_corpus, tmp_path, capsys, monkeypatch):
    manifest = tiny_corpus / "dev.tsv"
    out = tmp_path / "s"
    first = write_shards(manifest, out, max_size_mb=None, max_utterances=2)
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    # Existing shards are refused without --overwrite.
    assert prepare_main(["shards", str(manifest), "--out-dir", str(out), "--max-utterances", "2"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # A run that fails part-way (the 5th audio file cannot be read) leaves the earlier shards untouched.
    import asr_ctc.prepare.shards as shards_module

    real = shards_module._audio_member
    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) == 5:
            raise shards_module.PrepareError(f"{path}: cannot read the audio header (simulated)")
        return real(path)

    monkeypatch.setattr(shards_module, "_audio_member", flaky)
    assert prepare_main(["shards", str(manifest), "--out-dir", str(out), "--max-utterances", "1",
                         "--overwrite"]) == 2
    assert "simulated" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder or temp file left
    monkeypatch.setattr(shards_module, "_audio_member", real)
    # A successful overwrite with fewer shards removes the previous run's extra ones.
    second = write_shards(manifest, out, max_size_mb=None, max_utterances=100, overwrite=True)
    assert len(first.shards) > 1 and [p.name for p in out.glob("shard-*.tar")] == ["shard-000000.tar"]
    assert second.counts == [len(read_manifest(manifest))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-size-mb", "0"], "--max-size-mb: expected a size > 0 in MB, got 0.0"),
        (["--max-utterances", "0"], "--max-utterances: expected an integer >= 1, got 0"),
        ([], "manifest not found"),
    ],
)
def test_shards_bad_arguments_are_one_error_line(tmp_path, capsys, args, message):
    assert prepare_main(["shards", str(tmp_path / "none.tsv"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
