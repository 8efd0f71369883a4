"""From a data source (local manifest or hub dataset) to a dataset of model inputs and CTC targets.

Every row is checked on the way in: audio that cannot be read, a transcript that normalises to nothing,
a duration outside the configured range, or a target that cannot fit the frames the model will produce
(CTC needs one frame per label, plus one blank between two equal labels). Bad rows are skipped and
reported in one summary line naming the first few offenders; a split that ends up empty is an error,
never a silent inf/NaN loss later.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm
from transformers import Wav2Vec2Processor

from ..config import DataConfig, SourceConfig
from .audio import AudioError, load_audio, resample
from .manifest import read_manifest
from .text import normalize_text
from .vocab import count_oov

logger = logging.getLogger(__name__)

FrameCounter = Callable[[torch.Tensor], torch.Tensor]


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


class SpeechDataset(torch.utils.data.Dataset):
    """Normalised audio and label ids, in memory, with the ids and transcripts kept for scoring."""

    def __init__(
        self, ids: list[str], texts: list[str], input_values: list[np.ndarray], labels: list[list[int]]
    ):
        self.ids = ids
        self.texts = texts
        self.input_values = input_values
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_values": self.input_values[i], "labels": self.labels[i], "id": self.ids[i]}

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_values]


def _decode_bytes(data: bytes, sampling_rate: int, name: str) -> np.ndarray:
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt data
        raise AudioError(f"{name}: cannot decode audio bytes ({exc})") from exc
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: audio has no samples")
    return resample(audio.mean(axis=1), sr, sampling_rate)


def load_rows(
    source: SourceConfig, data_cfg: DataConfig, resolve: Callable[[str], Path]
) -> list[dict[str, Any]]:
    """Rows ``{"id", "text", "audio"}`` of one source; ``audio`` is a file path or an in-memory loader.

    A local manifest gives paths. A hub dataset (the real code path for users with the internet; it cannot
    run offline) is read with its audio column left undecoded, because ``datasets``' own decoding needs
    torchcodec: the encoded bytes are decoded here with soundfile instead.
    """
    if source.manifest is not None:
        rows = read_manifest(
            resolve(source.manifest),
            audio_column=data_cfg.audio_column,
            text_column=data_cfg.text_column,
            id_column=data_cfg.id_column,
        )
    else:
        import datasets

        ds = datasets.load_dataset(source.hub_name, source.hub_config, split=source.hub_split or "train")
        ds = ds.cast_column(data_cfg.audio_column, datasets.Audio(decode=False))
        rows = []
        for i, ex in enumerate(ds):
            audio = ex[data_cfg.audio_column]
            row_id = str(ex.get(data_cfg.id_column, i))
            if audio.get("bytes"):
                rows.append({"id": row_id, "text": ex[data_cfg.text_column], "audio": audio["bytes"]})
            else:
                rows.append({"id": row_id, "text": ex[data_cfg.text_column], "audio": audio["path"]})
    if source.max_samples is not None:
        rows = rows[: source.max_samples]
    return rows


def min_ctc_frames(labels: Sequence[int]) -> int:
    """Frames CTC needs for ``labels``: one per label plus a blank between each pair of equal neighbours."""
    repeats = sum(1 for a, b in zip(labels[:-1], labels[1:], strict=True) if a == b)
    return len(labels) + repeats


def prepare_split(
    rows: list[dict[str, Any]],
    processor: Wav2Vec2Processor,
    data_cfg: DataConfig,
    name: str,
    frame_counter: FrameCounter | None = None,
    for_training: bool = True,
) -> tuple[SpeechDataset, SplitReport]:
    """Load, clean and encode one split.

    Args:
        rows: from :func:`load_rows`.
        processor: its feature extractor normalises the audio, its tokenizer encodes the transcripts.
        data_cfg: sampling rate, duration range, text normalisation.
        name: the split's name, for the report.
        frame_counter: maps (N,) int64 sample counts to (N,) frame counts (the model's
            ``_get_feat_extract_output_lengths``); needed for the label-fits-frames check.
        for_training: apply the duration and label-fits-frames filters. A test split is scored whole
            (only unreadable audio and empty transcripts are skipped).

    Raises:
        EmptyDatasetError: when no row survives.
    """
    report = SplitReport(name=name, total=len(rows))
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    sr = data_cfg.sampling_rate
    ids, texts, audios, labels = [], [], [], []
    for row in tqdm(rows, desc=f"loading {name}", unit="utt", disable=len(rows) < 200):
        row_id = str(row["id"])
        text = normalize_text(str(row.get("text") or ""), data_cfg.lowercase, data_cfg.chars_to_drop)
        if not text:
            report.drop("empty transcript", row_id)
            continue
        try:
            src = row["audio"]
            audio = _decode_bytes(src, sr, row_id) if isinstance(src, bytes) else load_audio(src, sr)
        except AudioError as exc:
            report.drop("unreadable audio", f"{row_id} [{exc}]")
            continue
        duration = len(audio) / sr
        if for_training and not (data_cfg.min_duration_s <= duration <= data_cfg.max_duration_s):
            report.drop(f"duration outside [{data_cfg.min_duration_s}, {data_cfg.max_duration_s}] s", row_id)
            continue
        ids.append(row_id)
        texts.append(text)
        audios.append(audio)
        labels.append(tokenizer(text).input_ids)

    report.unknown_chars = count_oov(texts, vocab)
    if for_training and frame_counter is not None and audios:
        frames = frame_counter(torch.tensor([len(a) for a in audios], dtype=torch.long)).tolist()
        keep = [i for i in range(len(ids)) if min_ctc_frames(labels[i]) <= frames[i]]
        for i in sorted(set(range(len(ids))) - set(keep)):
            report.drop("transcript longer than the model's output frames", ids[i])
        ids, texts, audios, labels = ([seq[i] for i in keep] for seq in (ids, texts, audios, labels))

    report.kept = len(ids)
    if not ids:
        raise EmptyDatasetError(f"data split {name!r} is empty after filtering: {report.summary()}")
    # Zero-mean, unit-variance per utterance, as wav2vec2 expects; done once here instead of every epoch.
    input_values = [
        processor.feature_extractor(a, sampling_rate=sr, return_attention_mask=False)
        .input_values[0]
        .astype(np.float32)
        for a in audios
    ]
    return SpeechDataset(ids, texts, input_values, labels), report
