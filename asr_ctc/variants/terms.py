"""Per-utterance variants that leave the lattice alone: label smoothing and focal CTC.

Both act on quantities the trainer already has (the frame posteriors, the per-utterance loss), so they
compose with every ``loss.impl`` except ``builtin`` and with the lattice variants.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["focal_ctc", "label_smoothing_kl"]


def label_smoothing_kl(log_probs: Tensor, input_lengths: Tensor) -> Tensor:
    """Frame-wise ``KL(uniform || p_t)`` summed over each utterance's real frames.

    ``KL(u || p_t) = sum_k (1/C) (log(1/C) - log p_t(k)) = -log C - mean_k log p_t(k)``: zero when the
    posteriors are uniform, large when they are peaky. Added to CTC with a weight epsilon it smooths the
    posteriors towards uniform, the label smoothing for CTC of neural_sp (``ctc_lsm_prob``) and ONT's bonito
    (a weighted cross-entropy with a uniform-like target, the same up to a constant). neural_sp uses
    ``KL(p_t || u)`` and averages over frames; this sum over frames keeps the term on the same per-frame
    scale as the CTC negative log-likelihood, so every reduction treats both alike.

    Args:
        log_probs: (T, B, C) float: log-probabilities (log-softmax output; for other scores the value is
            ``-log C - mean_k`` of them, still differentiable).
        input_lengths: (B,) int64: real frames per utterance; frames past it are ignored.

    Returns:
        (B,) ``log_probs.dtype``: the sum over ``t < input_lengths[b]`` of the KL divergence, in nats.
    """
    frames, _, n_classes = log_probs.shape
    kl = -math.log(n_classes) - log_probs.mean(-1)
    real = torch.arange(frames, device=log_probs.device).unsqueeze(1) < input_lengths.unsqueeze(0)
    return torch.where(real, kl, torch.zeros_like(kl)).sum(0)


def focal_ctc(nll: Tensor, gamma: float, alpha: float = 1.0) -> Tensor:
    """Focal CTC: ``alpha * (1 - exp(-L))^gamma * L`` for each utterance's CTC loss ``L``.

    Feng et al., "Focal CTC loss for Chinese optical character recognition on unbalanced datasets",
    Complexity 2019. ``exp(-L)`` is the probability of the transcript, so well-recognised utterances
    (``p`` near 1) are down-weighted and hard ones keep their weight; ``gamma = 0``, ``alpha = 1`` is plain
    CTC. The weight is part of the objective (its gradient is the true derivative,
    ``alpha (1 - p)^gamma (1 + gamma L p / (1 - p))``), as in the paper.

    Args:
        nll: (B,) float, per-utterance CTC losses ``L >= 0`` (``inf`` stays ``inf``).
        gamma: focusing exponent, >= 0.
        alpha: scale (1: a constant factor is the learning rate's job).

    Returns:
        (B,) ``nll.dtype``. ``L <= 0`` (no room to focus, e.g. a loss zeroed by ``zero_infinity``) gives
        0 and zero gradient.
    """
    positive = nll > 0
    # The weight's derivative at L = 0 is infinite for gamma < 1; keep L = 0 out of the power entirely.
    safe = torch.where(positive, nll, torch.ones_like(nll))
    weighted = alpha * (-torch.expm1(-safe)) ** gamma * safe
    return torch.where(positive, weighted, torch.zeros_like(nll))
