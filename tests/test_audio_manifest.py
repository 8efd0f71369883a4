"""Audio loading/resampling and the local manifest format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_ctc.data.audio import AudioError, load_audio, resample
from asr_ctc.data.manifest import ManifestError, read_manifest, write_manifest


def tone(seconds: float, sr: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


# --- audio ----------------------------------------------------------------------------------------------


def test_stereo_is_mixed_to_mono(tmp_path):
    left = tone(0.5, 16000)
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    np.testing.assert_allclose(audio, left / 2, atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
def test_other_rates_are_resampled_to_16k(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, tone(1.0, sr), sr, subtype="PCM_16")
    audio = load_audio(path, sampling_rate=16000)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    assert abs(peak_frequency(audio, 16000) - 440.0) <= 1.0
    assert 0.3 < np.abs(audio).max() < 0.6
    assert load_audio(path, sampling_rate=None).shape == (sr,)


def test_resample_lengths_and_identity():
    x = tone(0.25, 22050)
    assert resample(x, 22050, 16000).shape == (4000,)
    same = resample(x, 22050, 22050)
    assert np.array_equal(same, x) and same is not x
    assert resample(np.zeros((441, 2), np.float32), 44100, 16000).shape == (160, 2)
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        name: tmp_path / f"{name}.wav" for name in ("missing", "zero_bytes", "no_samples", "corrupt", "text")
    }
    files["zero_bytes"].write_bytes(b"")
    sf.write(files["no_samples"], np.zeros(0, np.float32), 16000)
    # A RIFF/WAVE header whose fmt chunk is garbage, and a file that is not audio at all.
    files["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    files["text"].write_text("id,text\nthis is not audio\n")
    files["directory"] = tmp_path / "a_directory"
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("missing", "not found"),
        ("zero_bytes", "empty"),
        ("no_samples", "no samples"),
        ("corrupt", "cannot decode"),
        ("text", "cannot decode"),
        ("directory", "directory"),
    ],
)
def test_bad_audio_files_raise_audio_error_naming_the_path(tmp_path, kind, reason):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert isinstance(info.value, ValueError)


# --- manifests ------------------------------------------------------------------------------------------


@pytest.fixture
def corpus_dir(tmp_path):
    """A directory with two WAVs under wavs/, as a manifest beside it would reference them."""
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    for name in ("a", "b"):
        sf.write(root / "wavs" / f"{name}.wav", tone(0.1, 16000), 16000)
    return root


def _expected(root: Path) -> list[tuple[str, str, str]]:
    return [
        ("a", str(root / "wavs" / "a.wav"), "hello, world"),
        ("b", str(root / "wavs" / "b.wav"), 'say "hi"'),
    ]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_read_manifest_formats_with_relative_paths(corpus_dir, fmt):
    path = corpus_dir / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text('audio,text,speaker\nwavs/a.wav,"hello, world",s1\nwavs/b.wav,"say ""hi""",s2\n')
    elif fmt == "tsv":
        path.write_text(
            'audio\ttext\tspeaker\r\nwavs/a.wav\thello, world\ts1\r\nwavs/b.wav\tsay "hi"\ts2\r\n\r\n'
        )
    else:
        lines = [
            {"audio": "wavs/a.wav", "text": "hello, world", "speaker": "s1"},
            {"audio": "wavs/b.wav", "text": 'say "hi"', "speaker": "s2"},
        ]
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    rows = read_manifest(path)
    assert [(r["id"], r["audio"], r["text"]) for r in rows] == _expected(corpus_dir)
    assert [r["speaker"] for r in rows] == ["s1", "s2"]
    assert all(Path(r["audio"]).is_file() for r in rows)


def test_read_manifest_custom_columns_ids_and_absolute_paths(corpus_dir, tmp_path):
    path = tmp_path / "elsewhere" / "m.tsv"
    path.parent.mkdir()
    absolute = corpus_dir / "wavs" / "b.wav"
    path.write_text(f"key\tpath\tsentence\nu1\t../corpus/wavs/a.wav\tone\nu2\t{absolute}\ttwo\n")
    rows = read_manifest(path, audio_column="path", text_column="sentence", id_column="key")
    assert rows == [
        {"id": "u1", "audio": str(corpus_dir / "wavs" / "a.wav"), "text": "one"},
        {"id": "u2", "audio": str(absolute), "text": "two"},
    ]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.tsv")
    (tmp_path / "m.txt").write_text("audio\ttext\n")
    with pytest.raises(ManifestError, match="unknown manifest extension"):
        read_manifest(tmp_path / "m.txt")

    missing_column = tmp_path / "cols.csv"
    missing_column.write_text("path,transcript\nx.wav,hi\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(missing_column)
    assert "'audio'" in str(info.value) and "'path', 'transcript'" in str(info.value)
    with pytest.raises(ManifestError, match="transcript column 'text'"):
        read_manifest(missing_column, audio_column="path")

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"audio": "a.wav", "text": "ok"}\n\n{"audio": "b.wav", "text": \n')
    with pytest.raises(ManifestError, match="line 3: malformed JSON"):
        read_manifest(bad_json)

    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("audio\ttext\na.wav\thi\nb.wav\thi\textra\n")
    with pytest.raises(ManifestError, match="line 3: 3 fields, header has 2"):
        read_manifest(ragged)

    duplicate = tmp_path / "dup.tsv"
    duplicate.write_text("id\taudio\ttext\nx\ta.wav\thi\nx\tb.wav\tho\n")
    with pytest.raises(ManifestError, match="duplicate id 'x'"):
        read_manifest(duplicate)

    empty_audio = tmp_path / "empty_audio.jsonl"
    empty_audio.write_text('{"audio": "", "text": "hi"}\n')
    with pytest.raises(ManifestError, match="line 1: empty audio path"):
        read_manifest(empty_audio)


def test_write_manifest_round_trip_with_relative_paths(corpus_dir):
    path = corpus_dir / "out.tsv"
    rows = [
        {"id": i, "audio": a, "text": t, "voice": "en+m1", "ignored": 1} for i, a, t in _expected(corpus_dir)
    ]
    write_manifest(path, rows, ["id", "audio", "text", "voice"])
    lines = path.read_text().splitlines()
    assert lines[0] == "id\taudio\ttext\tvoice" and lines[1] == "a\twavs/a.wav\thello, world\ten+m1"
    back = read_manifest(path)
    assert [(r["id"], r["audio"], r["text"], r["voice"]) for r in back] == [
        (i, a, t, "en+m1") for i, a, t in _expected(corpus_dir)
    ]
    assert [p.name for p in corpus_dir.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_write_manifest_refuses_what_tsv_cannot_hold(tmp_path):
    path = tmp_path / "m.tsv"
    for bad_text in ("tab\there", "new\nline", "carriage\rreturn"):
        with pytest.raises(ManifestError, match="tab or line break"):
            write_manifest(path, [{"audio": "a.wav", "text": bad_text}], ["audio", "text"])
    with pytest.raises(ManifestError, match="has no 'text'"):
        write_manifest(path, [{"audio": "a.wav"}], ["audio", "text"])
    with pytest.raises(ManifestError, match="must end in .tsv"):
        write_manifest(tmp_path / "m.csv", [], ["audio", "text"])
    assert not path.exists()
