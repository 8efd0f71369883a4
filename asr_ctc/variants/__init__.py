"""The CTC loss variants, and the one function the trainer calls whatever the variant.

:func:`per_utterance_loss` turns a batch's log-probabilities and targets into (B,) per-utterance losses as
:class:`asr_ctc.config.LossConfig` says: the plain CTC of ``loss.impl``, or one of the variants below,
each switched by one config key whose value 0 gives plain CTC exactly (the variant is then not computed
at all). Formulas, sources and verification: ``docs/loss-variants.md``.

=====================  ===================================================  ===============================
key                    variant                                              where
=====================  ===================================================  ===============================
``label_smoothing``    + eps * frame-wise KL(uniform || p_t)                :mod:`.terms`
``focal_gamma``        focal CTC, (1 - e^{-L})^gamma L (Feng et al. 2019)   :mod:`.terms`
``max_entropy``        - beta * H(alignments) (Liu et al. 2018)             :mod:`.lattice`
``wildcard_weight``    W-CTC, wildcards at both ends (Cai et al. 2022)      :mod:`.lattice`
``star_weight``        a star token in every gap (STC 2022, OTC 2023)       :mod:`.lattice`
``variants``           your own, registered with :func:`register_variant`   your module
=====================  ===================================================  ===============================

The per-utterance loss is assembled in this order::

    log_probs' = your log-prob transforms applied to log_probs (in the order of ``loss.variants``)
    L          = plain CTC of log_probs' (``loss.impl``), or -log Z on the variants' lattice
                 (wildcards and star states) when a lattice variant is on
    loss       = focal(L) - beta * H + eps * KL(uniform || p) + your terms

Writing your own (README, "Writing your own variant"): a function ``(batch: CTCBatch, value: float)`` that
returns either new (T, B, C) log-probabilities (``kind="log_probs"``: plain CTC, or the lattice variants,
then run on them) or a (B,) term added to the loss (``kind="term"``), registered under a name, switched on
by ``LossConfig(variants={name: value})``.

This package's own variants in other modules (e.g. the timing variants) register the same way with
``config_field=True``, declare their key on ``LossConfig`` with help and a ``"range"`` (validated there
like the built-in keys), and are imported at the end of this module so that they are registered.

Encoder-level variants (intermediate and self-conditioned CTC, CR-CTC) need the model's hidden states, not
just its output: they call :func:`per_utterance_loss` once per output they score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from ..ctc import ctc_loss as custom_ctc_loss
from ..seq_loss_util import ctc_loss_like_torch
from .lattice import lattice_ctc_loss, lattice_nll
from .terms import focal_ctc, label_smoothing_kl

if TYPE_CHECKING:
    from ..config import LossConfig

__all__ = [
    "CTCBatch",
    "LATTICE_KEYS",
    "focal_ctc",
    "label_smoothing_kl",
    "lattice_ctc_loss",
    "per_utterance_loss",
    "register_variant",
    "registered_variants",
]

# ``builtin`` has no entry: the model computes that loss itself (and no variant applies to it).
LOSS_FUNCTIONS = {"custom": custom_ctc_loss, "torch": F.ctc_loss, "reference": ctc_loss_like_torch}
# Variants computed on this package's lattice (they replace the plain CTC of loss.impl).
LATTICE_KEYS = ("max_entropy", "wildcard_weight", "star_weight")
# Every built-in variant's LossConfig key.
BUILTIN_KEYS = ("label_smoothing", "focal_gamma", *LATTICE_KEYS)
VARIANT_KINDS = ("log_probs", "term")


@dataclass(frozen=True)
class CTCBatch:
    """What a variant sees of a batch.

    Attributes:
        log_probs: (T, B, C) float32 (float64 in tests): the model's log-posteriors, frames first.
        targets: (B, W) int64, padded with ``blank`` past each target length.
        input_lengths: (B,) int64, real frames per utterance.
        target_lengths: (B,) int64.
        blank: the blank class id.
    """

    log_probs: Tensor
    targets: Tensor
    input_lengths: Tensor
    target_lengths: Tensor
    blank: int


@dataclass(frozen=True)
class _Variant:
    name: str
    kind: str
    fn: Callable[[CTCBatch, float], Tensor]
    config_field: bool  # the value is LossConfig.<name>, not LossConfig.variants[name]

    def value(self, config: LossConfig) -> float:
        return getattr(config, self.name) if self.config_field else config.variants.get(self.name, 0)


_REGISTRY: dict[str, _Variant] = {}


def register_variant(
    name: str, kind: str = "term", *, config_field: bool = False
) -> Callable[[Callable[[CTCBatch, float], Tensor]], Callable[[CTCBatch, float], Tensor]]:
    """Register your own variant under ``name`` (a decorator); switch it on with ``LossConfig(variants=...)``.

    Args:
        name: the key in ``LossConfig.variants``; registering a name again replaces the earlier function.
        kind: ``"log_probs"``: ``fn(batch, value)`` returns (T, B, C) scores that the CTC (or lattice
            variant) is computed on instead of ``batch.log_probs``; ``"term"``: it returns a (B,) loss added
            to each utterance's loss. ``value`` is the config's; 0 means off and the function is not called.
        config_field: for this project's own variants in other modules of this package: the value is the
            ``LossConfig`` field ``name`` (declared there with help and a ``"range"``, so it is validated
            and documented like the built-in keys) instead of an entry of ``LossConfig.variants``.

    Raises:
        ValueError: an unknown ``kind``; a ``name`` that is a built-in variant's config key; with
            ``config_field``, a ``name`` that is not a ``LossConfig`` field.
    """
    from ..config import LossConfig

    if kind not in VARIANT_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(VARIANT_KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not name or name in BUILTIN_KEYS:
        builtin = ", ".join(BUILTIN_KEYS)
        raise ValueError(f"name: expected a new variant name (not one of {builtin}), got {name!r}")
    if config_field and name not in {f.name for f in dataclasses.fields(LossConfig)}:
        raise ValueError(f"name: {name!r} is not a LossConfig field (config_field=True)")

    def decorate(fn: Callable[[CTCBatch, float], Tensor]) -> Callable[[CTCBatch, float], Tensor]:
        _REGISTRY[name] = _Variant(name, kind, fn, config_field)
        return fn

    return decorate


def registered_variants() -> tuple[str, ...]:
    """Names registered with :func:`register_variant` so far (for ``LossConfig.variants``)."""
    return tuple(name for name, v in _REGISTRY.items() if not v.config_field)


def _checked(name: str, kind: str, value: Tensor, expected: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor) or tuple(value.shape) != expected:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"variant {name!r} ({kind}) must return a tensor of shape {expected}, got {got}")
    return value


def _delay_penalised(config: LossConfig) -> Callable[..., Tensor]:
    from .timing import delay_penalty_ctc_loss  # late: timing brings in transformers' Trainer classes

    def ctc(*args, **kwargs) -> Tensor:
        return delay_penalty_ctc_loss(*args, penalty=config.delay_penalty, **kwargs)

    return ctc


def per_utterance_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    config: LossConfig,
    scores: Tensor | None = None,
) -> Tensor:
    """(B,) per-utterance losses under ``config`` (plain CTC of ``config.impl``, or its variants).

    Args:
        log_probs: (T, B, C) float32 or float64: log-posteriors (log-softmax output), frames first.
        targets: (B, W) int64 padded targets (entries past ``target_lengths`` are ignored).
        input_lengths: (B,) int64 real frames per utterance.
        target_lengths: (B,) int64.
        blank: the blank class id.
        config: a validated :class:`asr_ctc.config.LossConfig` (``impl`` not ``builtin``).
        scores: (T, B, C), what the CTC runs on instead of ``log_probs`` (label-prior CTC's
            ``log_probs - beta log prior``, :mod:`.timing`); the frame-wise terms still see ``log_probs``.

    Returns:
        (B,) ``log_probs.dtype``, unreduced; the trainer reduces it (``mean``, ``sum``, ``token_mean``).
        With ``zero_infinity`` an utterance without alignment has CTC part 0 (the other terms remain).

    Raises:
        ValueError: ``config.impl`` is ``builtin``, a registered variant is missing or returns a wrong shape.
    """
    if config.impl not in LOSS_FUNCTIONS:
        raise ValueError(f"impl: {config.impl!r} has no per-utterance loss here (builtin is the model's own)")
    batch = CTCBatch(log_probs, targets, input_lengths, target_lengths, blank)
    for name in config.variants:
        if name not in registered_variants():
            known = ", ".join(registered_variants()) or "none"
            raise ValueError(f"variants: {name!r} is not registered (register_variant); registered: {known}")
    # The registered variants that are on: this package's own (LossConfig fields) first, then the user's in
    # the order of loss.variants.
    fields = [v for v in _REGISTRY.values() if v.config_field]
    user = [v for v in fields + [_REGISTRY[name] for name in config.variants] if v.value(config) != 0]
    scores = log_probs if scores is None else scores
    for variant in (v for v in user if v.kind == "log_probs"):
        new = variant.fn(replace(batch, log_probs=scores), variant.value(config))
        scores = _checked(variant.name, variant.kind, new, tuple(log_probs.shape))

    entropy = None
    if any(getattr(config, key) for key in LATTICE_KEYS):
        nll, entropy = lattice_nll(
            scores,
            targets,
            input_lengths,
            target_lengths,
            blank,
            config.zero_infinity,
            config.wildcard_weight,
            config.star_weight,
            config.max_entropy > 0,
        )
    else:
        # The delay penalty is a lattice of its own (plain CTC's with onset scores, :mod:`.timing`).
        ctc = LOSS_FUNCTIONS[config.impl] if not config.delay_penalty else _delay_penalised(config)
        nll = ctc(
            scores,
            targets,
            input_lengths,
            target_lengths,
            blank=blank,
            reduction="none",
            zero_infinity=config.zero_infinity,
        )
    loss = focal_ctc(nll, config.focal_gamma) if config.focal_gamma else nll
    if entropy is not None:
        loss = loss - config.max_entropy * entropy
    if config.label_smoothing:
        loss = loss + config.label_smoothing * label_smoothing_kl(log_probs, input_lengths)
    for variant in (v for v in user if v.kind == "term"):
        term = variant.fn(batch, variant.value(config))
        loss = loss + _checked(variant.name, variant.kind, term, tuple(target_lengths.shape))
    return loss
