"""A general CTC lattice for the loss variants: extra states, wildcards, and the alignment entropy.

The production loss (:mod:`asr_ctc.ctc`) is hand-optimised for one lattice, plain CTC's. The variants that
change the lattice (W-CTC's wildcards, a star token for missing words, maximum-entropy CTC) need other
start/end states, extra states and a second quantity carried through the recursion; this module computes
them with one clear forward-backward over any *banded* lattice, with a hand-written gradient.

Why a hand-written gradient (an :class:`torch.autograd.Function`), not autograd through the recursion:
both were written. Autograd through the log-space recursion is the shortest correct code, but it records
about ``10 * T`` small ops per batch and replays them backward: 1.0-2.8 s for one loss and backward at
B = 16, T = 300, C = 32, L = 100 on this project's shared 2-core CPU (load ~10, indicative only), against
0.06 s for the production loss. The forward-backward below runs without a graph and gives the gradients
in closed form (:func:`_forward_backward`): 0.2-0.5 s on the same case and machine. The tests keep the
autograd version as a second reference (``tests/test_variants.py``), beside brute force over all
alignments and :func:`torch.autograd.gradcheck`. Plain CTC never comes here (knob 0 uses ``loss.impl``).

The lattice
-----------
A batch of ``B`` sequences has ``S`` states each (padded). State ``s`` of sequence ``b`` emits column
``classes[b, s]`` of the *emission table* ``[log_probs | wildcard | star | log 0]`` (T, B, C + 3):

* a class ``c < C``: ``log_probs[t, b, c]``;
* :data:`WILDCARD` (column C): ``log(wildcard_weight) + logsumexp_k log_probs[t, b, k]``: any class,
  including the blank (for softmax output and weight 1 that is probability 1, W-CTC's wildcard);
* :data:`STAR` (column C + 1): ``log(star_weight) + logsumexp_{k != blank} log_probs[t, b, k]``: any
  non-blank class (STC's star token), each frame scaled by the weight (a penalty of ``-log star_weight``);
* :data:`PAD` (column C + 2): "log 0", states past a sequence's end.

Transitions go from state ``s - d`` to state ``s`` for ``d`` in :data:`OFFSETS` (``d = 0`` the self-loop,
``d = -1`` a step *back*, used by the star token to return to its blank). ``allowed[b, s, i]`` says whether
the transition with offset ``OFFSETS[i]`` into ``s`` exists; all allowed transitions have weight 1.
``start`` and ``final`` mark the states a path may occupy at frame 0 and at the sequence's last frame.

The recursion (``alpha_t(s)`` the log-sum of all path prefixes ending in ``s`` at frame ``t``)::

    alpha_0(s) = E_0(s) + log[start(s)]
    alpha_t(s) = E_t(s) + logsumexp_{d allowed} alpha_{t-1}(s - d)
    log Z      = logsumexp_s alpha_{T_b - 1}(s) + log[final(s)]

and the loss is ``-log Z``. With ``entropy=True`` the recursion also carries ``r_t(s)``, the expected
score (sum of emissions) of the prefixes ending in ``s``, under their posterior: ``r_t(s) = E_t(s) +
sum_d w_d r_{t-1}(s - d)`` with ``w_d`` the softmax of the predecessors' ``alpha``. The alignment entropy
(Liu et al., "Connectionist temporal classification with maximum entropy regularization", NeurIPS 2018)
is then ``H = log Z - E[score] = log Z - sum_t sum_s gamma_t(s) E_t(s)``, the expectation semiring of Li
and Eisner (2009, "First- and second-order expectation semirings"). Its gradient is autograd's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from asr_ctc.ctc import _DEAD, _LOG_ZERO, _prepare, _reduce

__all__ = ["OFFSETS", "Lattice", "build_lattice", "lattice_ctc_loss", "lattice_nll"]

# Transition offsets: from s - d into s. 0: stay; 1, 2, 3: forward; -1: back (star -> its blank).
OFFSETS = (0, 1, 2, 3, -1)
# Emission columns past the C classes (relative to C).
WILDCARD, STAR, PAD = 0, 1, 2


@dataclass
class Lattice:
    """The state graph of a batch (see the module docstring).

    Attributes:
        classes: (B, S) int64, the emission column of each state (a class, or C + WILDCARD/STAR/PAD).
        allowed: (B, S, D) bool, transition with offset ``OFFSETS[i]`` into each state.
        start: (B, S) bool, states allowed at frame 0.
        final: (B, S) bool, states allowed at the last frame.
    """

    classes: Tensor
    allowed: Tensor
    start: Tensor
    final: Tensor


def _sequence_states(
    target: Sequence[int], blank: int, n_classes: int, wildcard: bool, star: bool
) -> tuple[list[int], list[set[int]], set[int], set[int]]:
    """One sequence's states: emission column, predecessor set (self included), start and final sets.

    Layout: ``[wildcard] b_0 [star_0] y_1 b_1 [star_1] ... y_L b_L [star_L] [wildcard]``. The blank of a
    gap and its star alternate freely (a missing word's frames are non-blank or blank), a label follows
    its gap's blank or star, or the previous label if the two differ (plain CTC's skip).
    """
    cols: list[int] = []
    preds: list[set[int]] = []

    def state(col: int, *sources: int | None) -> int:
        cols.append(col)
        preds.append({len(cols) - 1, *(s for s in sources if s is not None)})
        return len(cols) - 1

    head = state(n_classes + WILDCARD) if wildcard else None
    starts = {head} if head is not None else set()
    label = None  # the previous label's state
    gap: list[int] = []
    for i in range(len(target) + 1):
        first = i == 0
        b = state(blank, label, head if first else None)
        gap = [b]
        if star:
            s = state(n_classes + STAR, b, label, head if first else None)
            preds[b].add(s)
            gap.append(s)
        if first:
            starts.update(gap)
        if i == len(target):
            break
        same = label is not None and target[i] == target[i - 1]
        label = state(int(target[i]), *gap, None if same else label, head if first else None)
        if first:
            starts.add(label)
    finals = set(gap) | ({label} if label is not None else set())
    if wildcard:
        # The wildcard tail follows the last label or gap: at least one frame stays outside the wildcards.
        finals.add(state(n_classes + WILDCARD, *finals))
    return cols, preds, starts, finals


def build_lattice(
    targets: Tensor, target_lengths: Tensor, blank: int, n_classes: int, wildcard: bool, star: bool
) -> Lattice:
    """The :class:`Lattice` of a batch of padded targets.

    Args:
        targets: (B, W) int64, padded (entries past ``target_lengths`` ignored).
        target_lengths: (B,) int64.
        blank: the blank class id.
        n_classes: C, the number of classes in ``log_probs``.
        wildcard: add W-CTC's wildcard states at both ends.
        star: add a star state to every gap (before, between and after the labels).
    """
    rows = [
        _sequence_states(t[:n].tolist(), blank, n_classes, wildcard, star)
        for t, n in zip(targets, target_lengths.tolist(), strict=True)
    ]
    batch = len(rows)
    width = max((len(cols) for cols, *_ in rows), default=1)
    classes = torch.full((batch, width), n_classes + PAD, dtype=torch.long)
    edges: list[tuple[int, int, int]] = []  # (b, s, offset index), filled in one assignment below
    starts_at: list[tuple[int, int]] = []
    finals_at: list[tuple[int, int]] = []
    for b, (cols, preds, starts, finals) in enumerate(rows):
        classes[b, : len(cols)] = torch.tensor(cols, dtype=torch.long)
        edges += [(b, s, OFFSETS.index(s - p)) for s, sources in enumerate(preds) for p in sources]
        starts_at += [(b, s) for s in starts]
        finals_at += [(b, s) for s in finals]
    allowed = torch.zeros((batch, width, len(OFFSETS)), dtype=torch.bool)
    allowed[tuple(torch.tensor(edges, dtype=torch.long).t())] = True
    start = torch.zeros((batch, width), dtype=torch.bool)
    start[tuple(torch.tensor(starts_at, dtype=torch.long).t())] = True
    final = torch.zeros((batch, width), dtype=torch.bool)
    final[tuple(torch.tensor(finals_at, dtype=torch.long).t())] = True
    device = targets.device
    return Lattice(classes.to(device), allowed.to(device), start.to(device), final.to(device))


def _emissions(
    log_probs: Tensor, lattice: Lattice, blank: int, wildcard_weight: float, star_weight: float
) -> Tensor:
    """(T, B, S) emission scores of every state (see the module docstring), "log 0" clamped to finite."""
    frames, batch, n_classes = log_probs.shape
    extra = [log_probs.new_full((frames, batch, 1), _LOG_ZERO) for _ in range(3)]
    if wildcard_weight > 0:
        extra[WILDCARD] = (math.log(wildcard_weight) + torch.logsumexp(log_probs, -1)).unsqueeze(-1)
    if star_weight > 0:
        keep = torch.arange(n_classes, device=log_probs.device) != blank
        extra[STAR] = (math.log(star_weight) + torch.logsumexp(log_probs[..., keep], -1)).unsqueeze(-1)
    table = torch.cat([log_probs, *extra], dim=-1)
    # -inf ("cannot be emitted") becomes the finite "log 0": logsumexp over -inf entries would give NaN
    # gradients; NaN stays NaN, so a diverged model is still reported as such.
    table = table.clamp_min(_LOG_ZERO)
    return table.gather(2, lattice.classes.unsqueeze(0).expand(frames, -1, -1))


def _transition_weights(lattice: Lattice, dtype: torch.dtype) -> tuple[int, int, Tensor, Tensor]:
    """The range of offsets in use, and their log-weights (0 or "log 0") into and out of each state.

    Returns:
        ``(low, high, into, out_of)``: the offsets used are ``low..high`` (a contiguous range for every
        lattice built here); ``into[i, b, s]`` is the log-weight of ``s - d -> s`` for ``d = high - i``
        (descending), ``out_of[i, b, s]`` that of ``s -> s + d`` for ``d = low + i`` (ascending), both
        (D, B, S). The two orders make each set of shifted neighbours a single strided view.
    """
    used = [d for i, d in enumerate(OFFSETS) if bool(lattice.allowed[..., i].any())]
    low, high = min(used), max(used)
    descending = [OFFSETS.index(d) for d in range(high, low - 1, -1)]
    allowed = lattice.allowed[..., descending].permute(2, 0, 1)
    into = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, _LOG_ZERO)
    out_of = torch.full_like(into, _LOG_ZERO)
    width = into.shape[-1]
    for i, d in enumerate(range(low, high + 1)):  # out_of[s] = into[s + d]
        src = into[high - d]
        if d >= 0:
            out_of[i, :, : width - d] = src[:, d:]
        else:
            out_of[i, :, -d:] = src[:, :d]
    return low, high, into, out_of


# Padding on both sides of each lattice row: room for the largest offset either way, so that every set of
# shifted neighbours (s - d forward, s + d backward) is one strided view, not a copy per step.
_PAD = max(abs(d) for d in OFFSETS)


def _neighbours(rows: Tensor, first: int, count: int, width: int) -> Tensor:
    """(count, B, width) view of padded rows (B, width + 2 * _PAD): entry ``i`` from column ``first + i``."""
    return rows.as_strided(
        (count, rows.shape[0], width), (1, rows.stride(0), 1), rows.storage_offset() + first
    )


def _logsumexp0(x: Tensor) -> Tensor:
    """logsumexp over the first dimension of a few rows, as chained ``logaddexp`` (one fused op per row,
    fewer passes than ``torch.logsumexp`` on these small strided operands)."""
    acc = x[0]
    for row in x[1:]:
        acc = torch.logaddexp(acc, row)
    return acc


def _forward_backward(
    emissions: Tensor, lattice: Lattice, input_lengths: Tensor, entropy: bool, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``log Z``, ``H`` and their gradients with respect to the emissions, by forward-backward.

    The forward pass is the recursion of the module docstring (and the expected prefix score ``rf``); the
    backward pass the mirror image: ``beta_t(s)``, the log-sum of the suffixes after frame ``t`` from ``s``,
    and ``rb_t(s)``, their expected score. The gradients (``gamma_t(s) = exp(alpha_t(s) + beta_t(s) - log Z)``
    the posterior of state ``s`` at frame ``t``, ``score`` a path's summed emissions)::

        d log Z / d E_t(s) = gamma_t(s)
        d H     / d E_t(s) = -Cov(score, [path in s at t]) = -gamma_t(s) (rf_t(s) + rb_t(s) - E[score])

    The second because ``H = log Z - E[score]`` and ``d E[score] / d E_t(s) = gamma_t(s) + Cov(score,
    [s at t])``; ``E[score | s at t] = rf_t(s) + rb_t(s)`` (``rf`` includes ``E_t(s)``, ``rb`` does not).

    Args:
        emissions: (T, B, S) float32 or float64, from :func:`_emissions` (no autograd graph needed).
        lattice: the batch's :class:`Lattice`.
        input_lengths: (B,) int64, each >= 1.
        entropy: also compute ``H`` (and its gradient).
        need_grad: compute the gradients (the backward recursion).

    Returns:
        ``(log_z, h, grad_log_z, grad_h)``: (B,) each (``h`` zeros without ``entropy``), then (T, B, S)
        gradients (zero past each input length) or ``None``.
    """
    frames, batch, width = emissions.shape
    dtype, device = emissions.dtype, emissions.device
    low, high, into, out_of = _transition_weights(lattice, dtype)
    count = high - low + 1
    running = torch.arange(frames, device=device).view(-1, 1, 1) < input_lengths.view(1, -1, 1)
    start = torch.zeros((batch, width), dtype=dtype, device=device).masked_fill_(~lattice.start, _LOG_ZERO)
    final = torch.zeros_like(start).masked_fill_(~lattice.final, _LOG_ZERO)
    core = slice(_PAD, _PAD + width)

    # Forward: alpha and the expected prefix score rf of every frame, in padded rows (the gradients need
    # them all); the neighbours s - d of row t - 1 are one view, from column _PAD - high on.
    alpha_rows = torch.full((frames, batch, width + 2 * _PAD), _LOG_ZERO, dtype=dtype, device=device)
    alphas = alpha_rows[:, :, core]
    alphas[0] = emissions[0] + start
    rf_rows = torch.zeros_like(alpha_rows) if entropy else None
    rfs = rf_rows[:, :, core] if entropy else None
    if entropy:
        rfs[0] = emissions[0]
    # Until the shortest sequence ends no row needs its value held (most steps of a length-grouped batch).
    shortest = int(input_lengths.min())
    for t in range(1, frames):
        cand = _neighbours(alpha_rows[t - 1], _PAD - high, count, width) + into
        acc = _logsumexp0(cand)
        if t < shortest:
            torch.add(acc, emissions[t], out=alphas[t])
        else:
            alphas[t] = torch.where(running[t], acc + emissions[t], alphas[t - 1])
        if entropy:
            weights = torch.exp(cand - acc)
            rf = (weights * _neighbours(rf_rows[t - 1], _PAD - high, count, width)).sum(0) + emissions[t]
            # Unreachable states: meaningless (their weight is exactly 0 later); 0 keeps them finite.
            rf = torch.where(acc > _DEAD, rf, 0.0)
            rfs[t] = torch.where(running[t], rf, rfs[t - 1])
    ends = alphas[-1] + final
    log_z = torch.logsumexp(ends, -1)
    h = torch.zeros_like(log_z)
    expected = None
    if entropy:
        expected = (torch.softmax(ends, -1) * rfs[-1]).sum(-1)
        h = log_z - expected
    if not need_grad:
        return log_z, h, None, None

    # Backward: beta and the expected suffix score rb, one frame at a time, folded into the gradients; the
    # neighbours s + d of the next frame's rows are one view, from column _PAD + low on.
    betas = torch.empty_like(emissions)
    rbs = torch.empty_like(emissions) if entropy else None
    last = torch.arange(frames, device=device).view(-1, 1, 1) >= input_lengths.view(1, -1, 1) - 1
    beta = final.clone()
    rb = torch.zeros_like(beta)
    g_row = torch.full((batch, width + 2 * _PAD), _LOG_ZERO, dtype=dtype, device=device)
    q_row = torch.zeros_like(g_row)
    for t in range(frames - 1, -1, -1):
        if t < frames - 1:
            torch.add(emissions[t + 1], beta, out=g_row[:, core])
            cand = _neighbours(g_row, _PAD + low, count, width) + out_of
            acc = _logsumexp0(cand)
            held = t >= shortest - 1  # some sequence's last frame is at or after t: its row restarts
            if entropy:
                torch.add(emissions[t + 1], rb, out=q_row[:, core])
                rb = (torch.exp(cand - acc) * _neighbours(q_row, _PAD + low, count, width)).sum(0)
                rb = torch.where(acc > _DEAD, rb, 0.0)
                rb = torch.where(last[t], 0.0, rb) if held else rb
            beta = torch.where(last[t], final, acc) if held else acc
        betas[t] = beta
        if entropy:
            rbs[t] = rb
    grad_z = torch.exp(alphas + betas - log_z.view(1, -1, 1)).masked_fill_(~running, 0.0)
    grad_h = None
    if entropy:
        grad_h = -grad_z * (rfs + rbs - expected.view(1, -1, 1))
    return log_z, h, grad_z, grad_h


class _LatticeFunction(torch.autograd.Function):
    """``(log Z, H)`` of the emissions, with the analytic gradients of :func:`_forward_backward`."""

    @staticmethod
    def forward(ctx, emissions, lattice, input_lengths, entropy):
        log_z, h, grad_z, grad_h = _forward_backward(
            emissions.detach(), lattice, input_lengths, entropy, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(grad_z, grad_h)
        return log_z, h

    @staticmethod
    def backward(ctx, grad_log_z, grad_h_out):
        grad_z, grad_h = ctx.saved_tensors
        grad = grad_z * grad_log_z.view(1, -1, 1)
        if grad_h is not None:
            grad = grad + grad_h * grad_h_out.view(1, -1, 1)
        return grad, None, None, None


def lattice_nll(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    zero_infinity: bool,
    wildcard_weight: float,
    star_weight: float,
    entropy: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-sequence ``-log Z`` and alignment entropy ``H`` of a validated batch (:func:`lattice_ctc_loss`).

    Args:
        log_probs: (T, B, C) float32 or float64.
        targets: (B, W) int64, padded.
        input_lengths, target_lengths: (B,) int64.
        blank: the blank class id.
        zero_infinity: give sequences without an alignment 0 instead of ``inf`` (both with zero gradient).
        wildcard_weight, star_weight: in [0, 1], 0 leaves the states out.
        entropy: also return ``H``.

    Returns:
        ``(nll, H)``: (B,) ``log_probs.dtype``; ``H`` is ``None`` without ``entropy``, and 0 where ``nll`` is
        not finite or zeroed.
    """
    n_classes = log_probs.shape[-1]
    lattice = build_lattice(targets, target_lengths, blank, n_classes, wildcard_weight > 0, star_weight > 0)
    emissions = _emissions(log_probs, lattice, blank, wildcard_weight, star_weight)
    log_z, h = _LatticeFunction.apply(emissions, lattice, input_lengths.clamp_min(1), entropy)
    h = h if entropy else None
    no_frames = input_lengths == 0
    # No frames: the empty alignment, probability 1 for an empty target and 0 otherwise.
    dead = torch.where(no_frames, target_lengths > 0, log_z <= _DEAD)
    zero = torch.zeros_like(log_z)
    nll = torch.where(no_frames | dead, zero, -log_z)
    if h is not None:
        h = torch.where(no_frames | dead, zero, h)
    if not zero_infinity:
        nll = nll.masked_fill(dead, math.inf)
    return nll, h


def lattice_ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int] | int,
    target_lengths: Tensor | Sequence[int] | int,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    wildcard_weight: float = 0.0,
    star_weight: float = 0.0,
    entropy_weight: float = 0.0,
) -> Tensor:
    """CTC on the variants' lattice: ``-log Z - entropy_weight * H``, with optional wildcards and star.

    Args:
        log_probs: (T, B, C) or unbatched (T, C), float16/bfloat16 (computed in float32), float32 or
            float64: per-frame class log-probabilities.
        targets, input_lengths, target_lengths, blank, reduction, zero_infinity: as for
            :func:`asr_ctc.ctc.ctc_loss` (padded or concatenated targets; ``none``, ``mean``, ``sum``).
        wildcard_weight: W-CTC (Cai et al., "W-CTC: a connectionist temporal classification loss with wild
            cards", ICLR 2022): a wildcard before and after the target, each frame it absorbs scored
            ``wildcard_weight * sum_k p_t(k)`` (1 = the paper's, probability 1 per frame); 0: none.
        star_weight: a star token in every gap between, before and after the labels (Star Temporal
            Classification, Pratap et al., NeurIPS 2022; OTC, Gao et al., 2023): it stands for any
            non-blank class, each frame scored ``star_weight * sum_{k != blank} p_t(k)``, i.e. a penalty of
            ``-log star_weight`` per frame; 0: none.
        entropy_weight: beta of maximum-entropy CTC (Liu et al., NeurIPS 2018): the loss is
            ``-log Z - beta * H``, ``H`` the entropy of the posterior over the lattice's alignments.

    Returns:
        The loss, float32 for half-precision input, else ``log_probs.dtype``: (B,) for ``none``.
        A sequence without any alignment gets ``inf`` (0 with ``zero_infinity``) and zero gradient; an input
        length of 0 gives 0 for an empty target, else ``inf``.

    Raises:
        ValueError: naming the argument, as :func:`asr_ctc.ctc.ctc_loss`; or a weight outside its range
            (``wildcard_weight``, ``star_weight`` in [0, 1], ``entropy_weight`` >= 0).
    """
    for name, value, high in (
        ("wildcard_weight", wildcard_weight, 1.0),
        ("star_weight", star_weight, 1.0),
        ("entropy_weight", entropy_weight, math.inf),
    ):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 <= value <= high:
            expected = "a finite number >= 0" if high == math.inf else f"a number in [0, {high}]"
            raise ValueError(f"{name}: expected {expected}, got {value!r}")
    lp, padded, il, tl, unbatched = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank, reduction
    )
    if lp.dtype in (torch.float16, torch.bfloat16):
        lp = lp.float()
    entropy = entropy_weight > 0
    nll, h = lattice_nll(lp, padded, il, tl, blank, zero_infinity, wildcard_weight, star_weight, entropy)
    loss = nll if h is None else nll - entropy_weight * h
    return _reduce(loss, tl, reduction, unbatched)
