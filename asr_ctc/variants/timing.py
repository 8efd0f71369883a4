"""Timing variants of CTC: label priors and the delay penalty (docs/timestamps-training.md is the guide).

Both change *where* in time a CTC model puts its tokens, not what it recognises, and both reduce exactly to
plain CTC at a knob of 0 (the trainer then does not call them at all).

**Label priors** (Huang et al., "Less Peaky and More Accurate CTC Forced Alignment by Label Priors", ICASSP
2024, arXiv 2406.02560; the theory in Zeyer et al., "Why does CTC result in peaky behavior?", 2021). The
loss is CTC on the scores ``log p_t(k) - beta * log P(k)``, ``P`` the label prior: the average of the model's
own frame posteriors. A path's probability is then divided by ``P(pi_t)^beta`` at every frame ``t``: the
blank, by far the most frequent class, is discounted, so paths with fewer blanks (tokens held for more
frames) gain. The scores no longer sum to one over ``k``, so the gradient must be the true derivative of the
lattice's log-sum with respect to each score: :func:`asr_ctc.ctc_loss` computes exactly that;
:func:`torch.nn.functional.ctc_loss`'s backward returns ``exp(log_probs) - posteriors``, which is the
gradient only for normalised input (pytorch#122243, #52241), so it trains a different objective here.
:class:`LabelPrior` keeps the prior (a running average over optimiser steps, synchronised across
processes, saved in checkpoints); :func:`apply_label_prior` forms the scores, for training and for forced
alignment.

**Delay penalty** (Yao et al., "Delay-penalized CTC implemented based on Finite State Transducer",
Interspeech 2023, arXiv 2305.11539; k2's ``ctc_loss(..., delay_penalty)``): every *onset* of a token, the
frame ``t`` at which a path enters a label from the blank before it or from the previous label (not a
repeated frame of the same token), adds ``-lambda * (t - floor(T_b / 2))`` to the path's log-score,
``T_b`` the utterance's frame count. Early onsets gain, late ones lose; the centring constant is the same
for every path of an utterance (each has exactly ``L_b`` onsets), so it only shifts the loss value by
``lambda * L_b * floor(T_b / 2)`` and leaves the gradient and the best path alone (it keeps the loss near
plain CTC's, as in k2). Because it scores a *transition*, not a frame's class, it cannot be a change of the
``(T, B, C)`` scores; :func:`delay_penalty_ctc_loss` runs its own banded log-space forward-backward on the
CTC states (:func:`asr_ctc.ctc_states.interleave_blanks`) with the analytic gradient (:class:`_DelayCTC`),
checked against autograd through a plain-ops version of the recursion (:func:`_delay_lattice`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from asr_ctc.ctc import _prepare, _reduce
from asr_ctc.ctc_states import interleave_blanks, states_to_classes
from asr_ctc.fileio import atomic_write_text

__all__ = [
    "LABEL_PRIOR_FILE",
    "LabelPrior",
    "alignment_log_prior",
    "apply_label_prior",
    "delay_penalty_ctc_loss",
    "load_label_prior",
    "training_scores",
]

#: The final label prior of a run, written beside the model (checkpoints keep theirs in trainer_state.json).
LABEL_PRIOR_FILE = "label_prior.json"
# A prior is floored here before its log: a class whose posteriors underflowed to 0 would otherwise get an
# infinite bonus. Classes that rare never occur in a target, so the floor never touches a lattice in practice.
_PRIOR_FLOOR = 1e-12
# "log 0" of the delay-penalty lattice: finite, so that autograd through logaddexp never sees -inf - -inf;
# a log-score below _DEAD means "no alignment" (the same convention as asr_ctc.ctc).
_LOG_ZERO, _DEAD = -1e30, -1e29


def _check_beta(beta: float, name: str = "beta") -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {beta!r}")
    return float(beta)


# -- label priors -----------------------------------------------------------------------------------------


def apply_label_prior(log_probs: Tensor, log_prior: Tensor, beta: float) -> Tensor:
    """The label-prior scores ``log_probs - beta * log_prior`` (Huang et al. 2024, eq. for the prior-scaled
    posteriors; Zeyer et al. 2021).

    Args:
        log_probs: (..., C) float, per-frame class log-probabilities (e.g. (T, B, C)).
        log_prior: (C,) float, the log label prior (:meth:`LabelPrior.log_prior`, :func:`load_label_prior`).
        beta: the prior scale, ``>= 0``; 0 returns ``log_probs`` itself (plain CTC, bit for bit).

    Returns:
        (..., C), ``log_probs.dtype``: scores that no longer sum to one over the classes. Train on them with
        :func:`asr_ctc.ctc_loss` (exact gradient), never :func:`torch.nn.functional.ctc_loss` (see the module
        docstring); align with :func:`asr_ctc.align.forced_align`.

    Raises:
        ValueError: ``beta`` negative or not finite, or ``log_prior`` not of shape (C,).
    """
    beta = _check_beta(beta)
    if not isinstance(log_prior, Tensor) or log_prior.shape != log_probs.shape[-1:]:
        got = tuple(log_prior.shape) if isinstance(log_prior, Tensor) else type(log_prior).__name__
        raise ValueError(f"log_prior must have shape ({log_probs.shape[-1]},) (C of log_probs), got {got}")
    if beta == 0:
        return log_probs
    return log_probs - beta * log_prior.to(dtype=log_probs.dtype, device=log_probs.device)


class LabelPrior(TrainerCallback, ExportableState):
    """The running label prior of a training run, and the trainer callback that keeps it.

    The prior ``P`` is an exponential moving average, over optimiser steps, of the mean frame posterior
    ``exp(log_probs)`` of each step's training batch, over non-padding frames only:
    ``P <- momentum * P + (1 - momentum) * m_step`` (the first step sets ``P = m_step``), where
    ``m_step = sum_{b, t < T_b} p_t(.) / sum_b T_b`` counts every micro-batch of the step (gradient
    accumulation) and every process (the sums are all-reduced), so the prior does not depend on how the
    global batch is split. Posteriors are collected in every training step, the warm-up included; the loss
    uses the prior from step ``warmup_steps`` on (and never in the very first step, before any update).
    Evaluation uses the current prior but does not update it.

    State: ``prior`` (a list of C floats, float64 values, or None before the first update) and ``updates``;
    saved with each checkpoint through ``TrainerState.stateful_callbacks`` (:meth:`state`, so it is written
    atomically with the checkpoint's ``trainer_state.json``) and restored when training resumes
    (:meth:`on_train_begin`); the final prior goes to ``output_dir/label_prior.json``
    (:data:`LABEL_PRIOR_FILE`).

    Args:
        beta: scale of the log prior in the training scores, ``> 0`` to use it.
        warmup_steps: optimiser steps of plain CTC before the prior is used.
        momentum: weight of the old prior in each update, in ``[0, 1)``.

    Raises:
        ValueError: naming the argument, for values outside those ranges.
    """

    def __init__(self, beta: float = 0.0, warmup_steps: int = 0, momentum: float = 0.9) -> None:
        self.beta = _check_beta(beta)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.warmup_steps = warmup_steps
        self.momentum = float(momentum)
        self.prior: list[float] | None = None
        self.updates = 0
        self._pending: Tensor | None = None  # (C + 1,) float64: summed posteriors, then the frame count

    # -- the math -------------------------------------------------------------------------------------

    def log_prior(self, device: torch.device | str | None = None) -> Tensor | None:
        """(C,) float64 log of the (floored) prior, or None before the first update."""
        if self.prior is None:
            return None
        prior = torch.tensor(self.prior, dtype=torch.float64, device=device)
        return prior.clamp_min(_PRIOR_FLOOR).log()

    def active(self, step: int) -> bool:
        """Whether the loss of optimiser step ``step + 1`` (``step`` completed steps) uses the prior."""
        return self.beta > 0 and self.prior is not None and step >= self.warmup_steps

    def accumulate(self, log_probs: Tensor, input_lengths: Tensor) -> None:
        """Add a micro-batch's posteriors (no gradient): ``log_probs`` (T, B, C) float, ``input_lengths``
        (B,) int64 frames of each utterance (padding frames past them are not counted)."""
        with torch.no_grad():
            frames = log_probs.shape[0]
            valid = torch.arange(frames, device=log_probs.device).unsqueeze(1) < input_lengths.unsqueeze(0)
            posts = log_probs.detach().double().exp().mul_(valid.unsqueeze(-1)).sum((0, 1))
            step = torch.cat((posts, valid.sum().double().view(1)))
            self._pending = step if self._pending is None else self._pending + step.to(self._pending.device)

    def update(self) -> None:
        """Fold the step's collected posteriors into the prior (all-reduced across processes first)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(pending)  # every process joins: they step in lockstep
        sums, count = pending[:-1].cpu(), float(pending[-1])
        if count <= 0:
            return
        mean = sums / count
        if self.prior is not None and len(self.prior) != mean.numel():
            raise ValueError(
                f"label prior: the model has {mean.numel()} classes, the prior {len(self.prior)}"
            )
        if self.prior is not None:
            mean = self.momentum * torch.tensor(self.prior, dtype=torch.float64) + (1 - self.momentum) * mean
        self.prior = mean.tolist()
        self.updates += 1

    def scores(self, log_probs: Tensor, input_lengths: Tensor, step: int, training: bool) -> Tensor:
        """The trainer's scores for a batch: collects its posteriors (in training) and applies the prior
        once :meth:`active`. ``log_probs`` (T, B, C) float, ``input_lengths`` (B,) int64."""
        if training:
            self.accumulate(log_probs, input_lengths)
        if not self.active(step):
            return log_probs
        return apply_label_prior(log_probs, self.log_prior(log_probs.device), self.beta)

    # -- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"prior": None if self.prior is None else list(self.prior), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prior = state.get("prior")
        self.prior = None if prior is None else [float(v) for v in prior]
        self.updates = int(state.get("updates", 0))
        self._pending = None

    def state(self) -> dict[str, Any]:
        """transformers' ``ExportableState``: what goes into a checkpoint's ``trainer_state.json``."""
        args = {"beta": self.beta, "warmup_steps": self.warmup_steps, "momentum": self.momentum}
        return {"args": args, "attributes": self.state_dict()}

    # -- trainer callback -----------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        # On resume, state is the checkpoint's trainer_state.json; on a fresh run it holds this object's
        # own initial state. Either way, that is the prior to continue from.
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, dict):
            self.load_state_dict(saved.get("attributes", {}))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.update()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.prior is not None:
            payload = {**self.state()["args"], **self.state_dict()}
            atomic_write_text(Path(args.output_dir) / LABEL_PRIOR_FILE, json.dumps(payload, indent=1) + "\n")
        return control


def load_label_prior(model_dir: str | Path) -> Tensor | None:
    """(C,) float64 log prior saved with a model: ``label_prior.json`` of a finished run, or the
    ``LabelPrior`` state in a ``checkpoint-N``'s ``trainer_state.json``; None if the model has none."""
    model_dir = Path(model_dir)
    tracker = LabelPrior()
    final = model_dir / LABEL_PRIOR_FILE
    if final.is_file():
        tracker.load_state_dict(json.loads(final.read_text(encoding="utf-8")))
    elif (model_dir / "trainer_state.json").is_file():
        state = json.loads((model_dir / "trainer_state.json").read_text(encoding="utf-8"))
        saved = (state.get("stateful_callbacks") or {}).get(LabelPrior.__name__)
        if not isinstance(saved, dict):
            return None
        tracker.load_state_dict(saved.get("attributes", {}))
    return tracker.log_prior()


def alignment_log_prior(model_dir: str | Path, beta: float) -> Tensor | None:
    """The (C,) float64 log prior that forced alignment subtracts (``beta`` times) for a model trained with
    label priors; None for ``beta = 0`` (plain alignment).

    Raises:
        ValueError: ``beta`` negative or not finite, or ``beta > 0`` and the model has no saved prior.
    """
    beta = _check_beta(beta, "--label-prior")
    if beta == 0:
        return None
    prior = load_label_prior(model_dir)
    if prior is None:
        raise ValueError(
            f"--label-prior: {model_dir} has no label prior (neither {LABEL_PRIOR_FILE} nor one in "
            "trainer_state.json); one is saved by training with loss.label_prior_beta > 0"
        )
    return prior


def find_label_prior(trainer: Any) -> LabelPrior | None:
    """The trainer's :class:`LabelPrior` callback (looked up each time: a resumed Trainer may replace it)."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LabelPrior)), None)


def install(trainer: Any) -> None:
    """Register a :class:`LabelPrior` on ``trainer`` when its ``loss_config.label_prior_beta > 0``."""
    cfg = trainer.loss_config
    if cfg.label_prior_beta > 0 and find_label_prior(trainer) is None:
        trainer.add_callback(
            LabelPrior(cfg.label_prior_beta, cfg.label_prior_warmup_steps, cfg.label_prior_momentum)
        )


def training_scores(trainer: Any, log_probs: Tensor, frame_lengths: Tensor) -> Tensor:
    """The trainer's hook: the scores the CTC of one batch runs on.

    Args:
        trainer: the :class:`asr_ctc.trainer.CTCTrainer` (its ``loss_config``, state and callbacks).
        log_probs: (T, B, C) float32 log-probabilities.
        frame_lengths: (B,) int64 frames per utterance.

    Returns:
        (T, B, C): ``log_probs`` less ``beta * log prior`` once the prior is active (the prior's running
        average is updated from ``log_probs`` in training), else ``log_probs`` itself (the same object).
        The delay penalty is not a change of scores but of the lattice: :func:`asr_ctc.variants.
        per_utterance_loss` runs :func:`delay_penalty_ctc_loss` when ``loss.delay_penalty > 0``.
    """
    prior = find_label_prior(trainer)
    if prior is not None:
        log_probs = prior.scores(log_probs, frame_lengths, trainer.state.global_step, trainer.model.training)
    return log_probs


# -- delay penalty ----------------------------------------------------------------------------------------


class _DelayLattice:
    """The delay-penalised lattice of a validated batch: per-state emissions, skips and onset scores.

    Attributes:
        emit: (T, B, S) float, ``log_probs[t, b, ext[b, s]]``; "log 0" on states past ``2 L_b + 1``.
        onset: (T, B, S) float, ``-penalty * (t - floor(T_b / 2))`` on label states, 0 on blanks.
        log_skip: (B, S) float, 0 where ``s - 2 -> s`` is allowed (into a label that differs from label
            ``s - 2``), "log 0" elsewhere.
        ext: (B, S) int64 class of each state; n_states: (B,) int64, ``2 L_b + 1``.
    """

    def __init__(self, log_probs, targets, input_lengths, target_lengths, blank, penalty):
        frames = log_probs.shape[0]
        device, dtype = log_probs.device, log_probs.dtype
        self.ext, self.n_states = interleave_blanks(targets, target_lengths, blank, pad_value=blank)
        pos = torch.arange(self.ext.shape[1], device=device)
        self.live = pos < self.n_states.unsqueeze(1)
        is_label = (pos % 2 == 1) & self.live
        self.emit = log_probs.gather(2, self.ext.unsqueeze(0).expand(frames, -1, -1))
        self.emit = self.emit.masked_fill(~self.live, _LOG_ZERO)
        can_skip = torch.zeros_like(self.live)
        can_skip[:, 2:] = (self.ext[:, 2:] != self.ext[:, :-2]) & is_label[:, 2:]
        self.log_skip = torch.zeros(self.ext.shape, dtype=dtype, device=device).masked_fill(
            ~can_skip, _LOG_ZERO
        )
        centre = torch.div(input_lengths, 2, rounding_mode="floor")
        offsets = torch.arange(frames, device=device).unsqueeze(1) - centre.unsqueeze(0)  # (T, B)
        self.onset = (-penalty * offsets.to(dtype)).unsqueeze(-1) * is_label.to(dtype)
        self.first = pos < 2  # frame 0: the first blank, or an onset of the first label

    def ends(self, alpha, target_lengths, combine):
        """(B,) combined score of the two final states (the closing blank and, if any, the last label)."""
        last = (self.n_states - 1).unsqueeze(1)
        end_label = alpha.gather(1, (last - 1).clamp_min(0)).squeeze(1)
        end_label = end_label.masked_fill(target_lengths == 0, _LOG_ZERO)
        return combine(alpha.gather(1, last).squeeze(1), end_label)


def _no_frames(score, input_lengths, target_lengths):
    """No frames: the empty alignment, probability 1 for an empty target and 0 otherwise."""
    empty = torch.where(target_lengths == 0, 0.0, _LOG_ZERO).to(score.dtype)
    return torch.where(input_lengths > 0, score, empty)


def _delay_lattice(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    penalty: float,
    maximum: bool = False,
) -> Tensor:
    """(B,) log-sum (or, with ``maximum``, the best) of the delay-penalised path scores, by the banded
    forward recursion in plain differentiable ops: the reference that :class:`_DelayCTC` is tested against,
    and the Viterbi score (``maximum``) whose gradient is the best path.

    ``alpha_t(s) = e_t(s) + op(alpha_{t-1}(s), d_t(s) + op(alpha_{t-1}(s-1), skip(s) + alpha_{t-1}(s-2)))``
    with ``op`` logaddexp (or max) and the terms of :class:`_DelayLattice` (``d`` its onset scores).
    Arguments validated by :func:`asr_ctc.ctc._prepare`; a score below ``_DEAD``: no alignment.
    """
    combine = torch.maximum if maximum else torch.logaddexp
    lat = _DelayLattice(log_probs, targets, input_lengths, target_lengths, blank, penalty)
    batch = log_probs.shape[1]
    pad1 = torch.full((batch, 1), _LOG_ZERO, dtype=log_probs.dtype, device=log_probs.device)
    pad2 = torch.full((batch, 2), _LOG_ZERO, dtype=log_probs.dtype, device=log_probs.device)
    alpha = torch.where(lat.first, lat.emit[0] + lat.onset[0], torch.full_like(lat.emit[0], _LOG_ZERO))
    for t in range(1, log_probs.shape[0]):
        one = torch.cat((pad1, alpha[:, :-1]), 1)
        two = torch.cat((pad2, alpha[:, :-2]), 1) + lat.log_skip
        new = lat.emit[t] + combine(alpha, lat.onset[t] + combine(one, two))
        alpha = torch.where((t < input_lengths).unsqueeze(1), new, alpha)  # frozen past T_b
    return _no_frames(lat.ends(alpha, target_lengths, combine), input_lengths, target_lengths)


class _DelayCTC(torch.autograd.Function):
    """log Z of the delay-penalised lattice, with the analytic gradient ``d log Z / d log_probs[t, b, c] =
    sum_{s: ext[s] = c} gamma_t(s)``, ``gamma_t(s) = exp(alpha_t(s) + beta_t(s) - log Z)`` the state
    posteriors (the onset scores are constants, so they only shape alpha and beta). The recursions run
    without autograd on preallocated rows (about 5x faster than autograd through :func:`_delay_lattice`).

    ``beta_t(s) = op_{s' in {s, s+1, s+2}} (w(s -> s') + e_{t+1}(s') + beta_{t+1}(s'))`` with ``w`` 0 for a
    stay, ``d_{t+1}(s')`` for a move into a label and ``d_{t+1}(s') + skip(s')`` for a skip;
    ``beta_{T_b - 1}`` is 0 on the two final states and "log 0" elsewhere.
    """

    @staticmethod
    def forward(ctx, log_probs, targets, input_lengths, target_lengths, blank, penalty):
        lp = log_probs.detach()
        frames, batch, n_classes = lp.shape
        dtype, device = lp.dtype, lp.device
        lat = _DelayLattice(lp, targets, input_lengths, target_lengths, blank, penalty)
        n_ext = lat.ext.shape[1]
        running = (torch.arange(frames, device=device).unsqueeze(1) < input_lengths).unsqueeze(-1)  # (T,B,1)
        # alpha rows with two leading "log 0" columns, so that s-1 and s-2 are views.
        alpha = torch.full((frames, batch, n_ext + 2), _LOG_ZERO, dtype=dtype, device=device)
        alpha[0, :, 2:] = torch.where(lat.first, lat.emit[0] + lat.onset[0], _LOG_ZERO)
        tmp = torch.empty((batch, n_ext), dtype=dtype, device=device)
        shortest = int(input_lengths.min()) if batch else frames
        # Views made up front (a step is then five ops and little Python): rows, and their s-2, s-1, s.
        rows, onset, emit, log_skip = alpha.unbind(0), lat.onset.unbind(0), lat.emit.unbind(0), lat.log_skip
        add, logaddexp = torch.add, torch.logaddexp
        for t in range(1, frames):
            prev, cur = rows[t - 1], rows[t][:, 2:]
            add(prev[:, :-2], log_skip, out=tmp)
            logaddexp(prev[:, 1:-1], tmp, out=tmp)
            tmp.add_(onset[t])
            logaddexp(prev[:, 2:], tmp, out=cur)
            cur.add_(emit[t])
            if t >= shortest:  # some utterance has ended: its row stays frozen
                torch.where(running[t], cur, prev[:, 2:], out=cur)
        alpha = alpha[:, :, 2:]
        log_z = _no_frames(
            lat.ends(alpha[-1], target_lengths, torch.logaddexp), input_lengths, target_lengths
        )
        gamma = None
        if ctx.needs_input_grad[0]:
            gamma = _DelayCTC._posteriors(lat, alpha, log_z, running, input_lengths, target_lengths)
            gamma = states_to_classes(gamma, lat.ext.unsqueeze(0), n_classes)
        ctx.save_for_backward(gamma)
        return log_z

    @staticmethod
    def _posteriors(lat, alpha, log_z, running, input_lengths, target_lengths):
        frames, batch, n_ext = alpha.shape
        dtype, device = alpha.dtype, alpha.device
        last = (lat.n_states - 1).unsqueeze(1)
        pos = torch.arange(n_ext, device=device)
        final = (pos == last) | ((pos == last - 1) & (target_lengths > 0).unsqueeze(1))
        init = torch.zeros((batch, n_ext), dtype=dtype, device=device).masked_fill(~final, _LOG_ZERO)
        # Successor terms of state s, shifted so that index s holds state s+1 (onset) and s+2 (onset + skip).
        move1 = torch.full_like(lat.onset, _LOG_ZERO)
        move1[:, :, :-1] = lat.onset[:, :, 1:]
        move2 = torch.full_like(lat.onset, _LOG_ZERO)
        move2[:, :, :-2] = lat.onset[:, :, 2:] + lat.log_skip[:, 2:]
        beta = torch.empty_like(alpha)
        beta[-1] = init
        # g = e_{t+1} + beta_{t+1}, with two trailing "log 0" columns so that s+1 and s+2 are views.
        g = torch.full((batch, n_ext + 2), _LOG_ZERO, dtype=dtype, device=device)
        tmp, tmp1 = torch.empty((2, batch, n_ext), dtype=dtype, device=device)
        before_last = (torch.arange(frames, device=device).unsqueeze(1) < input_lengths - 1).unsqueeze(-1)
        shortest = int(input_lengths.min()) if batch else frames
        rows, emit, move1, move2 = beta.unbind(0), lat.emit.unbind(0), move1.unbind(0), move2.unbind(0)
        g_here, g_one, g_two = g[:, :n_ext], g[:, 1:-1], g[:, 2:]
        add, logaddexp = torch.add, torch.logaddexp
        for t in range(frames - 2, -1, -1):
            add(emit[t + 1], rows[t + 1], out=g_here)
            add(g_two, move2[t + 1], out=tmp)
            add(g_one, move1[t + 1], out=tmp1)
            logaddexp(tmp1, tmp, out=tmp)
            logaddexp(g_here, tmp, out=rows[t])
            if t >= shortest - 1:  # an utterance whose last frame is t or earlier starts (again) at init
                torch.where(before_last[t], rows[t], init, out=rows[t])
        gamma = (alpha + beta - log_z.view(1, -1, 1)).exp_().mul_(running)
        # No alignment (or no frames): no gradient, as with zero_infinity (the loss says inf).
        return gamma.masked_fill_((log_z < _DEAD).view(1, -1, 1), 0.0)

    @staticmethod
    def backward(ctx, grad_log_z):
        (gamma,) = ctx.saved_tensors
        return gamma * grad_log_z.to(gamma.dtype).view(1, -1, 1), None, None, None, None, None


def delay_penalty_ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int] | int,
    target_lengths: Tensor | Sequence[int] | int,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    penalty: float = 0.0,
) -> Tensor:
    """Delay-penalised CTC (Yao et al. 2023, arXiv 2305.11539; k2 ``ctc_loss(..., delay_penalty)``).

    ``-log sum_paths exp(sum_t log_probs[t, path_t] - penalty * sum_onsets (t_onset - floor(T_b / 2)))``
    over the CTC paths of each target, where an onset is a frame at which the path enters a label (from the
    blank before it or from the previous label; repeated frames of one token are not onsets). See the
    module docstring for why; ``penalty = 0`` is plain CTC (equal to :func:`asr_ctc.ctc_loss` to rounding).

    Args: as :func:`asr_ctc.ctc_loss` (same shapes, dtypes, validation and reductions), and
        penalty: ``lambda``, log-score per frame of onset delay, ``>= 0``.

    Returns:
        The loss as :func:`asr_ctc.ctc_loss` returns it (float32 for half input); ``inf`` without an
        alignment (0, and zero gradient, with ``zero_infinity``). Its gradient is the analytic one of
        :class:`_DelayCTC` (exact for any scores, normalised or not).

    Raises:
        ValueError: naming the argument, for anything :func:`asr_ctc.ctc_loss` rejects, or a negative or
            non-finite ``penalty``.
    """
    penalty = _check_beta(penalty, "penalty")
    lp, padded, il, tl, unbatched = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank, reduction
    )
    if lp.dtype in (torch.float16, torch.bfloat16):
        lp = lp.float()
    nll = -_DelayCTC.apply(lp, padded, il, tl, blank, penalty)
    dead = nll > -_DEAD
    nll = torch.where(dead, 0.0 if zero_infinity else math.inf, nll)
    return _reduce(nll, tl, reduction, unbatched)
