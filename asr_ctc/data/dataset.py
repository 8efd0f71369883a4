"""From a split's index to a dataset of model inputs and CTC targets, audio decoded when a batch needs it.

Every row is checked from its index entry (:mod:`asr_ctc.data.index`), never by decoding the audio:
audio whose header cannot be read, a transcript that normalises to nothing, a duration outside the
configured range, or a target that cannot fit the frames the model will produce (CTC needs one frame per
label, plus one blank between two equal labels). Bad rows are skipped and reported in one summary line
naming the first few; a split that ends up empty is an error, never a silent inf/NaN loss later.

Audio that becomes unreadable after indexing (a file replaced or truncated during a long run) is found
only when its item is decoded: that item is skipped with a warning naming it, counted, and the next
readable utterance takes its place, so a batch keeps its size and the run goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from transformers import Wav2Vec2Processor

from ..config import DataConfig, SourceConfig
from .audio import AudioError, decode_audio, load_audio
from .index import ProcessGuard, SourceIndex, load_labels, load_source_index, min_ctc_frames
from .sources import Source, open_source
from .text import normalize_text
from .vocab import count_oov

logger = logging.getLogger(__name__)

FrameCounter = Callable[[torch.Tensor], torch.Tensor]
UNREADABLE = "unreadable audio"


class EmptyDatasetError(ValueError):
    """Every row of a split was rejected (or the source had none)."""


@dataclass
class SplitReport:
    """What happened to a split's rows; ``summary()`` is the one line printed for it."""

    name: str
    total: int = 0
    kept: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)
    unknown_chars: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, row_id: str) -> None:
        self.dropped.setdefault(reason, []).append(row_id)

    def summary(self, max_names: int = 3) -> str:
        parts = [f"{self.name}: kept {self.kept} of {self.total} utterances"]
        for reason, ids in self.dropped.items():
            names = ", ".join(ids[:max_names]) + (", ..." if len(ids) > max_names else "")
            parts.append(f"dropped {len(ids)} ({reason}: {names})")
        if self.unknown_chars:
            chars = ", ".join(
                f"{c!r} x{n}" for c, n in sorted(self.unknown_chars.items(), key=lambda kv: -kv[1])
            )
            parts.append(f"characters outside the vocabulary mapped to <unk>: {chars}")
        return "; ".join(parts)


def normalize_audio(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance, as wav2vec2 expects (the feature extractor's formula)."""
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances of an index, decoded, resampled and normalised one at a time in ``__getitem__``.

    Items are ``{"input_values": (N,) float32, "labels": list[int], "id": str}``. The index columns stay
    memory-mapped; ``lengths`` (samples per utterance, from the headers) feeds the length-grouped
    sampler without touching the audio.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        sampling_rate: int,
        source: Source | None = None,
        normalize: bool = True,
    ):
        self.table = table
        self.sampling_rate = sampling_rate
        # Reads one item's encoded audio from its index row (a path or bytes); None: ``audio`` is a path.
        self.source = source
        self.normalize = normalize
        # Shared with DataLoader workers (created before they fork), so the count covers all of them.
        self._skipped = multiprocessing.Value("i", 0)

    def head(self, n: int) -> SpeechDataset:
        """The first ``n`` utterances (all of them when there are fewer), same source and settings."""
        table = self.table.select(range(min(n, len(self.table))))
        return SpeechDataset(table, self.sampling_rate, self.source, self.normalize)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def lengths(self) -> list[int]:
        """Samples per utterance at ``sampling_rate`` (from the file headers; no audio is read)."""
        return self.table["num_samples"]

    @property
    def ids(self) -> list[str]:
        return self.table["id"]

    @property
    def texts(self) -> list[str]:
        return self.table["text"]

    @property
    def skipped(self) -> int:
        """Items skipped because their audio could not be decoded (all worker processes)."""
        return self._skipped.value

    def load(self, row: dict[str, Any]) -> np.ndarray:
        """Decode one index row's audio to mono float32 at ``sampling_rate``."""
        ref = self.source.audio(row) if self.source is not None else row["audio"]
        if isinstance(ref, bytes):
            name = f"{row['audio']}:{row['part']}" if row.get("part") else str(row["id"])
            return decode_audio(ref, self.sampling_rate, name)
        return load_audio(ref, self.sampling_rate)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.table)
        for attempt in range(n):
            row = self.table[(i + attempt) % n]
            try:
                audio = self.load(row)
            except AudioError as exc:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                    count = self._skipped.value
                logger.warning("skipping utterance %s: %s (%d skipped so far)", row["id"], exc, count)
                continue
            item = {"input_values": normalize_audio(audio) if self.normalize else audio, "id": row["id"]}
            if "labels" in row:
                item["labels"] = row["labels"]
            return item
        raise EmptyDatasetError(f"no utterance of {n} could be decoded (all audio became unreadable)")


def open_split(
    index: SourceIndex,
    processor: Wav2Vec2Processor,
    data_cfg: DataConfig,
    frame_counter: FrameCounter | None = None,
    for_training: bool = True,
    guard: ProcessGuard | None = None,
) -> tuple[SpeechDataset, SplitReport]:
    """Filter and encode one indexed split.

    Args:
        index: from :func:`asr_ctc.data.index.load_source_index`.
        processor: its tokenizer encodes the transcripts (cached per vocabulary).
        data_cfg: sampling rate, duration range.
        frame_counter: maps (N,) int64 sample counts to (N,) frame counts
            (:func:`asr_ctc.modeling.frame_lengths`); needed for the label-fits-frames check.
        for_training: apply the duration and label-fits-frames filters. A test split is scored whole
            (only unreadable audio and empty transcripts are skipped).
        guard: as for :func:`~asr_ctc.data.index.load_source_index`.

    Raises:
        EmptyDatasetError: when no row survives.
    """
    if not len(index.table):
        raise EmptyDatasetError(f"data split {index.name!r} is empty: {index.source.label} has no utterances")
    labels = load_labels(index, processor.tokenizer, data_cfg, guard)
    table = datasets.concatenate_datasets([index.table, labels], axis=1)
    report = SplitReport(name=index.name, total=len(table))
    cols = table.select_columns(["id", "error", "num_samples", "min_frames", "oov"])[:]
    ids, errors = cols["id"], cols["error"]
    samples = np.asarray(cols["num_samples"], dtype=np.int64)
    keep = np.array([not e for e in errors], dtype=bool)
    for i in np.flatnonzero(~keep):
        reason, _, detail = errors[i].partition(": ")
        report.drop(reason, f"{ids[i]} [{detail}]" if detail else ids[i])
    if for_training:
        lo, hi = data_cfg.min_duration_s, data_cfg.max_duration_s
        seconds = samples / data_cfg.sampling_rate
        bad = keep & ((seconds < lo) | (seconds > hi))
        for i in np.flatnonzero(bad):
            report.drop(f"duration outside [{lo}, {hi}] s", ids[i])
        keep &= ~bad
        if frame_counter is not None:
            frames = frame_counter(torch.from_numpy(samples)).numpy()
            bad = keep & (np.asarray(cols["min_frames"]) > frames)
            for i in np.flatnonzero(bad):
                report.drop("transcript longer than the model's output frames", ids[i])
            keep &= ~bad
    kept = np.flatnonzero(keep)
    report.unknown_chars = count_oov((cols["oov"][i] for i in kept if cols["oov"][i]), {})
    report.kept = len(kept)
    if not len(kept):
        raise EmptyDatasetError(f"data split {index.name!r} is empty after filtering: {report.summary()}")
    table = table.select(kept) if len(kept) < len(table) else table
    return SpeechDataset(table, data_cfg.sampling_rate, index.source), report


def prepare_split(
    source: SourceConfig,
    processor: Wav2Vec2Processor,
    data_cfg: DataConfig,
    name: str,
    frame_counter: FrameCounter | None = None,
    for_training: bool = True,
    guard: ProcessGuard | None = None,
) -> tuple[SpeechDataset, SplitReport]:
    """:func:`~asr_ctc.data.index.load_source_index` then :func:`open_split`, for one split."""
    index = load_source_index(open_source(source, data_cfg, name, streaming=False), guard=guard)
    return open_split(index, processor, data_cfg, frame_counter, for_training, guard)


# -- streaming ----------------------------------------------------------------------------------------


def _stream_source(source: Source | SourceConfig, data_cfg: DataConfig, name: str) -> Source:
    return source if isinstance(source, Source) else open_source(source, data_cfg, name, streaming=True)


def streaming_texts(
    source: Source | SourceConfig, data_cfg: DataConfig, name: str = "train"
) -> Iterator[str]:
    """The normalised transcripts of a streamed source, in one pass over its text column."""
    stream = _stream_source(source, data_cfg, name).stream().select_columns(["text"])
    for ex in stream:
        text = normalize_text(str(ex["text"] or ""), data_cfg.lowercase, data_cfg.chars_to_drop)
        if text:
            yield text


def open_streaming_split(
    source: Source | SourceConfig,
    processor: Wav2Vec2Processor,
    data_cfg: DataConfig,
    frame_counter: FrameCounter | None = None,
    for_training: bool = True,
    seed: int | None = None,
    name: str = "train",
) -> datasets.IterableDataset:
    """A streamed split (``datasets.IterableDataset``): examples decoded and filtered as they arrive.

    ``seed`` (training): the shard order and a buffer of ``shuffle_buffer`` examples are shuffled, a pure
    function of (seed, epoch) (``datasets`` seeds each epoch with seed + epoch; the Trainer calls
    ``set_epoch``), so a resumed run that skips the batches it has seen sees the same order.

    What streaming gives up: no index, so no length grouping (batches mix lengths, more padding), no known
    epoch size (set ``training.max_steps``), and the filters report nothing up front; unusable examples are
    logged and skipped as they are met.
    """
    src = _stream_source(source, data_cfg, name)
    stream = src.stream()
    if seed is not None:
        stream = stream.shuffle(seed=seed, buffer_size=src.cfg.shuffle_buffer)
    tokenizer = processor.tokenizer
    sr = data_cfg.sampling_rate
    lo, hi = data_cfg.min_duration_s, data_cfg.max_duration_s

    def prepare(example: dict[str, Any], idx: int) -> dict[str, Any]:
        uid = str(example.get("id") or idx)
        text = normalize_text(str(example.get("text") or ""), data_cfg.lowercase, data_cfg.chars_to_drop)
        out = {"id": uid, "input_values": np.zeros(0, np.float32), "labels": [], "skip": ""}
        ref = example["audio"]
        try:
            if isinstance(ref, str):
                audio = load_audio(ref, sr)
            elif ref.get("bytes"):
                audio = decode_audio(ref["bytes"], sr, ref.get("path") or uid)
            else:
                audio = load_audio(ref["path"], sr)
        except AudioError as exc:
            out["skip"] = f"{UNREADABLE}: {exc}"
            return out
        labels = tokenizer(text).input_ids if text else []
        if not text:
            out["skip"] = "empty transcript"
        elif for_training and not lo <= len(audio) / sr <= hi:
            out["skip"] = f"duration {len(audio) / sr:.2f} s outside [{lo}, {hi}] s"
        elif for_training and frame_counter is not None:
            frames = int(frame_counter(torch.tensor([len(audio)]))[0])
            if min_ctc_frames(labels) > frames:
                out["skip"] = "transcript longer than the model's output frames"
        if not out["skip"]:
            out.update(input_values=normalize_audio(audio), labels=labels)
        return out

    def usable(example: dict[str, Any]) -> bool:
        if example["skip"]:
            logger.warning("skipping utterance %s: %s", example["id"], example["skip"])
        return not example["skip"]

    columns = list(stream.column_names or [])
    stream = stream.map(prepare, with_indices=True, remove_columns=columns or None)
    return stream.filter(usable).remove_columns(["skip"])
