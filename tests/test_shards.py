"""WebDataset tar shards: indexed by member offsets, streamed per shard, and safe against crafted archives."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from asr_ctc.config import DataConfig, SourceConfig, config_from_dict
from asr_ctc.data.audio import load_audio
from asr_ctc.data.dataset import open_streaming_split, prepare_split
from asr_ctc.data.index import load_source_index
from asr_ctc.data.shards import ShardSource, expand_braces, expand_shards, split_key
from asr_ctc.data.sources import DataSourceError, open_source

TEXTS = ["PLAY JAZZ", "STOP THE MUSIC", "NEXT SONG", "HELLO", "PLAY MUSIC", "LOUDER", "NEXT", "STOP"]


def _tone(seconds: float, sr: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    subtypes = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "opus": "OPUS", "mp3": "MPEG_LAYER_III"}
    subtype = subtypes[fmt]
    container = {"opus": "OGG", "ogg": "OGG"}.get(fmt, fmt.upper())
    sf.write(buf, audio, sr, format=container, subtype=subtype)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, utterances, per_shard: int, fmt: str = "wav") -> list[str]:
    """``(key, audio, sr, text)`` tuples as shard-000000.tar, ... (the WebDataset layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(utterances), per_shard):
        path = folder / f"shard-{start // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, audio, sr, text in utterances[start : start + per_shard]:
                ext = fmt if isinstance(fmt, str) else fmt(key)
                _add(tar, f"{key}.{ext}", _encode(audio, sr, ext))
                _add(tar, f"{key}.txt", text.encode())
                meta = {"speaker": key[:2]} if key != "sp-004" else {"id": "sp.004/original"}
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        paths.append(str(path))
    return paths


def _utterances(n: int = 8):
    return [(f"sp-{i:03d}", _tone(0.5 + 0.1 * i, 16000, 200 + 20 * i), 16000, TEXTS[i % 8]) for i in range(n)]


def _data(shards, tmp_path, **source) -> DataConfig:
    return DataConfig(
        train=SourceConfig(shards=shards, **source), cache_dir=str(tmp_path / "cache"), min_duration_s=0.1
    )


@pytest.fixture
def shard_dir(tmp_path):
    utts = _utterances(8)
    write_shards(tmp_path / "shards", utts, per_shard=3, fmt=lambda k: "flac" if k.endswith("1") else "wav")
    return tmp_path / "shards", utts


def test_braces_globs_and_keys(shard_dir):
    folder, _ = shard_dir
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    by_glob = expand_shards(str(folder / "shard-*.tar"))
    by_range = expand_shards(str(folder / "shard-{000000..000002}.tar"))
    assert by_glob == by_range and [p.name for p in by_glob] == [f"shard-00000{i}.tar" for i in range(3)]
    with pytest.raises(ValueError, match="shard not found"):
        expand_shards(str(folder / "shard-{000000..000003}.tar"))
    with pytest.raises(ValueError, match="no shard matches"):
        expand_shards(str(folder / "nope-*.tar"))
    assert split_key("a/b/utt.seg.FLAC") == ("a/b/utt", "seg.flac")
    assert split_key("utt.txt") == ("utt", "txt")


def test_indexed_shards_decode_like_the_files(shard_dir, tmp_path, tiny_processor):
    folder, utts = shard_dir
    data = _data(str(folder / "shard-*.tar"), tmp_path)
    ds, report = prepare_split(data.train, tiny_processor, data, "train", frame_counter=lambda n: n // 160)
    # The metadata's "id" names an utterance when it has one (asr-ctc-prepare keeps the manifest's there).
    assert report.kept == 8 and ds.ids == [u[0] if u[0] != "sp-004" else "sp.004/original" for u in utts]
    assert ds.texts[1] == "stop the music"  # normalised like a manifest's transcripts
    meta = ds.table["meta"]
    assert json.loads(meta[0]) == {"speaker": "sp"}  # the json member is kept in the index
    for i in (0, 1, 5, 7):
        item = ds[i]
        assert len(item["input_values"]) == ds.lengths[i] == len(utts[i][1])  # header length = decoded
        # Same samples as decoding the member on its own (FLAC and 16-bit WAV are exact).
        member = tmp_path / f"m{i}.{'flac' if i % 10 == 1 else 'wav'}"
        member.write_bytes(_encode(utts[i][1], 16000, member.suffix[1:]))
        ref = load_audio(member, 16000)
        got = item["input_values"]
        np.testing.assert_allclose(got, (ref - ref.mean()) / np.sqrt(ref.var() + 1e-7), atol=1e-5)
        assert item["labels"] == tiny_processor.tokenizer(ds.texts[i]).input_ids
    # Items read in DataLoader workers (each opens its own descriptors).
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(x["id"] for x in loader) == sorted(ds.ids)


@pytest.mark.parametrize("fmt", ["ogg", "opus", "mp3"])
def test_compressed_audio_members_via_libsndfile(tmp_path, tiny_processor, fmt):
    sr = 48000 if fmt == "opus" else 16000
    write_shards(tmp_path / "s", [("u0", _tone(1.0, sr), sr, "HELLO")], per_shard=1, fmt=fmt)
    data = _data(str(tmp_path / "s" / "*.tar"), tmp_path)
    ds, report = prepare_split(data.train, tiny_processor, data, "train")
    assert report.kept == 1
    # Lossy codecs pad or trim a little at the edges; the header's count is what decoding gives.
    assert len(ds[0]["input_values"]) == ds.lengths[0] and abs(ds.lengths[0] - 16000) < 1200


def test_index_is_cached_and_keyed_by_the_shards(shard_dir, tmp_path, caplog):
    folder, _ = shard_dir
    data = _data(str(folder / "shard-*.tar"), tmp_path)
    with caplog.at_level(logging.INFO, logger="asr_ctc"):
        first = load_source_index(data.train, data, "train")
        again = load_source_index(data.train, data, "train")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("built train index" in m for m in messages) == 1
    assert sum("reusing train index" in m for m in messages) == 1
    assert again.key == first.key
    shard = folder / "shard-000002.tar"
    os.utime(shard, ns=(1, 1))  # touched (or rewritten): a new key, a rebuilt index
    assert load_source_index(data.train, data, "train").key != first.key


def _crafted_shard(path):
    """One good utterance between every kind of member a shard must not be trusted with."""
    good = _encode(_tone(0.6, 16000), 16000, "wav")
    with tarfile.open(path, "w") as tar:
        _add(tar, "a.wav", good)
        _add(tar, "a.txt", b"PLAY JAZZ")
        _add(tar, "evil.wav", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "hard.wav", b"", type=tarfile.LNKTYPE, linkname="a.wav")
        _add(tar, "dev.wav", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _add(tar, "fifo.wav", b"", type=tarfile.FIFOTYPE)
        _add(tar, "/abs/b.wav", good)
        _add(tar, "../up.wav", good)
        _add(tar, "x/../../up2.wav", good)
        _add(tar, "c.wav", good)
        _add(tar, "c.txt", b"\xff\xfe not utf8")
        _add(tar, "d.wav", b"RIFF\x10\x00\x00\x00WAVEfmt lies about everything")
        _add(tar, "d.txt", b"STOP")
        _add(tar, "e.txt", b"NO AUDIO HERE")
        _add(tar, "f.wav", good)
        _add(tar, "f.txt", b"NEXT SONG")
    return good


def test_crafted_shard_members_are_skipped_and_named_never_written(tmp_path, tiny_processor, caplog):
    folder = tmp_path / "evil"
    folder.mkdir()
    good = _crafted_shard(folder / "shard-000000.tar")
    # A truncated copy: cut in the middle of f.wav's data.
    data_bytes = (folder / "shard-000000.tar").read_bytes()
    cut = data_bytes.rindex(good[:64]) + 1000
    (folder / "shard-000001.tar").write_bytes(data_bytes[:cut])
    (folder / "shard-000002.tar").write_bytes(b"this is not a tar archive at all" * 40)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    cwd_before = sorted(os.listdir("."))
    data = _data(str(folder / "shard-*.tar"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        ds, report = prepare_split(data.train, tiny_processor, data, "train")
    text = "\n".join(r.getMessage() for r in caplog.records)
    shard0 = str((folder / "shard-000000.tar").resolve())
    for member, why in [
        ("evil.wav", "a link"),
        ("hard.wav", "a link"),
        ("dev.wav", "not a regular file"),
        ("fifo.wav", "not a regular file"),
        ("/abs/b.wav", "an absolute name"),
        ("../up.wav", "a '..'"),
        ("x/../../up2.wav", "a '..'"),
        ("c.txt", "not UTF-8"),
    ]:
        assert f"shard {shard0}, member {member}: skipped: {why}" in text, member
    assert f"shard {shard0}, utterance e: skipped: no audio member" in text
    assert "shard-000001.tar, member f.wav: skipped: its size" in text  # runs past the truncated end
    assert "shard-000002.tar: skipped: not a readable tar archive" in text
    # Kept: a and f from the whole shard, a from the truncated one; c (no transcript) and d (a lying
    # header) are reported in the split's summary, not read.
    assert ds.ids == ["a", "f", "a-5"]
    assert "c [" not in report.summary() and "empty transcript" in report.summary()
    assert "unreadable audio" in report.summary() and "d.wav" in report.summary()
    assert [len(ds[i]["input_values"]) for i in range(3)] == [9600] * 3
    # Nothing was extracted anywhere: the tree holds what it held plus the index cache.
    after = sorted(str(p) for p in tmp_path.rglob("*") if "cache" not in str(p))
    assert after == [p for p in before if "cache" not in p] and sorted(os.listdir(".")) == cwd_before
    # The streamed reader skips the same members and survives the same archives.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        items = list(open_streaming_split(data.train, tiny_processor, data))
    assert [x["id"] for x in items] == ["a", "f", "a"]
    assert "member ../up.wav: skipped" in "\n".join(r.getMessage() for r in caplog.records)


def test_a_member_truncated_after_indexing_is_skipped_at_read_time(shard_dir, tmp_path, tiny_processor):
    folder, _ = shard_dir
    data = _data(str(folder / "shard-000000.tar"), tmp_path)
    ds, _ = prepare_split(data.train, tiny_processor, data, "train")
    shard = folder / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: int(ds.table["offset"][2]) + 10])
    assert ds[2]["id"] == "sp-000" and ds.skipped == 1  # the next readable one takes its place


def _stream_ids(data, tiny_processor, seed, epoch, **kw):
    stream = open_streaming_split(data.train, tiny_processor, data, seed=seed, **kw)
    stream.set_epoch(epoch)
    return [x["id"] for x in stream]


def test_streamed_shards_shuffle_as_a_function_of_seed_and_epoch(tmp_path, tiny_processor):
    utts = _utterances(12)
    write_shards(tmp_path / "s", utts, per_shard=2)
    data = _data(str(tmp_path / "s" / "shard-*.tar"), tmp_path, streaming=True, shuffle_buffer=3)
    in_order = [x["id"] for x in open_streaming_split(data.train, tiny_processor, data)]
    assert in_order == [u[0] if u[0] != "sp-004" else "sp.004/original" for u in utts]
    first = _stream_ids(data, tiny_processor, seed=7, epoch=0)
    assert sorted(first) == sorted(in_order) and first != in_order
    assert _stream_ids(data, tiny_processor, seed=7, epoch=0) == first  # a pure function of (seed, epoch)
    assert _stream_ids(data, tiny_processor, seed=7, epoch=1) != first
    assert _stream_ids(data, tiny_processor, seed=8, epoch=0) != first
    # Split across DataLoader workers by whole shards: each utterance exactly once.
    stream = open_streaming_split(data.train, tiny_processor, data, seed=7)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert sorted(x["id"] for x in loader) == sorted(in_order)


def test_split_across_ranks_and_the_uneven_warning(tmp_path, caplog):
    write_shards(tmp_path / "s", _utterances(10), per_shard=2)  # 5 shards
    data = _data(str(tmp_path / "s" / "shard-*.tar"), tmp_path, streaming=True)
    source = open_source(data.train, data, "train")
    assert isinstance(source, ShardSource)
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        parts = [source.split(rank, 2) for rank in range(2)]
    assert [len(p.paths) for p in parts] == [3, 2]
    assert sorted(sum((p.paths for p in parts), [])) == sorted(source.paths)
    assert "5 shards do not divide by 2 ranks" in caplog.text
    with pytest.raises(DataSourceError, match="5 shards cannot be split across 6 ranks"):
        source.split(0, 6)


def test_hub_name_webdataset_is_read_by_the_shard_source(shard_dir, tmp_path, tiny_processor, caplog):
    folder, _ = shard_dir
    data = DataConfig(
        train=SourceConfig(hub_name="webdataset", data_files=str(folder / "shard-*.tar")),
        audio_column="wav",
        text_column="txt",
        cache_dir=str(tmp_path / "cache"),
        min_duration_s=0.1,
    )
    with caplog.at_level(logging.INFO, logger="asr_ctc"):
        ds, report = prepare_split(data.train, tiny_processor, data, "train")
    assert report.kept == 8
    assert "hub_name webdataset is read by the native shard source" in caplog.text


def test_shard_config_validation(tmp_path):
    base = {"output_dir": str(tmp_path / "o")}
    with pytest.raises(ValueError, match="exactly one of manifest, hub_name or shards"):
        config_from_dict({**base, "data": {"train": {"shards": "a-*.tar", "manifest": "m.tsv"}}})
    with pytest.raises(ValueError, match="audio_root: only a manifest"):
        config_from_dict({**base, "data": {"train": {"shards": "a-*.tar", "audio_root": "clips"}}})
    cfg = config_from_dict({**base, "data": {"train": {"shards": ["a-{0..3}.tar"], "streaming": True}}})
    assert cfg.data.train.shards == ["a-{0..3}.tar"]
    data = DataConfig(train=SourceConfig(shards=str(tmp_path / "none-*.tar")))
    with pytest.raises(DataSourceError, match=r"^data.train \(shards .*none-\*.tar\): no shard matches"):
        open_source(data.train, data, "train")


# -- fine-tuning on shards -----------------------------------------------------------------------------------


def _corpus_shards(corpus, out, per_shard: int) -> str:
    """The tiny corpus's train split as shards (the files' own bytes), like asr-ctc-prepare shards."""
    from asr_ctc.data.manifest import read_manifest

    rows = read_manifest(corpus / "train.tsv")
    out.mkdir()
    for start in range(0, len(rows), per_shard):
        with tarfile.open(out / f"shard-{start // per_shard:06d}.tar", "w") as tar:
            for row in rows[start : start + per_shard]:
                _add(tar, f"{row['id']}.wav", open(row["audio"], "rb").read())
                _add(tar, f"{row['id']}.txt", row["text"].upper().encode())
    return str(out / "shard-*.tar")


def _losses(out) -> dict[int, float]:
    history = json.loads((out / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.mark.parametrize("streaming", [False, True])
def test_finetune_on_shards_and_resume_exactly(tiny_corpus, tmp_path, streaming):
    import shutil

    from helpers import tiny_run_config

    from asr_ctc.finetune import run_finetune

    shards = _corpus_shards(tiny_corpus, tmp_path / "shards", per_shard=8)
    raw = tiny_run_config(tiny_corpus, tmp_path / "whole", max_steps=8, save_steps=4, eval_steps=8)
    raw["data"]["train"] = {"shards": shards, "streaming": streaming, "shuffle_buffer": 4}
    raw["data"]["eval"]["max_samples"] = 8
    whole = run_finetune(config_from_dict(raw))
    assert "eval_wer" in whole.metrics and (tmp_path / "whole" / "lm" / "lexicon.txt").is_file()
    losses = _losses(tmp_path / "whole")
    assert sorted(losses) == list(range(1, 9)) and all(np.isfinite(v) for v in losses.values())

    # Resume from checkpoint-4 (for the stream: inside its first pass, the rest runs into the second).
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "checkpoint-8")
    for p in cut.glob("*.json"):
        p.unlink()
    resumed = run_finetune(config_from_dict({**raw, "output_dir": str(cut)}), resume=True)
    assert resumed.metrics["train_loss"] is not None
    again = _losses(cut)
    for step in range(5, 9):
        assert again[step] == pytest.approx(losses[step], rel=1e-5, abs=1e-6), step


def _set_member_size(data: bytearray, header_at: int, size: int) -> None:
    """Rewrite a ustar header's size field and its checksum (so only the size lies)."""
    data[header_at + 124 : header_at + 136] = f"{size:011o}\0".encode()
    data[header_at + 148 : header_at + 156] = b" " * 8
    checksum = sum(data[header_at : header_at + 512])
    data[header_at + 148 : header_at + 156] = f"{checksum:06o}\0 ".encode()


def test_a_member_whose_size_lies_is_skipped_never_misread(tmp_path, tiny_processor, caplog):
    utts = _utterances(3)
    (path,) = write_shards(tmp_path / "s", utts, per_shard=3)
    data = bytearray(open(path, "rb").read())
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    second_wav = members[3]  # sp-001.wav: claims 100 bytes fewer than it holds
    _set_member_size(data, second_wav.offset, second_wav.size - 100)
    open(path, "wb").write(bytes(data))
    cfg = _data(path, tmp_path)
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        ds, report = prepare_split(cfg.train, tiny_processor, cfg, "train")
    # The archive still parses (the cut is inside the padding block), so the member's own header is what
    # gives it away: it is reported, not read 50 samples short.
    assert ds.ids == ["sp-000", "sp-002"] and report.kept == 2
    assert "sp-001.wav: its WAV header claims" in report.summary()
    assert [len(ds[i]["input_values"]) for i in range(2)] == [len(utts[0][1]), len(utts[2][1])]
    streamed = list(open_streaming_split(cfg.train, tiny_processor, cfg))
    assert [x["id"] for x in streamed] == ["sp-000", "sp-002"]
    assert "member sp-001.wav: skipped: its WAV header claims" in caplog.text

    # A size that lies by more than a block: the next tar header is read from inside the audio.
    _set_member_size(data, second_wav.offset, second_wav.size - 3000)
    open(path, "wb").write(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        ds, report = prepare_split(cfg.train, tiny_processor, cfg, "train")
    assert ds.ids == ["sp-000"] and "sp-001.wav: its WAV header claims" in report.summary()
    assert "unreadable tar header at byte" in caplog.text and "after member sp-001.wav" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        assert [x["id"] for x in open_streaming_split(cfg.train, tiny_processor, cfg)] == ["sp-000"]
    assert "unreadable tar header at byte" in caplog.text


def test_compressed_shards_stream_but_are_not_indexed(tmp_path, tiny_processor, caplog):
    import gzip

    (path,) = write_shards(tmp_path / "s", _utterances(2), per_shard=2)
    with open(path, "rb") as f:
        (tmp_path / "s" / "shard-000000.tar.gz").write_bytes(gzip.compress(f.read()))
    os.unlink(path)
    cfg = _data(str(tmp_path / "s" / "*.tar.gz"), tmp_path)
    items = list(open_streaming_split(cfg.train, tiny_processor, cfg))
    assert [x["id"] for x in items] == ["sp-000", "sp-001"]
    empty = pytest.raises(ValueError, match="shards .* has no utterances")
    with caplog.at_level(logging.WARNING, logger="asr_ctc"), empty:
        prepare_split(cfg.train, tiny_processor, cfg, "train")
    assert "compressed: member offsets need an uncompressed .tar" in caplog.text
