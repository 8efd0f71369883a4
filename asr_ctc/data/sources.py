"""Data sources: one interface for everything a split can be read from.

A split's data is a manifest (CSV/TSV/JSONL naming audio files), a ``datasets`` table (the hub, or a local
builder such as ``json``/``csv``/``parquet``) or WebDataset tar shards (:mod:`asr_ctc.data.shards`). The
index (:mod:`asr_ctc.data.index`) and the dataset (:mod:`asr_ctc.data.dataset`) see only this interface:

* :meth:`Source.rows` -- one row per utterance for the index, without audio: ``id`` str, ``audio`` str
  (a file path, a shard path, or "" for bytes held in a table), ``part`` str (the member inside a
  container, "" otherwise), ``row`` int64 (the item's row in a table, -1 otherwise), ``offset`` and
  ``size`` int64 (the member's bytes inside a shard, -1 otherwise), ``text`` str (as written);
* :meth:`Source.audio` -- the encoded audio of one item from its index row: a file path (str) or bytes;
* :meth:`Source.fingerprint` -- what identifies the content, keying the index cache;
* :meth:`Source.split` -- this rank's part of the source, for reading without an index (streaming);
  indexed sources are split across ranks by the sampler instead, over the one shared index;
* :meth:`Source.stream` -- examples one at a time (``datasets.IterableDataset`` of ``id``, ``text``,
  ``audio``), for the sources that can be streamed (hub tables and shards).

:func:`open_source` builds the right one from a split's config; every failure to open a source is a
:class:`DataSourceError` whose message names the source (``data.train (manifest m.tsv)``) and the cause.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ..config import DataConfig, SourceConfig
from .audio import AudioError
from .manifest import MANIFEST_SUFFIXES, ManifestError, read_manifest

logger = logging.getLogger(__name__)

AudioRef = str | bytes
# The index's columns before the header pass adds num_samples and error (see the module docstring).
ROW_COLUMNS = ("id", "audio", "part", "row", "offset", "size", "text")


class DataSourceError(ValueError):
    """A data source cannot be opened; the message names the source and the cause (one line)."""


def digest(*parts: Any) -> str:
    """A short, stable hash of bytes and JSON-able values (cache keys)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def rows_table(columns: dict[str, list]) -> datasets.Dataset:
    """An index-rows table from columns; missing standard columns get their "none" value."""
    n = len(columns["id"])
    defaults = {"audio": "", "part": "", "row": -1, "offset": -1, "size": -1, "text": ""}
    full = {name: columns.get(name, [defaults.get(name)] * n) for name in ROW_COLUMNS}
    full.update({k: v for k, v in columns.items() if k not in full})
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in ("id", "audio", "part", "text")},
            **{k: datasets.Value("int64") for k in ("row", "offset", "size")},
        }
    )
    extra = {k: datasets.Value("string") for k in full if k not in features}
    return datasets.Dataset.from_dict(full, features=datasets.Features({**features, **extra}))


class Source(ABC):
    """A split's data (see the module docstring). Instances are pickled into DataLoader workers."""

    def __init__(self, cfg: SourceConfig, data_cfg: DataConfig, name: str):
        self.cfg = cfg
        self.data_cfg = data_cfg
        self.name = name

    #: what kind of source, for messages ("manifest", "hub", "shards")
    kind = "source"

    @property
    def label(self) -> str:
        """``data.<split> (<kind> <where>)``: how messages name this source."""
        return f"data.{self.name} ({self.kind} {self.where})"

    @property
    @abstractmethod
    def where(self) -> str:
        """The file, folder, pattern or hub id the source reads."""

    def error(self, cause: BaseException | str) -> DataSourceError:
        """A :class:`DataSourceError` naming this source and ``cause`` (its first line)."""
        text = cause if isinstance(cause, str) else _first_line(cause)
        return DataSourceError(f"{self.label}: {text}")

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the rows or their audio may have changed."""

    @abstractmethod
    def rows(self) -> datasets.Dataset:
        """The index rows (``ROW_COLUMNS``), ``max_samples`` applied."""

    @abstractmethod
    def audio(self, row: Mapping[str, Any]) -> AudioRef:
        """The encoded audio of one index row: a path or bytes.

        Raises:
            AudioError: the item cannot be read (missing file, a member that lies about its size); the
                message names the file (and member).
        """

    def split(self, rank: int, world_size: int) -> Source:
        """This rank's part, for reading without an index. Indexed sources are split by the sampler."""
        raise self.error("only a hub dataset or shards can be read without an index (streaming: true)")

    def stream(self) -> datasets.IterableDataset:
        """Examples (``id``, ``text``, ``audio``: a path or ``{"bytes", "path"}``) without an index."""
        raise self.error("only a hub dataset or shards can be streamed")


# -- manifests ---------------------------------------------------------------------------------------------


class ManifestSource(Source):
    """A local CSV/TSV/JSONL manifest (:mod:`asr_ctc.data.manifest`); relative audio paths resolve against
    ``audio_root`` when set, else against the manifest's own folder."""

    kind = "manifest"

    def __init__(self, cfg: SourceConfig, data_cfg: DataConfig, name: str):
        super().__init__(cfg, data_cfg, name)
        self.path = Path(cfg.manifest).expanduser()
        self.audio_root = Path(cfg.audio_root).expanduser() if cfg.audio_root else None
        if self.path.is_dir():
            found = sorted(p.name for p in self.path.iterdir() if p.suffix.lower() in MANIFEST_SUFFIXES)
            hint = f" (it holds {', '.join(found[:5])})" if found else ""
            raise self.error(
                f"{self.path} is a directory; point manifest at a .tsv/.csv/.jsonl file{hint}, or write one "
                "with asr-ctc-prepare"
            )
        if not self.path.is_file():
            raise self.error(f"manifest not found: {self.path}")
        if self.audio_root is not None and not self.audio_root.is_dir():
            raise self.error(f"audio_root {self.audio_root} is not a directory")

    @property
    def where(self) -> str:
        return str(self.path)

    def fingerprint(self) -> str:
        # The bytes, and where relative paths point (the manifest's location or audio_root).
        root = self.audio_root.resolve() if self.audio_root else self.path.resolve().parent
        return digest(self.path.read_bytes(), str(self.path.resolve()), str(root))

    def rows(self) -> datasets.Dataset:
        d = self.data_cfg
        try:
            rows = read_manifest(
                self.path,
                audio_column=d.audio_column,
                text_column=d.text_column,
                id_column=d.id_column,
                audio_root=self.audio_root,
            )
        except ManifestError as exc:
            raise self.error(exc) from exc
        if self.cfg.max_samples is not None:
            rows = rows[: self.cfg.max_samples]
        return rows_table({k: [r[k] for r in rows] for k in ("id", "audio", "text")})

    def audio(self, row: Mapping[str, Any]) -> AudioRef:
        return row["audio"]


# -- datasets tables (the hub, or a local builder) ---------------------------------------------------------

# Builders that store audio through datasets' Audio feature, whose encoder imports torchcodec even for a
# path: they cannot work without it, so they are refused before any work, with the way round them.
_TORCHCODEC_BUILDERS = {
    "audiofolder": "point data.<split>.manifest at the folder's metadata.csv (data.audio_column: file_name), "
    "or write a manifest with asr-ctc-prepare",
}


def _torchcodec_available() -> bool:
    return importlib.util.find_spec("torchcodec") is not None


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


class HubSource(Source):
    """A ``datasets`` table (``hub_name`` + config/split/data_files), its audio column kept encoded (the
    bytes or a path); decoded with soundfile, never with datasets' torchcodec decoder."""

    kind = "hub"

    def __init__(self, cfg: SourceConfig, data_cfg: DataConfig, name: str, streaming: bool | None = None):
        super().__init__(cfg, data_cfg, name)
        self.streaming = cfg.streaming if streaming is None else streaming
        builder = cfg.hub_name
        if builder in _TORCHCODEC_BUILDERS and not _torchcodec_available():
            raise self.error(
                f"the {builder} builder encodes audio with torchcodec, which this project does not use; "
                + _TORCHCODEC_BUILDERS[builder].replace("<split>", name)
            )
        self.table = self._load()

    @property
    def where(self) -> str:
        parts = [self.cfg.hub_name or ""]
        if self.cfg.hub_config:
            parts.append(self.cfg.hub_config)
        if self.cfg.data_files is not None:
            files = self.cfg.data_files
            parts.append(f"data_files {files if isinstance(files, str) else ', '.join(files[:3])}")
        return " ".join(parts)

    def _load(self) -> Any:
        cfg, d = self.cfg, self.data_cfg
        kwargs: dict[str, Any] = {"split": cfg.hub_split or "train", "streaming": self.streaming}
        if cfg.data_files is not None:
            kwargs["data_files"] = cfg.data_files
            files = [cfg.data_files] if isinstance(cfg.data_files, str) else list(cfg.data_files)
            for pattern in files:  # datasets answers a local pattern that matches nothing with StopIteration
                local = os.path.expanduser(str(pattern))
                if "://" not in local and not glob.glob(local):
                    raise self.error(f"data_files: no file matches {pattern}")
            if cfg.hub_name == "csv" and files and all(str(f).lower().endswith(".tsv") for f in files):
                kwargs["sep"] = "\t"  # datasets' csv builder reads commas unless told
                logger.info("%s: reading .tsv data_files tab-separated", self.label)
        try:
            ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- any failure to open the source becomes one line
            from ..cli import _is_hub_error  # the one definition of "the hub cannot be reached"

            if _is_hub_error(exc):
                raise  # offline hub / missing dataset: the command line reports these in its own words
            cause = _root_cause(exc)
            if "torchcodec" in str(cause):
                raise self.error(
                    "the builder stores audio with datasets' Audio feature, whose encoder needs torchcodec "
                    "(not used by this project); write a manifest (asr-ctc-prepare) or shards instead"
                ) from exc
            raise self.error(f"cannot load: {type(cause).__name__}: {_first_line(cause)}") from exc
        if cfg.max_samples is not None:
            n = cfg.max_samples
            ds = ds.take(n) if self.streaming else ds.select(range(min(n, len(ds))))
        columns = list(ds.column_names or [])
        for column, role in ((d.audio_column, "audio"), (d.text_column, "transcript")):
            if columns and column not in columns:
                raise self.error(
                    f"no {role} column {column!r} (data.{role if role == 'audio' else 'text'}_column); "
                    f"columns found: {', '.join(map(repr, columns))}"
                )
        feature = (ds.features or {}).get(d.audio_column)
        if isinstance(feature, datasets.Audio):
            ds = ds.cast_column(d.audio_column, datasets.Audio(decode=False))
        return ds

    def fingerprint(self) -> str:
        return self.table._fingerprint

    def rows(self) -> datasets.Dataset:
        d, hub = self.data_cfg, self.table
        ids = hub[d.id_column] if d.id_column in hub.column_names else [str(i) for i in range(len(hub))]
        refs = hub.select_columns([d.audio_column]).with_format("arrow")
        paths = []
        for batch in refs.iter(batch_size=1000):
            column = batch.column(0)
            if pa.types.is_struct(column.type):  # an Audio feature: {bytes, path}; the bytes stay put
                paths.extend(p or "" for p in pc.struct_field(column, "path").to_pylist())
            else:  # a builder without an Audio feature (json, csv): the column is the path itself
                paths.extend(str(p or "") for p in column.to_pylist())
        return rows_table(
            {
                "id": [str(i) for i in ids],
                "audio": paths,
                "row": list(range(len(hub))),
                "text": [str(t or "") for t in hub[d.text_column]],
            }
        )

    def audio(self, row: Mapping[str, Any]) -> AudioRef:
        ref = self.table[int(row["row"])][self.data_cfg.audio_column]
        if isinstance(ref, str):
            return ref
        if not ref:
            raise AudioError(f"{row['id']}: no audio reference")
        return ref.get("bytes") or ref.get("path") or ""

    def split(self, rank: int, world_size: int) -> HubSource:
        from datasets.distributed import split_dataset_by_node

        part = object.__new__(HubSource)
        part.__dict__.update(self.__dict__)
        part.table = split_dataset_by_node(self.table, rank=rank, world_size=world_size)
        return part

    def stream(self) -> datasets.IterableDataset:
        d = self.data_cfg
        ds = self.table if self.streaming else self.table.to_iterable_dataset()
        names = {d.id_column: "id", d.text_column: "text", d.audio_column: "audio"}
        columns = ds.column_names or []
        ds = ds.select_columns([c for c in names if c in columns])
        return ds.rename_columns({c: n for c, n in names.items() if c in columns and c != n})


# -- choosing a source --------------------------------------------------------------------------------------


def open_source(cfg: SourceConfig, data_cfg: DataConfig, name: str, streaming: bool | None = None) -> Source:
    """The :class:`Source` a split's config names.

    ``hub_name: webdataset`` with ``data_files`` is read by the native shard source (datasets' builder
    would decode the audio with torchcodec); a line says so.

    Raises:
        DataSourceError: the source cannot be opened (one line naming it and the cause).
    """
    from .shards import ShardSource

    if cfg.shards is not None:
        return ShardSource(cfg, data_cfg, name)
    if cfg.manifest is not None:
        return ManifestSource(cfg, data_cfg, name)
    if cfg.hub_name == "webdataset" and cfg.data_files is not None:
        logger.info(
            "data.%s: hub_name webdataset is read by the native shard source (as data.%s.shards: %s)",
            name,
            name,
            cfg.data_files,
        )
        native = dataclasses.replace(cfg, shards=cfg.data_files, hub_name=None, data_files=None)
        return ShardSource(native, data_cfg, name)
    return HubSource(cfg, data_cfg, name, streaming)
