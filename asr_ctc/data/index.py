"""The index of a split: what training needs to know about every utterance, without its audio.

Building an index reads each audio file's *header* (``soundfile.info``), never its samples, and
normalises each transcript once. It is an Arrow table, cached on disk and memory-mapped, so a resume,
a second DDP rank or the inference job reuses it and every process shares the same pages instead of
holding copies. Two levels, both cached under ``data.cache_dir``:

* the **source index** (:func:`load_source_index`), keyed by the source's fingerprint (a manifest's
  bytes, a hub table's fingerprint, the shards' names, sizes and times) and the data config's text and
  audio fields, with one row per utterance: the source's row columns (:mod:`asr_ctc.data.sources`: ``id``,
  ``audio``, ``part``, ``row``, ``offset``, ``size``), ``text`` str (normalised), ``num_samples`` int64 (at
  ``data.sampling_rate``, predicted from the header: resampling maps n samples to round(n * new / old)),
  ``error`` str (why the row cannot be used, "" when it can);
* the **labels** (:func:`load_labels`), keyed by the source index and the tokenizer's vocabulary:
  ``labels`` list<int32> and ``min_frames`` int32, the CTC frames the labels need.

The duration and label-fits-frames filters are applied to these columns when a split is opened
(:mod:`asr_ctc.data.dataset`), so they cost a vectorised pass, not a rebuild.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import soundfile as sf

from ..config import DataConfig, SourceConfig
from .audio import AudioError, file_problem
from .sources import Source, digest, open_source, rows_table
from .text import normalize_text
from .vocab import count_oov

logger = logging.getLogger(__name__)

# Bump when the columns or their meaning change: old cache entries are then ignored, never misread.
INDEX_VERSION = 2
# Below this many rows, worker processes cost more to start than they save.
_PARALLEL_MIN_ROWS = 20_000

ProcessGuard = Callable[[], AbstractContextManager]


def default_cache_dir() -> Path:
    """``$ASR_CTC_CACHE/index``, default ``~/.cache/asr_ctc/index``."""
    root = os.environ.get("ASR_CTC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "asr_ctc")
    return Path(root) / "index"


_digest = digest


def _num_proc(rows: int, wanted: int | None) -> int | None:
    if wanted is not None:
        return wanted if wanted > 1 else None
    return min(os.cpu_count() or 1, 8) if rows >= _PARALLEL_MIN_ROWS else None


def _cached(
    path: Path, build: Callable[[], datasets.Dataset], guard: ProcessGuard | None, what: str
) -> datasets.Dataset:
    """Load the Arrow table at ``path``, building it first if no complete copy is there.

    The build runs under ``guard`` (``TrainingArguments.main_process_first``): the main process builds
    while the others wait, then they all memory-map the same files. A table is written to a temporary
    directory and renamed into place, so a killed build never leaves a half table that looks complete.
    """
    with guard() if guard is not None else contextlib.nullcontext():
        if not (path / "dataset_info.json").is_file():
            start = time.perf_counter()
            table = build()
            if not len(table):  # nothing to cache (and datasets cannot load an empty table back)
                return table
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            table.save_to_disk(str(tmp))
            try:
                os.replace(tmp, path)
            except OSError:  # another process (without a shared guard) got there first
                shutil.rmtree(tmp, ignore_errors=True)
            seconds = time.perf_counter() - start
            logger.info("index: built %s (%d rows) in %.1f s: %s", what, len(table), seconds, path)
        else:
            logger.info("index: reusing %s: %s", what, path)
    return datasets.load_from_disk(str(path))


# -- level 1: the source index ------------------------------------------------------------------------


def _header_samples(audio: str | bytes, sampling_rate: int, name: str) -> tuple[int, str]:
    """(samples at ``sampling_rate``, "") from the file header, or (0, reason) when it cannot be read."""
    try:
        if isinstance(audio, bytes):
            info = sf.info(io.BytesIO(audio))
        else:
            problem = file_problem(audio)
            if problem:
                return 0, problem
            info = sf.info(audio)
    except Exception as exc:  # libsndfile raises several types for a bad header  # noqa: BLE001
        return 0, f"{name}: cannot decode audio ({str(exc).splitlines()[0][:160]})"
    if info.frames <= 0 or info.samplerate <= 0:
        return 0, f"{name}: audio file has no samples"
    if info.samplerate == sampling_rate:
        return int(info.frames), ""
    return int(info.frames * sampling_rate / info.samplerate + 0.5), ""


def _index_rows(batch: dict[str, list], source: Source, require_text: bool = True) -> dict[str, list]:
    """``datasets.map`` function: header and normalised transcript of a batch of index rows."""
    d = source.data_cfg
    texts, samples, errors = [], [], []
    for i in range(len(batch["id"])):
        row = {k: v[i] for k, v in batch.items()}
        text = normalize_text(str(row["text"] or ""), d.lowercase, d.chars_to_drop)
        name = f"{row['audio']}:{row['part']}" if row["part"] else (row["audio"] or "audio bytes")
        try:
            audio = source.audio(row)
        except AudioError as exc:
            n, why = 0, str(exc)
        else:
            n, why = _header_samples(audio, d.sampling_rate, name) if audio else (0, "no audio reference")
        if why:
            error = f"unreadable audio: {why}"
        elif not text and require_text:
            error = "empty transcript"
        else:
            error = ""
        texts.append(text)
        samples.append(n)
        errors.append(error)
    return {"text": texts, "num_samples": samples, "error": errors}


@dataclass
class SourceIndex:
    """A split's index (see the module docstring) and the source its audio is read from."""

    name: str
    table: datasets.Dataset
    key: str
    source: Source

    def texts(self) -> list[str]:
        """Normalised transcripts of the usable rows (for building a vocabulary)."""
        cols = self.table.select_columns(["text", "error"])[:]
        return [t for t, e in zip(cols["text"], cols["error"], strict=True) if not e]


_TEXT_FIELDS = ("audio_column", "text_column", "id_column", "sampling_rate", "lowercase", "chars_to_drop")


def build_index(source: Source, require_text: bool = True) -> datasets.Dataset:
    """The (uncached) index of ``source``: its rows, each header read and transcript normalised once."""
    raw = source.rows()
    return raw.map(
        _index_rows,
        batched=True,
        fn_kwargs={"source": source, "require_text": require_text},
        num_proc=_num_proc(len(raw), source.data_cfg.preprocessing_num_workers),
        desc=f"indexing {source.name}",
    )


def load_source_index(
    source: Source | SourceConfig,
    data_cfg: DataConfig | None = None,
    name: str | None = None,
    *,
    guard: ProcessGuard | None = None,
) -> SourceIndex:
    """The cached source index of one split.

    Args:
        source: a :class:`~asr_ctc.data.sources.Source`, or a split's config (then ``data_cfg`` and
            ``name`` are needed to open it with :func:`~asr_ctc.data.sources.open_source`).
        data_cfg: columns, sampling rate, text normalisation, ``cache_dir``, ``preprocessing_num_workers``.
        name: the split's name, for messages and the cache entry.
        guard: a context manager factory run around a build (``TrainingArguments.main_process_first``).

    Raises:
        DataSourceError: the source cannot be opened or read (one line naming it).
    """
    if not isinstance(source, Source):
        if data_cfg is None or name is None:
            raise TypeError("load_source_index(SourceConfig, ...) needs data_cfg and name")
        source = open_source(source, data_cfg, name, streaming=False)
    d = source.data_cfg
    cache = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    config_part = {k: getattr(d, k) for k in _TEXT_FIELDS} | {
        "max_samples": source.cfg.max_samples,
        "kind": source.kind,
        "version": INDEX_VERSION,
    }
    key = _digest(source.fingerprint(), config_part)
    what = f"{source.name} index"
    table = _cached(cache / f"{source.name}-{key}", lambda: build_index(source), guard, what)
    return SourceIndex(source.name, table, key, source)


# -- level 2: labels ----------------------------------------------------------------------------------


def min_ctc_frames(labels: Sequence[int]) -> int:
    """Frames CTC needs for ``labels``: one per label plus a blank between each pair of equal neighbours."""
    repeats = sum(1 for a, b in zip(labels[:-1], labels[1:], strict=True) if a == b)
    return len(labels) + repeats


def _label_rows(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    vocab = tokenizer.get_vocab()
    labels = [tokenizer(t).input_ids if t else [] for t in batch["text"]]
    # The characters each transcript has outside the vocabulary (they become <unk>), for the report.
    oov = ["".join(c * n for c, n in count_oov([t], vocab).items()) for t in batch["text"]]
    return {"labels": labels, "min_frames": [min_ctc_frames(x) for x in labels], "oov": oov}


def load_labels(index: SourceIndex, tokenizer: Any, data_cfg: DataConfig, guard: ProcessGuard | None = None):
    """Label ids, the CTC frames they need, and characters outside the vocabulary, for every row of
    ``index`` (cached per vocabulary)."""
    cache = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
    vocab = sorted(tokenizer.get_vocab().items())
    key = _digest(index.key, type(tokenizer).__name__, vocab, INDEX_VERSION)

    def build() -> datasets.Dataset:
        return index.table.select_columns(["text"]).map(
            _label_rows,
            batched=True,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=["text"],
            num_proc=_num_proc(len(index.table), data_cfg.preprocessing_num_workers),
            desc=f"encoding {index.name} transcripts",
        )

    if not index.key:  # an uncached index (plain audio files): nothing to key the labels by either
        return build()
    return _cached(cache / f"{index.name}-labels-{key}", build, guard, f"{index.name} labels")


# -- plain audio files (transcription without references) ----------------------------------------------

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")


class AudioFilesSource(Source):
    """Audio files given on the command line (``inference --audio``), with no transcripts."""

    kind = "audio files"

    def __init__(self, files: Sequence[Path], data_cfg: DataConfig):
        super().__init__(SourceConfig(), data_cfg, "audio")
        self.files = [str(f.resolve()) for f in files]

    @property
    def where(self) -> str:
        return f"{len(self.files)} files"

    def fingerprint(self) -> str:
        return _digest(self.files)

    def rows(self) -> datasets.Dataset:
        ids: list[str] = []
        seen: set[str] = set()
        for f in map(Path, self.files):  # the stem names the utterance; a clash gets the row number
            uid = f.stem if f.stem not in seen else f"{f.stem}-{len(ids) + 1}"
            seen.add(uid)
            ids.append(uid)
        return rows_table({"id": ids, "audio": self.files})

    def audio(self, row: dict[str, Any]) -> str:
        return row["audio"]


def index_audio_files(paths: Sequence[str | os.PathLike], data_cfg: DataConfig) -> SourceIndex:
    """An (uncached) index of audio files and folders (searched recursively), with no transcripts.

    Raises:
        ValueError: a path does not exist, or no audio file (``AUDIO_SUFFIXES``) was found.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"--audio: no such file or directory: {p}")
    if not files:
        where = ", ".join(map(str, paths))
        raise ValueError(f"--audio: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {where}")
    source = AudioFilesSource(files, data_cfg)
    return SourceIndex("audio", build_index(source, require_text=False), key="", source=source)
