"""Figures: the training curves written at the end of a run, and CTC alignments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .decode import TimedWord, token_spans
from .fileio import atomic_write


def plot_training_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> bool:
    """Training loss and eval WER against steps, as a PNG at ``path``; False when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    wer = [(e["step"], e["eval_wer"]) for e in log_history if "eval_wer" in e and "step" in e]
    if not train and not wer:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    fig, ax_loss = plt.subplots(figsize=(7, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), color="tab:blue", label="training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss", color="tab:blue")
    if wer:
        ax_wer = ax_loss.twinx()
        ax_wer.plot(*zip(*wer, strict=True), color="tab:red", marker="o", label="eval WER")
        ax_wer.set_ylabel("eval WER", color="tab:red")
        ax_wer.set_ylim(0, max(1.0, max(w for _, w in wer)))
    ax_loss.set_title(title or "training curves")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return True


def plot_alignment(
    path: str | Path,
    waveform: Any,
    sampling_rate: int,
    log_probs: Any,
    frame_labels: Any,
    words: Sequence[TimedWord],
    token_names: Mapping[int, str] | Sequence[str],
    seconds_per_frame: float,
    title: str | None = None,
    *,
    blank: int = 0,
) -> None:
    """A PNG of one utterance's CTC alignment: three panels on one time axis in seconds.

    Top: the waveform, each word shaded and labelled. Middle: the posteriorgram ``exp(log_probs)`` (tokens
    on the y axis by name) with the alignment path drawn over it, red dots on the frames that emit a token
    and white ones on blank frames. Bottom: the probability of the aligned class at each frame, each token's
    run labelled with its name. Dashed lines mark word boundaries on all three.

    Args:
        path: the PNG to write (atomically).
        waveform: (N,) float tensor or array, the audio's samples at ``sampling_rate`` as read (its
            amplitude in [-1, 1], not the model's normalised input).
        sampling_rate: samples per second of ``waveform``.
        log_probs: (T, C) float tensor or array, the utterance's per-frame log-probabilities.
        frame_labels: (T,) int tensor, array or list, the aligned class per frame (e.g. from
            :func:`asr_ctc.forced_align`).
        words: the timed words (:func:`asr_ctc.decode.timed_words`).
        token_names: name of each class id (a list, or a mapping id -> name such as the inverted vocab).
        seconds_per_frame: the model's frame step; frame ``i`` covers ``[i * spf, (i + 1) * spf)``.
        title: figure title.
        blank: the blank class id.
    """
    import numpy as np

    wave = _to_numpy(waveform, "waveform").astype(np.float32).reshape(-1)
    post = np.exp(_to_numpy(log_probs, "log_probs").astype(np.float64))
    labels = _to_numpy(frame_labels, "frame_labels").astype(np.int64).reshape(-1)
    if post.ndim != 2:
        raise ValueError(f"log_probs must be (T, C), got shape {post.shape}")
    frames, n_classes = post.shape
    if labels.shape[0] != frames:
        raise ValueError(
            f"frame_labels must have T = {frames} entries (log_probs.shape[0]), got {labels.shape[0]}"
        )
    if labels.size and not (0 <= labels.min() and labels.max() < n_classes):
        raise ValueError(f"frame_labels must be class ids in [0, {n_classes})")
    if not sampling_rate > 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate!r}")
    if not seconds_per_frame > 0:
        raise ValueError(f"seconds_per_frame must be positive, got {seconds_per_frame!r}")
    try:
        names = [str(token_names[i]) for i in range(n_classes)]
    except (IndexError, KeyError) as err:
        raise ValueError(f"token_names must name every class id in [0, {n_classes}), missing {err}") from err

    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    duration = max(wave.size / sampling_rate, frames * seconds_per_frame)
    width = min(30.0, max(8.0, 5.0 * duration))
    fig, (ax_wave, ax_post, ax_path) = plt.subplots(
        3,
        1,
        sharex=True,
        figsize=(width, 3.5 + 0.16 * n_classes),
        gridspec_kw={"height_ratios": [1.2, max(2.0, n_classes / 10), 1.0]},
    )
    ax_wave.plot(np.arange(wave.size) / sampling_rate, wave, color="tab:gray", linewidth=0.5)
    ax_wave.set_ylabel("amplitude")
    for i, w in enumerate(words):
        ax_wave.axvspan(w.start, w.end, color="tab:blue" if i % 2 == 0 else "tab:orange", alpha=0.15)
        ax_wave.text((w.start + w.end) / 2, 1.02, w.word, transform=ax_wave.get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=9)

    ax_post.imshow(
        post.T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="Greys",
        vmin=0.0,
        vmax=1.0,
        extent=(0.0, frames * seconds_per_frame, -0.5, n_classes - 0.5),
    )
    centres = (np.arange(frames) + 0.5) * seconds_per_frame
    emitting = labels != blank
    ax_post.scatter(centres[~emitting], labels[~emitting], s=8, color="white", edgecolors="tab:blue",
                    linewidths=0.3, zorder=3)
    ax_post.scatter(centres[emitting], labels[emitting], s=10, color="tab:red", zorder=3)
    ax_post.set_yticks(range(n_classes), names, fontsize=max(5, min(9, 300 // max(n_classes, 1))))
    ax_post.set_ylabel("token (posterior)")

    aligned = post[np.arange(frames), labels] if frames else np.zeros(0)
    ax_path.bar(centres, aligned, width=seconds_per_frame, align="center",
                color=np.where(emitting, "tab:red", "lightgray"))
    for span in token_spans(labels, blank):
        ax_path.text((span.start + span.end) / 2 * seconds_per_frame, 1.02, names[span.token],
                     ha="center", va="bottom", fontsize=8)
    ax_path.set_ylim(0, 1.2)
    ax_path.set_ylabel("p(aligned)")
    ax_path.set_xlabel("time (s)")
    ax_path.set_xlim(0, duration)
    for ax in (ax_wave, ax_post, ax_path):
        for w in words:
            for edge in (w.start, w.end):
                ax.axvline(edge, color="tab:blue", linestyle="--", linewidth=0.7)
    fig.suptitle(title or "CTC alignment")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def _to_numpy(value: Any, name: str):
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.double()
        return value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor, array or list, got {type(value).__name__}") from err
