"""Audio decoding and resampling: soundfile (libsndfile) to decode, soxr to resample, nothing else.

torchaudio / torchcodec are deliberately not used: their decoders change between releases and pull in
FFmpeg; libsndfile reads WAV, FLAC, OGG/Vorbis, Opus and (libsndfile >= 1.1) MP3, which covers our needs.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """An audio file is missing, empty, or cannot be decoded; the message names the path and the reason."""


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample with soxr (high quality).

    Args:
        audio: float array, shape (num_samples,) or (num_samples, num_channels).
        orig_sr: sampling rate of ``audio`` in Hz.
        target_sr: wanted sampling rate in Hz.

    Returns:
        float32 array, shape (round(num_samples * target_sr / orig_sr),) or with the channel axis kept.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_sr} -> {target_sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio.copy()
    if audio.shape[0] == 0:
        return np.zeros((0, *audio.shape[1:]), dtype=np.float32)
    return soxr.resample(audio, orig_sr, target_sr).astype(np.float32, copy=False)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an audio file (missing, a directory, 0 bytes), or None; names the path."""
    path = Path(path)
    if not path.exists():
        return f"{path}: audio file not found"
    if path.is_dir():
        return f"{path}: is a directory, not an audio file"
    if path.stat().st_size == 0:
        return f"{path}: audio file is empty (0 bytes)"
    return None


def _mono_at(audio: np.ndarray, file_sr: int, sampling_rate: int | None) -> np.ndarray:
    """(N, channels) float32 -> (M,) float32 mono at ``sampling_rate`` (None: the file's own rate)."""
    # Averaging (rather than taking the first channel) keeps speech recorded on either side.
    mono = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if sampling_rate is None or sampling_rate == file_sr:
        return np.ascontiguousarray(mono, dtype=np.float32)
    return resample(mono, file_sr, int(sampling_rate))


def load_audio(path: str | os.PathLike, sampling_rate: int | None = 16000) -> np.ndarray:
    """Decode an audio file to mono float32 at ``sampling_rate``.

    Multi-channel audio is averaged to mono. ``sampling_rate=None`` keeps the file's own rate.

    Returns:
        float32 array, shape (num_samples,), values nominally in [-1, 1].

    Raises:
        AudioError: the file is missing, is a directory, is empty (0 bytes or 0 samples), or is not audio
            that libsndfile can decode. The message names the path and the reason.
    """
    problem = file_problem(path)
    if problem:
        raise AudioError(problem)
    try:
        audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        # libsndfile's errors: unknown format, malformed or truncated header, unsupported encoding.
        raise AudioError(f"{path}: cannot decode audio ({exc})") from exc
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: audio file has no samples")
    return _mono_at(audio, int(file_sr), sampling_rate)


def decode_audio(data: bytes, sampling_rate: int, name: str) -> np.ndarray:
    """Decode encoded audio bytes (as a hub dataset's Arrow table stores them) like :func:`load_audio`.

    Raises:
        AudioError: the bytes are not audio libsndfile can decode, or hold no samples; names ``name``.
    """
    try:
        audio, file_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt data  # noqa: BLE001
        raise AudioError(f"{name}: cannot decode audio bytes ({exc})") from exc
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: audio has no samples")
    return _mono_at(audio, int(file_sr), sampling_rate)
