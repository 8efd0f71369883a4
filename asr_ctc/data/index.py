"""The index of a split: what training needs to know about every utterance, without its audio.

Building an index reads each audio file's *header* (``soundfile.info``), never its samples, and
normalises each transcript once. It is an Arrow table, cached on disk and memory-mapped, so a resume,
a second DDP rank or the inference job reuses it and every process shares the same pages instead of
holding copies. Two levels, both cached under ``data.cache_dir``:

* the **source index** (:func:`load_source_index`), keyed by the manifest's bytes (or the hub dataset's
  fingerprint) and the data config's text and audio fields, with one row per utterance:
  ``id`` str, ``audio`` str (file path; empty for hub rows), ``row`` int64 (row of the hub table holding
  the encoded bytes; -1 for files), ``text`` str (normalised), ``num_samples`` int64 (at
  ``data.sampling_rate``, predicted from the header: resampling maps n samples to round(n * new / old)),
  ``error`` str (why the row cannot be used, "" when it can);
* the **labels** (:func:`load_labels`), keyed by the source index and the tokenizer's vocabulary:
  ``labels`` list<int32> and ``min_frames`` int32, the CTC frames the labels need.

The duration and label-fits-frames filters are applied to these columns when a split is opened
(:mod:`asr_ctc.data.dataset`), so they cost a vectorised pass, not a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
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
from .audio import file_problem
from .manifest import read_manifest
from .text import normalize_text
from .vocab import count_oov

logger = logging.getLogger(__name__)

# Bump when the columns or their meaning change: old cache entries are then ignored, never misread.
INDEX_VERSION = 1
# Below this many rows, worker processes cost more to start than they save.
_PARALLEL_MIN_ROWS = 20_000

ProcessGuard = Callable[[], AbstractContextManager]


def default_cache_dir() -> Path:
    """``$ASR_CTC_CACHE/index``, default ``~/.cache/asr_ctc/index``."""
    root = os.environ.get("ASR_CTC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "asr_ctc")
    return Path(root) / "index"


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


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


def _header_samples(audio: str | bytes, sampling_rate: int) -> tuple[int, str]:
    """(samples at ``sampling_rate``, "") from the file header, or (0, reason) when it cannot be read."""
    name = "audio bytes" if isinstance(audio, bytes) else audio
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
    if info.frames <= 0:
        return 0, f"{name}: audio file has no samples"
    if info.samplerate == sampling_rate:
        return int(info.frames), ""
    return int(info.frames * sampling_rate / info.samplerate + 0.5), ""


def _index_rows(
    batch: dict[str, list], data_cfg: DataConfig, hub_audio: str | None, require_text: bool = True
) -> dict[str, list]:
    """``datasets.map`` function: header and transcript of a batch of rows."""
    texts, samples, errors, paths = [], [], [], []
    for i in range(len(batch["id"])):
        text = normalize_text(str(batch["text"][i] or ""), data_cfg.lowercase, data_cfg.chars_to_drop)
        if hub_audio is None:
            audio: str | bytes = batch["audio"][i]
            path = audio
        else:
            ref = batch[hub_audio][i] or {}
            if isinstance(ref, str):  # a builder without an Audio feature (json, csv) gives the path
                ref = {"path": ref}
            audio = ref.get("bytes") or ref.get("path") or ""
            path = "" if ref.get("bytes") else (ref.get("path") or "")
        n, why = _header_samples(audio, data_cfg.sampling_rate) if audio else (0, "no audio reference")
        if why:
            error = f"unreadable audio: {why}"
        elif not text and require_text:
            error = "empty transcript"
        else:
            error = ""
        texts.append(text)
        samples.append(n)
        errors.append(error)
        paths.append(path)
    return {"audio": paths, "text": texts, "num_samples": samples, "error": errors}


@dataclass
class SourceIndex:
    """A split's index (see the module docstring) and, for hub datasets, the Arrow table with the audio."""

    name: str
    table: datasets.Dataset
    key: str
    hub_table: datasets.Dataset | None = None
    audio_column: str = "audio"

    def texts(self) -> list[str]:
        """Normalised transcripts of the usable rows (for building a vocabulary)."""
        cols = self.table.select_columns(["text", "error"])[:]
        return [t for t, e in zip(cols["text"], cols["error"], strict=True) if not e]


_TEXT_FIELDS = ("audio_column", "text_column", "id_column", "sampling_rate", "lowercase", "chars_to_drop")


def load_source_index(
    source: SourceConfig,
    data_cfg: DataConfig,
    name: str,
    *,
    guard: ProcessGuard | None = None,
) -> SourceIndex:
    """The cached source index of one split: a local manifest or a (non-streaming) hub dataset.

    Args:
        source: ``manifest`` or ``hub_name`` (+ config, split, data_files); ``max_samples`` keeps the first N.
        data_cfg: columns, sampling rate, text normalisation, ``cache_dir``, ``preprocessing_num_workers``.
        name: the split's name, for messages.
        guard: a context manager factory run around a build (``TrainingArguments.main_process_first``).
    """
    cache = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
    config_part = {k: getattr(data_cfg, k) for k in _TEXT_FIELDS} | {
        "max_samples": source.max_samples,
        "version": INDEX_VERSION,
    }
    if source.manifest is not None:
        manifest = Path(source.manifest).expanduser()
        # The manifest's bytes and its resolved location (relative audio paths depend on it) key the cache.
        key = _digest(manifest.read_bytes(), str(manifest.resolve()), config_part)

        def build() -> datasets.Dataset:
            rows = read_manifest(
                manifest,
                audio_column=data_cfg.audio_column,
                text_column=data_cfg.text_column,
                id_column=data_cfg.id_column,
            )
            if source.max_samples is not None:
                rows = rows[: source.max_samples]
            raw = datasets.Dataset.from_dict(
                {
                    "id": [r["id"] for r in rows],
                    "audio": [r["audio"] for r in rows],
                    "row": [-1] * len(rows),
                    "text": [r["text"] for r in rows],
                }
            )
            del rows
            return raw.map(
                _index_rows,
                batched=True,
                fn_kwargs={"data_cfg": data_cfg, "hub_audio": None},
                num_proc=_num_proc(len(raw), data_cfg.preprocessing_num_workers),
                desc=f"indexing {name}",
            )

        table = _cached(cache / f"{name}-{key}", build, guard, f"{name} index")
        return SourceIndex(name, table, key)

    hub = load_hub_table(source, data_cfg)
    key = _digest(hub._fingerprint, config_part)

    def build_hub() -> datasets.Dataset:
        ids = (
            hub[data_cfg.id_column]
            if data_cfg.id_column in hub.column_names
            else [str(i) for i in range(len(hub))]
        )
        # The audio stays in the hub's own Arrow files: the index keeps only the row number.
        raw = hub.select_columns([data_cfg.audio_column, data_cfg.text_column])
        # Renamed out of the way: the index's own ``audio`` column is a plain path, not an Audio feature.
        raw = raw.rename_column(data_cfg.audio_column, "_audio_ref")
        raw = raw.rename_column(data_cfg.text_column, "text") if data_cfg.text_column != "text" else raw
        raw = raw.add_column("id", [str(i) for i in ids]).add_column("row", list(range(len(hub))))
        return raw.map(
            _index_rows,
            batched=True,
            fn_kwargs={"data_cfg": data_cfg, "hub_audio": "_audio_ref"},
            remove_columns=["_audio_ref"],
            num_proc=_num_proc(len(raw), data_cfg.preprocessing_num_workers),
            desc=f"indexing {name}",
        )

    table = _cached(cache / f"{name}-{key}", build_hub, guard, f"{name} index")
    return SourceIndex(name, table, key, hub_table=hub, audio_column=data_cfg.audio_column)


def load_hub_table(source: SourceConfig, data_cfg: DataConfig, streaming: bool = False) -> Any:
    """A hub (or ``datasets`` builder) dataset with its audio column left encoded.

    ``datasets``' own audio decoding needs torchcodec; the bytes are decoded with soundfile instead
    (:func:`asr_ctc.data.audio.decode_audio`).
    """
    kwargs: dict[str, Any] = {"split": source.hub_split or "train", "streaming": streaming}
    if source.data_files is not None:
        kwargs["data_files"] = source.data_files
    ds = datasets.load_dataset(source.hub_name, source.hub_config, **kwargs)
    if source.max_samples is not None:
        ds = ds.take(source.max_samples) if streaming else ds.select(range(min(source.max_samples, len(ds))))
    feature = (ds.features or {}).get(data_cfg.audio_column)
    if isinstance(feature, datasets.Audio):
        ds = ds.cast_column(data_cfg.audio_column, datasets.Audio(decode=False))
    return ds


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
    ids: list[str] = []
    seen: set[str] = set()
    for f in files:  # the stem names the utterance; a clash gets the row number, as in manifests
        uid = f.stem if f.stem not in seen else f"{f.stem}-{len(ids) + 1}"
        seen.add(uid)
        ids.append(uid)
    raw = datasets.Dataset.from_dict(
        {
            "id": ids,
            "audio": [str(f.resolve()) for f in files],
            "row": [-1] * len(files),
            "text": [""] * len(files),
        }
    )
    table = raw.map(
        _index_rows,
        batched=True,
        fn_kwargs={"data_cfg": data_cfg, "hub_audio": None, "require_text": False},
        desc="indexing audio files",
    )
    return SourceIndex("audio", table, key="")
