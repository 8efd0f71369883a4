"""Bad input end to end: messy manifests, audio formats, transcripts, output directories."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from asr_ctc.cli import finetune_main
from asr_ctc.config import DataConfig, SourceConfig, config_from_dict, to_dict
from asr_ctc.data.dataset import EmptyDatasetError, prepare_split
from asr_ctc.finetune import RUN_CONFIG, OutputDirError, check_output_dir


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _frames(samples: torch.Tensor) -> torch.Tensor:
    return samples // 160  # 100 frames per second, like the tiny test model


@pytest.fixture
def messy_manifest(tmp_path):
    d = tmp_path / "messy"
    (d / "wav").mkdir(parents=True)
    sf.write(d / "wav/good.wav", _tone(1.0, 16000), 16000)
    sf.write(d / "wav/stereo44k.wav", _tone(1.0, 44100, channels=2), 44100)
    sf.write(d / "wav/mono8k.wav", _tone(0.5, 8000), 8000)
    sf.write(d / "wav/short.wav", _tone(0.3, 16000), 16000)
    sf.write(d / "wav/punct.wav", _tone(1.0, 16000), 16000)
    (d / "wav/empty.wav").write_bytes(b"")
    (d / "wav/corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    (d / "wav/notes.txt").write_text("this is not audio\n" * 20)
    rows = [
        ("good", "wav/good.wav", "Play Jazz"),
        ("stereo", "wav/stereo44k.wav", "stop the music"),
        ("narrowband", "wav/mono8k.wav", "next"),
        ("missing", "wav/nope.wav", "hello"),
        ("empty", "wav/empty.wav", "hello"),
        ("corrupt", "wav/corrupt.wav", "hello"),
        ("notaudio", "wav/notes.txt", "hello"),
        ("punct_only", "wav/punct.wav", "?! ..."),
        ("too_long", "wav/short.wav", "play every single song by every artist you can find now please"),
    ]
    lines = ["id\taudio\ttext"] + ["\t".join(r) for r in rows]
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    return d / "train.tsv"


def test_bad_rows_are_skipped_with_one_summary_line(messy_manifest, tiny_processor):
    data_cfg = DataConfig(train=SourceConfig(manifest=str(messy_manifest)), min_duration_s=0.1)
    ds, report = prepare_split(data_cfg.train, tiny_processor, data_cfg, "train", frame_counter=_frames)
    assert ds.ids == ["good", "stereo", "narrowband"]
    # Resampled and mixed down, not rejected: 44.1 kHz stereo and 8 kHz mono both come out as 16 kHz mono.
    assert [len(ds[i]["input_values"]) for i in range(3)] == [16000, 16000, 8000]
    assert ds.lengths == [16000, 16000, 8000]  # the index predicts them from the headers
    assert ds.texts[0] == "play jazz"  # lowercased
    assert report.total == 9 and report.kept == 3
    assert sorted(len(v) for v in report.dropped.values()) == [1, 1, 4]
    line = report.summary()
    assert line.startswith("train: kept 3 of 9 utterances")
    assert "dropped 4 (unreadable audio: missing" in line and ", ..." in line  # first few named, not all
    assert "dropped 1 (empty transcript: punct_only)" in line
    assert "dropped 1 (transcript longer than the model's output frames: too_long)" in line
    unreadable = report.dropped["unreadable audio"]
    assert any("nope.wav: audio file not found" in s for s in unreadable)
    assert any("empty.wav" in s and "empty" in s for s in unreadable)


def test_unknown_characters_at_inference_are_counted_and_reported(tmp_path, tiny_processor):
    sf.write(tmp_path / "a.wav", _tone(1.0, 16000), 16000)
    (tmp_path / "test.tsv").write_text("id\taudio\ttext\nx\ta.wav\tplay café jazz\n")
    data_cfg = DataConfig(train=SourceConfig(manifest=str(tmp_path / "test.tsv")))
    ds, report = prepare_split(data_cfg.train, tiny_processor, data_cfg, "test", for_training=False)
    unk = tiny_processor.tokenizer.unk_token_id
    assert report.unknown_chars == {"f": 1, "é": 1}  # "c" is in the vocabulary (music)
    assert ds[0]["labels"].count(unk) == 2
    assert "characters outside the vocabulary mapped to <unk>" in report.summary()


def test_a_split_with_no_usable_rows_is_an_error(tmp_path, tiny_processor):
    (tmp_path / "bad.tsv").write_text("id\taudio\ttext\na\tmissing.wav\thello\n")
    data_cfg = DataConfig(train=SourceConfig(manifest=str(tmp_path / "bad.tsv")))
    with pytest.raises(EmptyDatasetError, match=r"data split 'train' is empty after filtering.*missing.wav"):
        prepare_split(data_cfg.train, tiny_processor, data_cfg, "train")


def test_finetune_cli_reports_an_empty_dataset_cleanly(tmp_path, capsys):
    (tmp_path / "bad.tsv").write_text("id\taudio\ttext\na\tmissing.wav\thello\n")
    cfg = {
        "output_dir": str(tmp_path / "out"),
        "data": {"train": {"manifest": str(tmp_path / "bad.tsv")}},
        "training": {"use_cpu": True, "max_steps": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert finetune_main(["--config", str(tmp_path / "c.yaml")]) == 2
    assert "error: data split 'train' is empty" in capsys.readouterr().err


def test_output_dir_guards(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\taudio\ttext\n")
    raw = {
        "output_dir": str(tmp_path / "run"),
        "data": {"train": {"manifest": str(manifest)}},
        "training": {"max_steps": 10},
    }
    cfg = config_from_dict(raw)
    assert check_output_dir(cfg, resume=False, overwrite=False) is None  # nothing there yet
    with pytest.raises(OutputDirError, match="--resume: .* holds no run"):
        check_output_dir(cfg, resume=True, overwrite=False)

    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run / "checkpoint-10").mkdir()  # killed while saving: no trainer_state.json, must not be resumed from
    (run / RUN_CONFIG).write_text(yaml.safe_dump(to_dict(cfg)))
    with pytest.raises(OutputDirError, match="already holds a run; pass --resume .* or --overwrite"):
        check_output_dir(cfg, resume=False, overwrite=False)
    # Resuming the same run (a longer one is fine) finds the latest complete checkpoint.
    longer = config_from_dict({**raw, "training": {"max_steps": 20}})
    assert check_output_dir(longer, resume=True, overwrite=False).endswith("checkpoint-5")
    other = config_from_dict({**raw, "loss": {"impl": "torch"}})
    with pytest.raises(OutputDirError, match="different config .*differs in: loss"):
        check_output_dir(other, resume=True, overwrite=False)
    assert check_output_dir(other, resume=False, overwrite=True) is None
    assert not run.exists()

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty and holds no asr-ctc run"):
        check_output_dir(
            config_from_dict({**raw, "output_dir": str(stranger)}), resume=False, overwrite=False
        )


# -- sources that point elsewhere, and sources that cannot be opened ---------------------------------------


@pytest.fixture
def common_voice(tmp_path):
    """Common Voice's layout: clips/*.mp3 beside train.tsv (columns path, sentence, ...)."""
    d = tmp_path / "cv"
    (d / "clips").mkdir(parents=True)
    lines = ["client_id\tpath\tsentence\tup_votes"]
    for i, text in enumerate(["Play jazz.", "Stop the music!", "Next song"]):
        sf.write(d / "clips" / f"cv_{i}.mp3", _tone(0.6 + 0.2 * i, 16000), 16000, format="MP3")
        lines.append(f"c{i}\tcv_{i}.mp3\t{text}\t2")
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    return d


def test_audio_root_points_relative_paths_elsewhere(common_voice, tmp_path, tiny_processor):
    cv = common_voice
    kw = dict(audio_column="path", text_column="sentence", min_duration_s=0.1, cache_dir=str(tmp_path / "c"))
    lost = DataConfig(train=SourceConfig(manifest=str(cv / "train.tsv")), **kw)
    with pytest.raises(EmptyDatasetError, match="cv_0.mp3: audio file not found"):
        prepare_split(lost.train, tiny_processor, lost, "train")
    found = DataConfig(train=SourceConfig(manifest=str(cv / "train.tsv"), audio_root=str(cv / "clips")), **kw)
    ds, report = prepare_split(found.train, tiny_processor, found, "train")
    assert report.kept == 3 and ds.texts == ["play jazz", "stop the music", "next song"]
    assert len(ds[2]["input_values"]) == ds.lengths[2]  # MP3 through libsndfile, no torchcodec


def test_hub_csv_reads_a_tsv_tab_separated(common_voice, tmp_path, tiny_processor):
    cv = common_voice
    rows = (cv / "train.tsv").read_text().replace("cv_", str(cv / "clips" / "cv_"))
    (cv / "abs.tsv").write_text(rows)
    data = DataConfig(
        train=SourceConfig(hub_name="csv", data_files=str(cv / "abs.tsv")),
        audio_column="path",
        text_column="sentence",
        min_duration_s=0.1,
        cache_dir=str(tmp_path / "c"),
    )
    ds, report = prepare_split(data.train, tiny_processor, data, "train")
    assert report.kept == 3 and ds.texts[1] == "stop the music"


def test_a_manifest_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "LibriSpeech" / "dev-clean").mkdir(parents=True)
    raw = {"output_dir": str(tmp_path / "o"), "data": {"train": {"manifest": str(tmp_path / "LibriSpeech")}}}
    with pytest.raises(ValueError, match=r"data.train.manifest: .*LibriSpeech is a directory; expected a"):
        config_from_dict(raw)
    from asr_ctc.data.sources import DataSourceError, open_source

    data = DataConfig(train=SourceConfig(manifest=str(tmp_path / "LibriSpeech")))
    with pytest.raises(DataSourceError, match=r"^data.train \(manifest .*\): .* is a directory"):
        open_source(data.train, data, "train")


def _broken_sources(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(0.5, 16000), 16000)
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav", "text": "hi"}\n{not json\n')
    (tmp_path / "cols.jsonl").write_text('{"file": "a.wav", "words": "hi"}\n')
    (tmp_path / "af").mkdir()
    return {
        "missing data_files": ({"hub_name": "json", "data_files": str(tmp_path / "none-*.jsonl")}, "none-"),
        "builder fails": ({"hub_name": "json", "data_files": str(tmp_path / "bad.jsonl")}, "cannot load"),
        "bad columns": (
            {"hub_name": "json", "data_files": str(tmp_path / "cols.jsonl")},
            "no audio column 'audio'",
        ),
        "needs torchcodec": ({"hub_name": "audiofolder", "data_files": str(tmp_path / "af")}, "torchcodec"),
        "no shards": ({"shards": str(tmp_path / "shard-*.tar")}, "no shard matches"),
    }


_BROKEN = ["missing data_files", "builder fails", "bad columns", "needs torchcodec", "no shards"]


@pytest.mark.parametrize("case", _BROKEN)
def test_a_source_that_cannot_be_opened_is_one_error_line(tmp_path, capsys, case):
    source, cause = _broken_sources(tmp_path)[case]
    cfg = {"output_dir": str(tmp_path / "out"), "data": {"train": source}, "training": {"max_steps": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert finetune_main(["--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: data.train ("), err
    assert cause in errors[0] and "Traceback" not in "\n".join(err)
