"""The data path at scale: an index built from headers, audio decoded per item, a cache keyed by content."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import tiny_model_config
from transformers import TrainingArguments

import asr_ctc.data.audio as audio_mod
import asr_ctc.data.dataset as dataset_mod
from asr_ctc.config import DataConfig, SourceConfig
from asr_ctc.data.collator import CTCDataCollator
from asr_ctc.data.dataset import open_split, open_streaming_split, prepare_split
from asr_ctc.data.index import index_audio_files, load_source_index
from asr_ctc.modeling import build_model
from asr_ctc.trainer import CTCTrainer


def _tone(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture
def corpus(tmp_path):
    """Six utterances of 0.5-1.5 s (one at 44.1 kHz, one at 8 kHz) and a TSV manifest."""
    d = tmp_path / "c"
    d.mkdir()
    rates = [16000, 44100, 8000, 16000, 16000, 16000]
    rows = []
    for i, sr in enumerate(rates):
        sf.write(d / f"u{i}.wav", _tone(0.5 + 0.2 * i, sr), sr)
        rows.append(f"u{i}\tu{i}.wav\tplay jazz {i % 2 and 'now' or 'song'}")
    (d / "m.tsv").write_text("id\taudio\ttext\n" + "\n".join(rows) + "\n")
    return d


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts every audio decode (sf.read) made through the project's audio module."""
    calls = []
    real = audio_mod.sf.read

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(audio_mod.sf, "read", counting)
    return calls


def _cfg(corpus, tmp_path, **kw) -> DataConfig:
    return DataConfig(
        train=SourceConfig(manifest=str(corpus / "m.tsv")), cache_dir=str(tmp_path / "cache"), **kw
    )


def test_index_reads_headers_only_and_items_decode_lazily(corpus, tmp_path, tiny_processor, count_decodes):
    data = _cfg(corpus, tmp_path, min_duration_s=0.1)
    ds, report = prepare_split(data.train, tiny_processor, data, "train", frame_counter=lambda n: n // 160)
    assert count_decodes == []  # building, filtering and measuring the split decoded nothing
    assert report.kept == 6 and len(ds) == 6
    # The header-predicted lengths equal the decoded, resampled lengths exactly.
    for i in range(len(ds)):
        item = ds[i]
        assert len(item["input_values"]) == ds.lengths[i]
        assert abs(float(item["input_values"].mean())) < 1e-4  # normalised per utterance
        assert item["labels"] == tiny_processor.tokenizer(ds.texts[i]).input_ids
    assert len(count_decodes) == 6


def test_duration_filter_works_from_headers(corpus, tmp_path, tiny_processor, count_decodes):
    data = _cfg(corpus, tmp_path, min_duration_s=0.8, max_duration_s=1.2)
    ds, report = prepare_split(data.train, tiny_processor, data, "train")
    assert ds.ids == ["u2", "u3"]  # 0.9 and 1.1 s of 0.5, 0.7, ..., 1.5 s
    assert count_decodes == []
    assert "duration outside [0.8, 1.2] s" in report.summary()


def test_cache_is_reused_and_invalidated_by_the_manifest_and_the_config(corpus, tmp_path, caplog):
    data = _cfg(corpus, tmp_path)
    with caplog.at_level(logging.INFO, logger="asr_ctc"):
        first = load_source_index(data.train, data, "train")
        again = load_source_index(data.train, data, "train")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("built train index" in m for m in messages) == 1
    assert sum("reusing train index" in m for m in messages) == 1
    assert first.key == again.key and again.table["id"] == first.table["id"]

    # Another row in the manifest: a different key, a rebuilt index that has the row.
    manifest = corpus / "m.tsv"
    manifest.write_text(manifest.read_text() + "u9\tu0.wav\tnext song\n")
    grown = load_source_index(data.train, data, "train")
    assert grown.key != first.key and grown.table["id"][-1] == "u9"
    # A data option that changes what is stored (text normalisation) is a different index too.
    other = load_source_index(data.train, _cfg(corpus, tmp_path, chars_to_drop="z"), "train")
    assert other.key != grown.key and other.table["text"][0] == "play ja song"


def test_audio_unreadable_after_indexing_is_skipped_named_and_counted(
    corpus, tmp_path, tiny_processor, caplog
):
    data = _cfg(corpus, tmp_path, min_duration_s=0.1)
    ds, _ = prepare_split(data.train, tiny_processor, data, "train")
    (corpus / "u1.wav").write_bytes(b"RIFF....WAVEfmt garbage now" * 4)  # replaced during the run
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        item = ds[1]
    assert item["id"] == "u2"  # the next readable utterance takes its place
    assert ds.skipped == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipping utterance u1" in m and "u1.wav" in m for m in messages)
    # In DataLoader workers too: the count is shared with the parent process.
    loader = torch.utils.data.DataLoader(
        ds, batch_size=3, num_workers=1, collate_fn=CTCDataCollator(tiny_processor)
    )
    assert sum(len(b["utterance_ids"]) for b in loader) == 6
    assert ds.skipped == 2


def test_trainer_takes_lengths_from_the_index_not_the_audio(corpus, tmp_path, tiny_processor, count_decodes):
    data = _cfg(corpus, tmp_path, min_duration_s=0.1)
    ds, _ = prepare_split(data.train, tiny_processor, data, "train")
    tok = tiny_processor.tokenizer
    model = build_model(tiny_model_config(), vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        per_device_train_batch_size=2,
        train_sampling_strategy="group_by_length",
        report_to="none",
    )
    trainer = CTCTrainer(
        model=model, args=args, data_collator=CTCDataCollator(tiny_processor), train_dataset=ds,
        processing_class=tiny_processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    # The first batch and the one accelerate prefetches; measuring lengths by reading items would add 6.
    assert len(count_decodes) == 4
    # Length grouping still works: the first batch holds similar lengths (the sampler puts the longest first).
    assert batch["input_values"].shape[1] == max(ds.lengths)


def test_streaming_source_decodes_as_it_goes(corpus, tmp_path, tiny_processor):
    rows = [
        {"id": f"u{i}", "audio": str(corpus / f"u{i}.wav"), "text": "Play Jazz"} for i in range(6)
    ] + [{"id": "gone", "audio": str(corpus / "missing.wav"), "text": "next"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = DataConfig(
        train=SourceConfig(hub_name="json", data_files=str(tmp_path / "m.jsonl"), streaming=True),
        min_duration_s=0.6,
    )
    stream = open_streaming_split(data.train, tiny_processor, data)
    items = list(stream)
    assert [x["id"] for x in items] == ["u1", "u2", "u3", "u4", "u5"]  # u0 too short, "gone" unreadable
    assert items[0]["labels"] == tiny_processor.tokenizer("play jazz").input_ids
    assert len(items[0]["input_values"]) == int(0.7 * 16000)


def test_audio_files_and_folders_index_without_transcripts(corpus, tiny_processor, tmp_path):
    (corpus / "sub").mkdir()
    sf.write(corpus / "sub" / "extra.flac", _tone(0.5, 16000), 16000)
    index = index_audio_files([corpus / "u0.wav", corpus / "sub"], DataConfig(cache_dir=str(tmp_path)))
    assert index.table["id"] == ["u0", "extra"]
    ds, report = open_split(index, tiny_processor, DataConfig(cache_dir=str(tmp_path)), for_training=False)
    assert report.kept == 2 and ds[1]["labels"] == [] and len(ds[1]["input_values"]) == 8000
    with pytest.raises(ValueError, match="--audio: no such file"):
        index_audio_files([corpus / "nope"], DataConfig())


def test_late_unreadable_everywhere_is_an_error_not_a_hang(corpus, tmp_path, tiny_processor):
    data = _cfg(corpus, tmp_path, min_duration_s=0.1)
    ds, _ = prepare_split(data.train, tiny_processor, data, "train")
    for i in range(6):
        (corpus / f"u{i}.wav").write_bytes(b"")
    with pytest.raises(dataset_mod.EmptyDatasetError, match="could be decoded"):
        ds[0]


def test_hub_style_sources_keep_their_arrow_table(corpus, tmp_path, tiny_processor, count_decodes):
    """A ``datasets`` builder source: paths (json) and encoded bytes (parquet with an Audio feature)."""
    import datasets

    rows = [{"id": f"u{i}", "audio": str(corpus / f"u{i}.wav"), "text": "Play Jazz"} for i in range(6)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    blobs = datasets.Dataset.from_dict(
        {
            "id": [r["id"] for r in rows],
            "audio": [{"bytes": (corpus / f"u{i}.wav").read_bytes(), "path": None} for i in range(6)],
            "text": [r["text"] for r in rows],
        }
    ).cast_column("audio", datasets.Audio(decode=False))
    blobs.to_parquet(str(tmp_path / "m.parquet"))
    for builder, files in (("json", "m.jsonl"), ("parquet", "m.parquet")):
        data = DataConfig(
            train=SourceConfig(hub_name=builder, data_files=str(tmp_path / files)),
            cache_dir=str(tmp_path / "cache"),
            min_duration_s=0.1,
        )
        index = load_source_index(data.train, data, "train")
        assert index.source.kind == "hub" and index.table["row"] == list(range(6))
        assert index.table["audio"][0] == ("" if builder == "parquet" else rows[0]["audio"])  # bytes stay put
        ds, report = open_split(index, tiny_processor, data, frame_counter=lambda n: n // 160)
        assert count_decodes == [] and report.kept == 6, builder
        for i in (0, 5):
            assert len(ds[i]["input_values"]) == ds.lengths[i]
        assert ds[1]["labels"] == tiny_processor.tokenizer("play jazz").input_ids
        count_decodes.clear()
