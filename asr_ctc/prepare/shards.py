"""Any manifest to WebDataset shards: ``shard-000000.tar``, ``shard-000001.tar``, ... of a chosen size.

Layout (the WebDataset convention, https://github.com/webdataset/webdataset#the-format): a shard is a
plain POSIX tar; each utterance is three consecutive members sharing a key, ``<key>.<audio ext>`` (the
source file's bytes: WAV, FLAC, MP3, OGG and Opus are copied, anything else libsndfile reads is re-encoded
to FLAC, losslessly), ``<key>.txt`` (the transcript, UTF-8) and ``<key>.json`` (the manifest's other
columns, plus ``sampling_rate`` and ``num_samples`` from the audio header). The key is the utterance id
with ``.`` and ``/`` replaced (WebDataset splits a member name at its first dot).

Shards are written one at a time to a temporary file beside the target and renamed over it when complete,
so an interrupted run leaves earlier good shards in place and never half a shard. ``shards.json`` (written
last) lists the shards and their utterance counts. A folder that already holds ``shard-*.tar`` is refused
unless ``overwrite``; then shards of a previous, longer run that this run did not rewrite are deleted
after it succeeds, so that a ``shard-*.tar`` glob never mixes two runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from asr_ctc.data.manifest import read_manifest
from asr_ctc.fileio import atomic_write, atomic_write_text
from asr_ctc.prepare._common import PrepareError

logger = logging.getLogger("asr_ctc.prepare")

#: Audio kept as the source bytes (the extensions a WebDataset reader maps to audio).
COPIED_AUDIO = ("wav", "flac", "mp3", "ogg", "opus")
SHARD_PATTERN = "shard-{:06d}.tar"
_TAR_BLOCK = 512


@dataclass(frozen=True)
class ShardSummary:
    """What :func:`write_shards` wrote: shard paths and the utterances in each."""

    out_dir: Path
    shards: list[Path]
    counts: list[int]

    @property
    def pattern(self) -> str:
        """Brace range naming every shard, e.g. ``.../shard-{000000..000003}.tar``."""
        last = len(self.shards) - 1
        return str(self.out_dir / f"shard-{{{0:06d}..{last:06d}}}.tar")


def _member_size(num_bytes: int) -> int:
    """Bytes a member takes in the tar: one header block plus the data padded to whole blocks.

    (A member whose name or metadata needs a PAX extended header takes two more blocks; ignored here, so
    the size limit is approximate by at most 1 KiB per member.)"""
    return _TAR_BLOCK + -(-num_bytes // _TAR_BLOCK) * _TAR_BLOCK


def _key(utt_id: str) -> str:
    return re.sub(r"[./\\]", "_", utt_id)


def _audio_member(path: str) -> tuple[str, bytes, dict[str, int]]:
    """(extension, bytes, header info) of one utterance's audio; re-encoded to FLAC only when needed."""
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile raises several types for a bad header  # noqa: BLE001
        reason = str(exc).splitlines()[0][:160]
        raise PrepareError(f"{path}: cannot read the audio header ({reason})") from exc
    header = {"sampling_rate": int(info.samplerate), "num_samples": int(info.frames)}
    ext = Path(path).suffix.lower().lstrip(".")
    if ext in COPIED_AUDIO:
        return ext, Path(path).read_bytes(), header
    audio, rate = sf.read(path, dtype="int32" if "PCM" in info.subtype else "float32", always_2d=True)
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC", subtype="PCM_24" if "PCM_24" in info.subtype else "PCM_16")
    return "flac", buffer.getvalue(), header


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o644
    member.mtime = 0  # byte-identical shards for the same manifest
    tar.addfile(member, io.BytesIO(data))


def _write_staged(
    rows: list[dict[str, Any]], keys: list[str], staging: Path, limit: int | None, max_utterances: int | None
) -> list[int]:
    """Write the shards into ``staging``, one utterance at a time; returns the utterance count of each."""
    counts: list[int] = []
    stack: contextlib.ExitStack | None = None  # the open shard: its temp file, then the tar writer on it
    tar: tarfile.TarFile | None = None
    size = 0
    try:
        for key, row in zip(keys, rows, strict=True):
            ext, audio, header = _audio_member(row["audio"])
            meta: dict[str, Any] = {"id": row["id"], **header}
            meta.update({k: v for k, v in row.items() if k not in ("id", "audio", "text")})
            members = [
                (f"{key}.{ext}", audio),
                (f"{key}.txt", str(row["text"]).encode("utf-8")),
                (f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")),
            ]
            utt_size = sum(_member_size(len(data)) for _, data in members)
            if stack is not None and (
                (limit is not None and size + utt_size > limit)
                or (max_utterances is not None and counts[-1] >= max_utterances)
            ):
                stack.close()  # the tar writes its end-of-archive blocks, then the temp file is renamed
                stack = None
            if stack is None:
                stack = contextlib.ExitStack()
                handle = stack.enter_context(atomic_write(staging / SHARD_PATTERN.format(len(counts)), "wb"))
                tar = stack.enter_context(tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT))
                counts.append(0)
                size = 0
            for name, data in members:
                _add(tar, name, data)
            counts[-1] += 1
            size += utt_size
        if stack is not None:
            stack.close()
    except BaseException:
        if stack is not None:  # the temp file of the open shard is removed, not renamed
            stack.__exit__(*sys.exc_info())
        raise
    return counts


def write_shards(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_size_mb: float | None = 256.0,
    max_utterances: int | None = None,
    shuffle_seed: int | None = None,
    overwrite: bool = False,
    text_column: str = "text",
    audio_column: str = "audio",
    id_column: str = "id",
) -> ShardSummary:
    """Write the utterances of ``manifest`` as WebDataset shards in ``out_dir``.

    A shard is closed before the utterance that would take it past ``max_size_mb`` (MB = 10^6 bytes) or
    ``max_utterances``; an utterance larger than the size limit gets a shard of its own.

    Args:
        manifest: a CSV, TSV or JSONL manifest (:func:`asr_ctc.data.manifest.read_manifest`).
        out_dir: folder for the shards (created).
        max_size_mb: size limit per shard in MB, > 0, or None for no size limit.
        max_utterances: utterance limit per shard, >= 1, or None.
        shuffle_seed: shuffle the utterances with this seed first (a streaming reader reads a shard in
            order, so shuffling here mixes speakers and lengths within each shard); None keeps manifest
            order.
        overwrite: replace the shards of an earlier run in ``out_dir``.
        text_column, audio_column, id_column: the manifest's column names.

    Returns:
        the shards written and the utterance count of each.

    Raises:
        PrepareError: a limit is invalid (or both are None), ``out_dir`` holds shards and ``overwrite`` is
            False, the manifest has no rows, or an audio file is missing or undecodable (named).
        ManifestError: the manifest cannot be read.
    """
    if max_size_mb is None and max_utterances is None:
        raise PrepareError(
            "shards: give a size limit (--max-size-mb) or an utterance limit (--max-utterances)"
        )
    if max_size_mb is not None and not max_size_mb > 0:
        raise PrepareError(f"--max-size-mb: expected a size > 0 in MB, got {max_size_mb}")
    if max_utterances is not None and (isinstance(max_utterances, bool) or max_utterances < 1):
        raise PrepareError(f"--max-utterances: expected an integer >= 1, got {max_utterances}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out-dir: {out} is a file; expected a folder for the shards")
    previous = sorted(out.glob("shard-*.tar")) if out.is_dir() else []
    if previous and not overwrite:
        raise PrepareError(
            f"--out-dir: {out} already holds {len(previous)} shard-*.tar; pass --overwrite to replace them"
        )
    rows = read_manifest(manifest, audio_column, text_column, id_column)
    if not rows:
        raise PrepareError(f"{manifest}: the manifest has no utterances")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    keys = [_key(row["id"]) for row in rows]
    if len(set(keys)) != len(keys):
        raise PrepareError(
            f"{manifest}: two utterance ids give the same shard key once '.' and '/' are replaced"
        )

    limit = None if max_size_mb is None else int(max_size_mb * 1e6)
    out.mkdir(parents=True, exist_ok=True)
    # The new shards are built in a staging folder and moved into place only when all are complete: a
    # failure or a kill part-way leaves the previous run's shards untouched, not a mix of two runs.
    staging = Path(tempfile.mkdtemp(prefix=".shards-", dir=out))
    try:
        counts = _write_staged(rows, keys, staging, limit, max_utterances)
        shards = [out / SHARD_PATTERN.format(i) for i in range(len(counts))]
        for path in shards:
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in previous:
        if stale not in shards:
            stale.unlink()
            logger.info("%s: removed (left from an earlier run)", stale)
    summary = ShardSummary(out, shards, counts)
    atomic_write_text(
        out / "shards.json",
        json.dumps(
            {
                "manifest": str(Path(manifest).resolve()),
                "pattern": summary.pattern,
                "shards": [{"name": p.name, "utterances": n} for p, n in zip(shards, counts, strict=True)],
                "utterances": sum(counts),
                "max_size_mb": max_size_mb,
                "max_utterances": max_utterances,
                "shuffle_seed": shuffle_seed,
            },
            indent=1,
        )
        + "\n",
    )
    return summary
