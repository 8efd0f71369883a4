"""The training-curve figure written at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import atomic_write


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
