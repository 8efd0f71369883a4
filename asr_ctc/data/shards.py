"""WebDataset tar shards as a data source: indexed by member offsets, or streamed shard by shard.

Layout (the one ``webdataset`` and the course's ``create_librispeech_webdataset.py`` write): ``shard-*.tar``
files, each utterance a run of adjacent members sharing a key, the key being the member name up to the
first dot of its base name: ``<key>.wav`` (or ``.flac``, ``.mp3``, ``.ogg``, ``.opus``), ``<key>.txt``
(the transcript, UTF-8) and optionally ``<key>.json`` (metadata, kept as text in the index's ``meta``
column; its ``"id"``, when it has one, names the utterance, else the key does). Other members are ignored.

Two ways to read them (``data.<split>.streaming``):

* **indexed** (default): one pass over each shard's tar headers (``tarfile`` seeks past the data) and one
  read of each audio member for its header (:mod:`asr_ctc.data.index`) give an index like a manifest's:
  ``audio`` the shard, ``part`` the member, ``offset``/``size`` its bytes. An item is then one ``pread``
  of those bytes. Length grouping, exact resume and DDP (every rank memory-maps the one index, the sampler
  splits it) work as for manifests. Needs the shards on a local (or mounted) file system.
* **streamed**: shards read front to back (``tarfile`` stream mode, so a pipe or a remote file object
  works too), no index; the shard list is split across ranks and DataLoader workers and shuffled per
  epoch as a pure function of (seed, epoch), see :meth:`ShardSource.stream`.

A shard is untrusted input. Nothing is ever extracted to disk: member bytes are read into memory. Links,
devices, directories and FIFOs, absolute names or names with a ``..`` component, members whose size runs
past the end of the file, transcripts that are not UTF-8 or oversized, and anything after a corrupt or
truncated header are skipped with a warning naming the shard and the member; a shard that is not a tar at
all is skipped with a warning. The run goes on with what could be read.

Why ``tarfile`` offsets and not the ``webdataset`` package or ``datasets``' webdataset builder: measured in
``scripts/bench_data.py`` and docs/your-corpus.md. In short, the builder casts audio to datasets' Audio
feature, whose encoder needs torchcodec even to keep bytes, and it copies every byte into an Arrow cache;
the ``webdataset`` package streams only (no random access, so no length grouping or exact resume from an
index) and is one more dependency for what ``tarfile`` gives.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

import datasets

from ..config import DataConfig, SourceConfig
from .audio import AudioError
from .sources import Source, digest, rows_table

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "opus")
TEXT_EXTENSION = "txt"
META_EXTENSION = "json"
# A transcript or metadata member larger than this is not what it claims to be (and is not read).
MAX_TEXT_BYTES = 1 << 20

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..099}`` (zero-padded numeric ranges) and ``{a,b,c}`` (alternatives), left to right.

    Raises:
        ValueError: a range runs backwards or spans more than a million names.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo or hi - lo >= 1_000_000:
            raise ValueError(f"{pattern}: brace range {{{body}}} must run upwards, at most 1,000,000 names")
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def expand_shards(spec: str | Iterable[str]) -> list[Path]:
    """The shard files a ``shards`` value names: globs and brace ranges expanded, in order, duplicates
    dropped.

    Raises:
        ValueError: a named file does not exist, a pattern matches nothing, or nothing is named.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for item in items:
        for name in expand_braces(os.path.expanduser(str(item))):
            if glob.has_magic(name):
                found = sorted(glob.glob(name))
                if not found:
                    raise ValueError(f"no shard matches {name}")
                out.extend(Path(f) for f in found)
            elif not os.path.isfile(name):
                what = "is a directory, not a shard" if os.path.isdir(name) else "shard not found"
                raise ValueError(f"{what}: {name}")
            else:
                out.append(Path(name))
    if not out:
        raise ValueError("no shards named")
    return list(dict.fromkeys(p.resolve() for p in out))


def split_key(name: str) -> tuple[str, str]:
    """``dir/utt.seg.flac`` -> (``dir/utt``, ``seg.flac``): WebDataset's key and extension rule."""
    path = PurePosixPath(name)
    stem, dot, ext = path.name.partition(".")
    key = str(path.parent / stem) if str(path.parent) not in ("", ".") else stem
    return key, ext.lower() if dot else ""


def header_problem(data: bytes) -> str | None:
    """Why a WAV member's own header disagrees with the bytes it came with, or None.

    A tar header whose size was cut by less than a block still leaves a readable archive, and libsndfile
    quietly decodes what is there; the RIFF size field (the bytes after it) then claims more than the
    member holds. Streamed WAVs that leave the field 0 or 0xFFFFFFFF (unknown) are not judged.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    claimed = int.from_bytes(data[4:8], "little")
    if claimed in (0, 0xFFFFFFFF) or claimed + 8 <= len(data):
        return None
    return f"its WAV header claims {claimed + 8} bytes, the member holds {len(data)}"


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be read, or None."""
    if member.isdir():
        return "directory"  # skipped silently: tar cf of a folder has them
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname!r})"
    if not member.isreg():
        return "not a regular file (device, FIFO or other special member)"
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute name"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "a '..' component in its name"
    return None


def _warn(shard: str, member: str | None, why: str, what: str = "member") -> None:
    where = f"shard {shard}" + (f", {what} {member}" if member else "")
    logger.warning("%s: skipped: %s", where, why)


class _Sample(dict):
    """One utterance while a shard is read: key, audio member (name, offset, size, maybe bytes), text,
    meta."""


def _read_text(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: str) -> str | None:
    if member.size > MAX_TEXT_BYTES:
        _warn(shard, member.name, f"{member.size} bytes is too large for a transcript or metadata")
        return None
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        _warn(shard, member.name, f"truncated: {len(data)} of {member.size} bytes")
        return None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        _warn(shard, member.name, "not UTF-8 text")
        return None


def iter_samples(
    fileobj: IO[bytes], shard: str, *, stream: bool, file_size: int | None = None
) -> Iterator[_Sample]:
    """The utterances of one shard, in order (see the module docstring for what is skipped).

    Args:
        fileobj: the shard, opened in binary mode (seekable unless ``stream``).
        shard: its name, for warnings.
        stream: read as a stream (``tarfile`` mode ``r|*``: also compressed tars) and keep each audio
            member's bytes under ``"bytes"``; otherwise seek past audio data (mode ``r:``, uncompressed
            only) and keep its ``offset`` and ``size``.
        file_size: the shard's size in bytes, to catch members that claim to run past its end.
    """
    current: _Sample | None = None
    last = None
    if not stream:
        magic = fileobj.read(6)
        fileobj.seek(0)
        if magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")):
            _warn(shard, None, "compressed: member offsets need an uncompressed .tar (decompress it, or "
                  "read it with streaming: true)")
            return
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*" if stream else "r:")
    except (tarfile.TarError, OSError, EOFError) as exc:
        _warn(shard, None, f"not a readable tar archive ({exc})")
        return
    try:
        for member in tar:
            last = member.name
            why = _unsafe(member)
            if why is not None:
                if why != "directory":
                    _warn(shard, member.name, why)
                continue
            if file_size is not None and member.offset_data + member.size > file_size:
                _warn(shard, member.name, f"its size ({member.size} bytes) runs past the end of the shard")
                continue
            key, ext = split_key(member.name)
            kind = ext.rsplit(".", 1)[-1]
            if current is None or current["key"] != key:
                if current is not None:
                    yield current
                current = _Sample(key=key, text=None, meta="", audio=None)
            if kind in AUDIO_EXTENSIONS and current["audio"] is None:
                if stream:  # read first: a member cut short raises here, before it counts as the audio
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    why = (
                        f"truncated: {len(data)} of {member.size} bytes"
                        if len(data) != member.size
                        else header_problem(data)
                    )
                    if why:
                        _warn(shard, member.name, why)
                        continue
                    current["bytes"] = data
                current["audio"] = member.name
                current["offset"], current["size"] = member.offset_data, member.size
            elif ext == TEXT_EXTENSION:
                current["text"] = _read_text(tar, member, shard)
            elif ext == META_EXTENSION:
                current["meta"] = _read_text(tar, member, shard) or ""
        # tarfile ends the iteration quietly at a header it cannot parse past the first: a member whose
        # size lies by a block or more. An archive ends in zero blocks; anything else there is damage.
        if stream:  # what follows the last header read: the end-of-archive zero blocks, or damage
            rest = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
        elif file_size is not None and tar.offset < file_size:
            fileobj.seek(tar.offset)
            rest = fileobj.read(2 * tarfile.BLOCKSIZE)
        else:
            rest = b""
        if rest.strip(b"\0"):
            after = f" after member {last}" if last else ""
            _warn(
                shard,
                None,
                f"unreadable tar header at byte {tar.offset}{after} (a member's size lies, or the file is "
                "damaged); the members before it are kept",
            )
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        after = f" after member {last}" if last else ""
        _warn(shard, None, f"truncated or corrupt{after} ({exc}); the members before it are kept")
    finally:
        tar.close()
    if current is not None:
        yield current


def sample_id(sample: Mapping[str, Any]) -> str:
    """The utterance id: the metadata's ``"id"`` when it has one (``asr-ctc-prepare shards`` keeps the
    manifest's id there, the key being that id with ``.``, ``/`` and ``\\`` made safe), else the key."""
    meta = sample.get("meta") or ""
    if meta.startswith("{") and '"id"' in meta:
        try:
            uid = json.loads(meta).get("id")
        except ValueError:
            uid = None
        if isinstance(uid, str) and uid.strip():
            return uid.strip()
    return sample["key"]


def _usable(sample: _Sample, shard: str) -> bool:
    if sample["audio"] is None:
        _warn(shard, sample["key"], f"no audio member ({', '.join(AUDIO_EXTENSIONS)})", "utterance")
        return False
    return True


class ShardSource(Source):
    """WebDataset tar shards (``data.<split>.shards``); see the module docstring."""

    kind = "shards"

    def __init__(self, cfg: SourceConfig, data_cfg: DataConfig, name: str):
        super().__init__(cfg, data_cfg, name)
        try:
            self.paths = [str(p) for p in expand_shards(cfg.shards)]
        except ValueError as exc:
            raise self.error(exc) from exc
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    @property
    def where(self) -> str:
        spec = self.cfg.shards
        return spec if isinstance(spec, str) else ", ".join(spec[:3]) + (", ..." if len(spec) > 3 else "")

    def fingerprint(self) -> str:
        stats = []
        for p in self.paths:
            st = os.stat(p)
            stats.append((p, st.st_size, st.st_mtime_ns))
        return digest(stats)

    def rows(self) -> datasets.Dataset:
        cols: dict[str, list] = {k: [] for k in ("id", "audio", "part", "offset", "size", "text", "meta")}
        seen: set[str] = set()
        limit = self.cfg.max_samples
        for path in self.paths:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                for sample in iter_samples(f, path, stream=False, file_size=size):
                    if not _usable(sample, path):
                        continue
                    uid = sample_id(sample)
                    if uid in seen:  # the same key twice (two shards, or not adjacent): keep both, renamed
                        uid = f"{uid}-{len(cols['id']) + 1}"
                    seen.add(uid)
                    cols["id"].append(uid)
                    cols["audio"].append(path)
                    cols["part"].append(sample["audio"])
                    cols["offset"].append(sample["offset"])
                    cols["size"].append(sample["size"])
                    cols["text"].append(sample["text"] or "")
                    cols["meta"].append(sample["meta"])
                    if limit is not None and len(cols["id"]) >= limit:
                        return rows_table(cols)
        return rows_table(cols)

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # a forked DataLoader worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def audio(self, row: Mapping[str, Any]) -> bytes:
        where = f"{row['audio']}:{row['part']}"
        try:
            data = os.pread(self._fd(row["audio"]), int(row["size"]), int(row["offset"]))
        except OSError as exc:
            raise AudioError(f"{where}: cannot read the shard ({exc})") from exc
        if len(data) != row["size"]:
            raise AudioError(f"{where}: truncated: {len(data)} of {row['size']} bytes")
        why = header_problem(data)
        if why:
            raise AudioError(f"{where}: {why}")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not travel to another process
        return state

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def split(self, rank: int, world_size: int) -> ShardSource:
        """Shards ``rank::world_size`` (a whole shard per rank: nothing is read twice).

        NeMo's caveat applies: when the shard count does not divide by ``world_size`` the ranks get
        different amounts of data (a warning says so); write shards in a multiple of the ranks (times
        the DataLoader workers per rank).

        Raises:
            DataSourceError: fewer shards than ranks (a rank would have no data).
        """
        if len(self.paths) < world_size:
            raise self.error(f"{len(self.paths)} shards cannot be split across {world_size} ranks")
        if len(self.paths) % world_size:
            logger.warning(
                "%s: %d shards do not divide by %d ranks: ranks get unequal data",
                self.label,
                len(self.paths),
                world_size,
            )
        part = object.__new__(ShardSource)
        part.__dict__.update(self.__getstate__())
        part.paths = self.paths[rank::world_size]
        return part

    def stream(self) -> datasets.IterableDataset:
        """The shards as a ``datasets.IterableDataset`` with one ``datasets`` shard per tar file, so that
        ``datasets`` splits them across DataLoader workers and (``split_dataset_by_node``, which
        accelerate applies with ``accelerator_config.dispatch_batches: false``) across ranks, and
        ``.shuffle(seed)`` shuffles the shard order per epoch with seed + epoch."""
        features = datasets.Features(
            {
                "id": datasets.Value("string"),
                "text": datasets.Value("string"),
                "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                "meta": datasets.Value("string"),
            }
        )
        return datasets.IterableDataset.from_generator(
            _stream_examples, gen_kwargs={"shards": list(self.paths)}, features=features
        )


def _stream_examples(shards: list[str]) -> Iterator[dict[str, Any]]:
    for path in shards:
        try:
            f = open(path, "rb")  # noqa: SIM115 -- closed below, after the generator has read it
        except OSError as exc:
            _warn(path, None, f"cannot open ({exc})")
            continue
        with f:
            for sample in iter_samples(f, path, stream=True):
                if _usable(sample, path):
                    yield {
                        "id": sample_id(sample),
                        "text": sample["text"] or "",
                        "audio": {"bytes": sample["bytes"], "path": f"{path}:{sample['audio']}"},
                        "meta": sample["meta"],
                    }
