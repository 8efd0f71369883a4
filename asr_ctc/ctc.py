"""The production CTC loss: exact, fast on CPU, a drop-in for :class:`torch.nn.CTCLoss`.

How it is computed, and why (log space, one time loop for both recursions, half a lattice, the row layout,
the avoided slow floating-point paths, with measurements): ``docs/loss-internals.md``, "How it works". That
page is the one full description; this docstring keeps the symbols and the math.

Symbols, used throughout this module:

* ``T``: frames (``log_probs.shape[0]``); ``T_b``: the input length of sequence ``b``.
* ``B``: batch size; ``C``: classes, the blank included.
* ``L_b``: the length of target ``b``; ``W``: the width of padded targets, ``(B, W)``, ``W >= max L_b``.
* ``S``: states per sequence in the lattice, ``2 * max(L_b) + 3``: the ``2 L_b + 1`` CTC states of target
  ``b`` (blanks around and between the labels, :func:`asr_ctc.ctc_states.interleave_blanks`), padding up to
  ``2 * max(L_b) + 1``, then two spare states (:class:`_States`).
* Step ``k`` of the time loop: alpha at frame ``k`` and beta at frame ``T - 1 - k``.
* "log 0": :data:`_LOG_ZERO`; a loss above ``-_DEAD`` means "no alignment" (see the constants).

``alpha_t(s)`` is the total probability of the path prefixes in state ``s`` at frame ``t`` (emission at
``t`` included), ``beta_t(s)`` the same for the suffixes. The transitions form a band (stay, ``+1``, and
``+2`` into a label that differs from the label two states back), so a step of either recursion is
``O(B * S)`` work and no ``S x S`` matrix is ever built. ``beta`` runs as the forward recursion of the
time-reversed problem, so both are the two halves of one ``(2, B, S)`` batch.

The gradient is the true derivative with respect to ``log_probs``:
``d(-log p)/d log_probs[t, b, c] = -sum_{s: label(s) = c} gamma_t(s)`` with ``gamma_t(s) = alpha_t(s)
beta_t(s) / (p * y_t(s))`` the state posteriors (``y_t(s)`` the emission, counted once). Through
``log_softmax`` this equals :func:`torch.nn.functional.ctc_loss`'s gradient; on raw log-probs it also passes
:func:`torch.autograd.gradcheck`, which torch's (``exp(log_probs) - gamma``) does not. The posteriors come
out of the forward pass; the backward only scales them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr_ctc.autograd_guard import first_order_only
from asr_ctc.ctc_states import interleave_blanks, states_to_classes

__all__ = ["CTCLoss", "ctc_loss"]

_REDUCTIONS = ("none", "mean", "sum")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Steps per block (T // 8, within [16, 64]): large enough to spread a flush's ~20 ops over many steps, small
# enough that the ring and the kept bands (2 x block rows) stay within the T / 2 stored rows.
_MIN_BLOCK, _MAX_BLOCK, _BLOCK_DIVISOR = 16, 64, 8
# "log 0" inside the lattice: a large finite number instead of -inf. It is absorbed by every sum and
# logaddexp just the same, but -inf - -inf can never make NaN, and logaddexp with an -inf operand runs ~35%
# slower. The price: a sum of log-probabilities below _DEAD can no longer be told from "log 0", so a
# sequence whose log-likelihood is below _DEAD (a loss above -_DEAD = 1e29, compared in the compute dtype)
# has no alignment: loss inf, like a target too long for its frames. Real log-likelihoods never come near
# (-1e29 would take 1e27 frames at -100 each); a target only reaches it through a class masked with a huge
# negative logit (-1e30, finfo.min, -inf), which every convention means as "cannot be emitted". torch,
# which has no sentinel, returns that masked value as a finite loss instead (docs/loss-internals.md,
# "Masked classes").
_LOG_ZERO, _DEAD = -1e30, -1e29


@dataclass
class _States:
    """The extended label sequences of a batch and their transitions.

    Attributes:
        ext: (B, S) int64, class of each state, ``S = 2 * max(L_b) + 3``: the ``2 L_b + 1`` CTC states, then a
            spare state that hosts the reversed recursion's start token and one that is never reachable.
            Padding states hold ``blank``; labels sit in the odd states, blanks in the even ones.
        n_states: (B,) int64, ``2 * L_b + 1``.
        log_skip: (2, B, S) float, 0 where the ``+2`` transition is allowed and "log 0" elsewhere.
            Half 0 (forward): ``s - 2 -> s`` into a label that differs from label ``s - 2`` (``s = 1`` is fed
            by the virtual state ``-1``). Half 1 (reversed): ``s + 2 -> s``, the mirror image (the last label
            is fed by the token in state ``n_states``).
        blank: the blank class id.
    """

    ext: Tensor
    n_states: Tensor
    log_skip: Tensor
    blank: int

    def select(self, rows: Tensor) -> _States:
        return _States(self.ext[rows], self.n_states[rows], self.log_skip[:, rows], self.blank)


def _build_states(targets: Tensor, target_lengths: Tensor, blank: int, dtype: torch.dtype) -> _States:
    ext, n_states = interleave_blanks(targets, target_lengths, blank, pad_value=blank)
    batch = ext.shape[0]
    ext = torch.cat((ext, ext.new_full((batch, 2), blank)), dim=1)
    positions = torch.arange(ext.shape[1], device=ext.device)
    is_label = (positions % 2 == 1) & (positions < n_states.unsqueeze(1))
    differs = torch.ones_like(is_label)
    differs[:, 2:] = ext[:, 2:] != ext[:, :-2]
    fwd = is_label & differs
    # The reversed s+2 -> s is the forward s -> s+2: allowed iff state s+2 may be entered by a skip.
    bwd = torch.zeros_like(fwd)
    bwd[:, :-2] = fwd[:, 2:]
    bwd |= positions.unsqueeze(0) == (n_states - 2).unsqueeze(1)
    allowed = torch.stack((fwd, bwd))
    log_skip = torch.zeros(allowed.shape, dtype=dtype, device=ext.device).masked_fill_(~allowed, _LOG_ZERO)
    return _States(ext, n_states, log_skip, blank)


def _states_view(rows: Tensor, batch: int, n_states: int, shift: int = 0) -> Tensor:
    """View lattice rows as (R, 2, B, S), optionally shifted by ``shift`` states away from the start.

    A lattice row is ``[2 padding | forward half: B x S | reversed half: B x S | 2 padding]``. ``shift = 1``
    or ``2`` gives each state's neighbour ``s - shift`` in the forward half and ``s + shift`` in the reversed
    half (the reversed recursion runs down the states): only the half-to-half stride changes, so it is still
    a single view, and each half is one contiguous run, which the elementwise kernels like.

    Across row boundaries a neighbour read lands in the last state of the previous row (forward) or the
    first of the next (reversed), or in the padding: the last state is never reachable and the skip mask
    blocks the others, so that stays harmless.

    Args:
        rows: (R, 2 * B * S + 4) lattice rows.
        batch, n_states: B and S.
        shift: 0, 1 or 2.
    """
    half = batch * n_states
    return rows.as_strided(
        (rows.shape[0], 2, batch, n_states),
        (rows.stride(0), half + 2 * shift, n_states, 1),
        rows.storage_offset() + 2 - shift,
    )


class _Emissions:
    """Writes the emissions of lattice rows: step ``k`` is frame ``k`` (forward) and ``T - 1 - k`` (reversed).

    Args:
        log_probs: (T, B, C) float.
        states: the batch's :class:`_States`.
        input_lengths: (B,) int64, each >= 1.
        block: the most rows written at once.
        nonfinite: ``log_probs`` may hold NaN or +-inf (its sum is not finite).
    """

    def __init__(
        self, log_probs: Tensor, states: _States, input_lengths: Tensor, block: int, nonfinite: bool
    ) -> None:
        frames, batch, n_classes = log_probs.shape
        n_states = states.ext.shape[1]
        device = log_probs.device
        self.states, self.input_lengths, self.frames = states, input_lengths, frames
        self.nonfinite = nonfinite
        offsets = torch.arange(batch, device=device).unsqueeze(1)
        if n_classes <= n_states:
            self.table, cols = log_probs.reshape(frames, batch * n_classes), states.ext + offsets * n_classes
        else:
            # Many classes: gather each frame's state emissions once, and read rows of that smaller table.
            cols = (states.ext + offsets * n_classes).view(1, -1).expand(frames, -1)
            self.table = log_probs.reshape(frames, batch * n_classes).gather(1, cols)
            cols = torch.arange(n_states, device=device) + offsets * n_states
        width = self.table.shape[1]
        # Source rows [log 0, frame k's values, log 0, frame T-1-k's]: the lattice columns that are always
        # "log 0" (padding columns, states past a target's end) read a log-0 column, so a single gather
        # writes finished rows.
        self.source = torch.empty((block, 2, width + 1), dtype=log_probs.dtype, device=device)
        self.source[..., 0] = _LOG_ZERO
        cols = (cols + 1).masked_fill_(
            torch.arange(n_states, device=device) >= states.n_states.unsqueeze(1), 0
        )
        pad = cols.new_zeros(2)
        self.index = torch.cat((pad, cols.view(-1), cols.view(-1) + width + 1, pad)).view(1, -1)
        self.ragged = bool((input_lengths < frames).any())

    def __call__(self, frame: Tensor, out: Tensor) -> None:
        """Fill lattice rows ``out`` (n, 2 * B * S + 4) for steps ``frame`` (n, 2) int64, rows ``(k, T-1-k)``.

        Forward half: ``log_probs[k, b, ext[b, s]]``; 0 (emission 1) on frames past the input length, which
        only keeps that row finite. Reversed half: frame ``T - 1 - k``; before a sequence's last frame comes
        round its row is "log 0" except the start token (0). Padding states and columns: "log 0".
        """
        n = frame.shape[0]
        source = self.source[:n]
        torch.index_select(self.table, 0, frame.view(-1), out=source.view(2 * n, -1)[:, 1:])
        if self.nonfinite:
            # -inf is a legitimate log-probability ("log 0"); NaN and +inf make their sequence's results NaN
            # (_nll_and_gamma) and are neutralised here so that they cannot spread to other sequences. The
            # clamp keeps huge finite values (finfo.min masking, whose sum overflowed) from overflowing to
            # -inf in the lattice; below _DEAD they mean "log 0" anyway.
            source.nan_to_num_(nan=_LOG_ZERO, posinf=_LOG_ZERO, neginf=_LOG_ZERO).clamp_min_(_LOG_ZERO)
        if self.ragged:
            values = source[..., 1:].view(n, 2, self.input_lengths.numel(), -1)
            past = (frame.unsqueeze(-1) >= self.input_lengths).unsqueeze(-1)
            values[:, 0].masked_fill_(past[:, 0], 0.0)
            values[:, 1].masked_fill_(past[:, 1], _LOG_ZERO)
        torch.gather(source.view(n, -1), 1, self.index.expand(n, -1), out=out)
        if self.ragged:
            # The reversed recursion's start token, until the sequence's last frame.
            batch, n_states = self.states.ext.shape
            token = self.states.n_states.view(1, -1, 1).expand(n, -1, 1)
            value = torch.zeros(past[:, 1].shape, dtype=out.dtype, device=out.device)
            value.masked_fill_(~past[:, 1], _LOG_ZERO)
            _states_view(out, batch, n_states)[:, 1].scatter_(2, token, value)


def _block_steps(frames: int) -> int:
    return min(_MAX_BLOCK, max(_MIN_BLOCK, frames // _BLOCK_DIVISOR))


def _forward_backward(
    log_probs: Tensor, states: _States, input_lengths: Tensor, need_grad: bool, nonfinite: bool
) -> tuple[Tensor, Tensor | None]:
    """Negative log-likelihood and posteriors by the stacked log-space forward-backward recursion.

    Step ``k`` of the single time loop advances alpha to frame ``k`` (half 0) and beta to frame ``T - 1 - k``
    (half 1). The first half of the steps stores its rows; from step ``T // 2`` on, each step's band (its row
    before the emission is added) meets a stored row of the other recursion at the same two frames, which
    gives the posteriors of frames ``k`` and ``T - 1 - k``, and the new row is not kept. The steps run on a
    small ring of rows, flushed (stored, or paired) a block of steps at a time.

    Args:
        log_probs: (T, B, C) float32 or float64.
        states: the batch's :class:`_States`.
        input_lengths: (B,) int64, each >= 1.
        need_grad: also compute the posteriors.
        nonfinite: ``log_probs`` may hold NaN or +-inf (see :class:`_Emissions`).

    Returns:
        ``(nll, gamma)``: (B,) ``log_probs.dtype`` (``inf`` without alignments) and, with ``need_grad``,
        the posterior mass per class, (T, B, C) ``log_probs.dtype`` if ``C <= S``, else per state,
        (T, B, S) (the smaller of the two; :func:`_CTCFunction.backward` folds states into classes).
        Zero on frames past the input length.
    """
    dtype, device = log_probs.dtype, log_probs.device
    frames, batch, n_classes = log_probs.shape
    n_states = states.ext.shape[1]
    row = 2 * batch * n_states + 4
    block = _block_steps(frames)
    emissions = _Emissions(log_probs, states, input_lengths, block, nonfinite)

    # Step k writes lattice row k+1 (row 0 is the virtual row before step 0). Rows 1..kept are the partners
    # (row T-k) of the pairing steps k >= T//2 and are stored; every step runs in ring slot 1 + k % block,
    # slot 0 holding the previous block's last row (first the virtual row).
    first_pair = frames // 2 if need_grad else frames
    kept = (frames + 1) // 2 if need_grad else 0
    stored = torch.empty((kept, row), dtype=dtype, device=device)
    ring = torch.empty((block + 1, row), dtype=dtype, device=device)
    ring[0] = _LOG_ZERO
    ring[0, 1 : 1 + batch * n_states : n_states] = 0.0  # forward start: each row's state -1
    _states_view(ring[:1], batch, n_states)[0, 1].scatter_(1, states.n_states.unsqueeze(1), 0.0)  # the token
    steps = torch.arange(frames, device=device)
    step_frames = torch.stack((steps, frames - 1 - steps), 1)
    emissions(step_frames[:block], ring[1 : 1 + min(block, frames)])

    slots = _states_view(ring, batch, n_states).unbind(0)
    slots1 = _states_view(ring, batch, n_states, 1).unbind(0)
    slots2 = _states_view(ring, batch, n_states, 2).unbind(0)
    # Bands of the pairing steps are kept, newest first (so they line up with the partner rows T-k, which
    # ascend as k descends); the other steps share one scratch band.
    history = torch.empty((block, 2, batch, n_states), dtype=dtype, device=device)
    scratch = torch.empty((2, batch, n_states), dtype=dtype, device=device)
    last = [min(k - k % block + block, frames) - 1 for k in range(frames)]
    bands = [scratch if k < first_pair else history[last[k] - k] for k in range(frames)]
    # Frames of history slot i in each flush: (k, T-1-k) with k = last step of the flush - i.
    pair_steps = [last[k] + max(k - k % block, first_pair) - k for k in range(first_pair, frames)]
    pair_frames = step_frames[pair_steps]

    gamma = None
    if need_grad:
        gamma = torch.empty((frames, batch, min(n_classes, n_states)), dtype=dtype, device=device)
    by_class = n_classes <= n_states
    label_states = states.ext[:, 1::2].view(1, 1, batch, -1)
    # Floor of the posterior exponent: the smallest normal float (e^-85 in float32), see pair().
    floor = math.log(torch.finfo(dtype).tiny) + 2.0

    def pair(k0: int, k1: int) -> None:
        # History slot i holds the band of step k = k1-1-i: alpha'_k (half 0: alpha before frame k's
        # emission) and beta'_{T-1-k} (half 1). Their partners in row T-k: beta_k (half 1) and alpha_{T-1-k}
        # (half 0). The sums are log P(paths in state s at that frame), the emission counted once.
        n = k1 - k0
        joint = history[:n]
        partner = _states_view(stored[frames - k1 : frames - k0], batch, n_states)
        joint[:, 0].add_(partner[:, 1])
        joint[:, 1].add_(partner[:, 0])
        frame = pair_frames[k0 - first_pair : k1 - first_pair]
        if emissions.ragged:
            # Past a sequence's input length both recursions hold placeholders (emission 1, start token).
            joint.masked_fill_((frame.unsqueeze(-1) >= input_lengths).unsqueeze(-1), _LOG_ZERO)
        # Per-frame softmax over states. The exponent is floored at the smallest normal float (a relative
        # posterior of 1e-37 at most in float32): exp of -inf, or of a value whose result underflows, runs
        # 3-10x slower on x86. A frame no alignment passes through (top is "log 0") gets gamma 0.
        top = joint.amax(-1, keepdim=True)
        total = joint.sub_(top).clamp_min_(floor).exp_().sum(-1, keepdim=True)
        total.masked_fill_(top < _DEAD, math.inf)
        if by_class:
            # Labels sit in the odd states and blanks in the even ones: fold the labels with a scatter, the
            # blanks with a sum (half the scatter work).
            post = states_to_classes(joint[..., 1::2], label_states, n_classes)
            post.select(-1, states.blank).add_(joint[..., ::2].sum(-1))
        else:
            post = joint
        gamma.index_copy_(0, frame.reshape(-1), post.div_(total).view(2 * n, batch, -1))

    def flush(k0: int, k1: int) -> None:
        # After steps k0..k1-1 (ring slots 1..n): store the rows to keep, pair, reload the ring.
        n = k1 - k0
        if k0 < kept:
            m = min(k1, kept) - k0
            stored[k0 : k0 + m] = ring[1 : 1 + m]
        if k1 > first_pair:
            pair(max(k0, first_pair), k1)
        if k1 < frames:
            ring[0] = ring[n]
            m = min(block, frames - k1)
            emissions(step_frames[k1 : k1 + m], ring[1 : 1 + m])

    # The time loop. Both halves: row = emission + log(prev(s) + prev(s -+ 1) + skip * prev(s -+ 2)).
    # logaddexp is one fused op, so a step is four ops on views made up front.
    skip = torch.empty_like(scratch)
    log_skip, add, logaddexp = states.log_skip, torch.add, torch.logaddexp
    # Per step: the rows read at s -+ 2, s, s -+ 1 and the row written (one tuple: little Python per step).
    schedule = [
        (slots2[k % block], slots[k % block], slots1[k % block], slots[k % block + 1]) for k in range(frames)
    ]
    ends = {min(k + block, frames) for k in range(0, frames, block)}
    for k, ((prev2, prev, prev1, cur), band) in enumerate(zip(schedule, bands, strict=True), 1):
        add(prev2, log_skip, out=skip)
        logaddexp(prev, prev1, out=band)
        logaddexp(band, skip, out=band)
        cur.add_(band)
        if k in ends:
            flush(k - 1 - (k - 1) % block, k)

    # log p from beta at frame 0 (the last row): its start states, blank 0 and the first label 1 (for an
    # empty target, state 1 is the spent token, "log 0").
    start = slots[(frames - 1) % block + 1][1, :, :2]
    nll = -torch.logaddexp(start[:, 0], start[:, 1])
    return nll.masked_fill_(nll > -_DEAD, math.inf), gamma


def _nll_and_gamma(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None, _States]:
    """Negative log-likelihood and posteriors of a validated batch.

    Args:
        log_probs: (T, B, C) float32 or float64.
        targets: (B, L) int64, padded.
        input_lengths: (B,) int64.
        target_lengths: (B,) int64.
        blank: blank class id.
        need_grad: also return the posteriors.

    Returns:
        ``(nll, gamma, states)``: (B,) ``log_probs.dtype`` (``inf`` where no alignment exists, NaN where a
        valid frame holds NaN or +inf); the posteriors of :func:`_forward_backward` (NaN on the valid frames
        of rows whose loss is not finite, like torch's gradient), or ``None``; the :class:`_States`.
    """
    frames, batch, n_classes = log_probs.shape
    device = log_probs.device
    states = _build_states(targets, target_lengths, blank, log_probs.dtype)
    valid = torch.arange(frames, device=device).unsqueeze(1) < input_lengths.unsqueeze(0)
    # One reduction tells whether anything may be non-finite (an overflow to inf only costs the slower path).
    nonfinite = not bool(torch.isfinite(log_probs.sum()))
    has_frames = input_lengths > 0
    if batch and bool(has_frames.all()):
        nll, gamma = _forward_backward(log_probs, states, input_lengths, need_grad, nonfinite)
    else:
        # No frames: the empty alignment has probability 1 for an empty target, 0 otherwise; no gradient.
        nll = torch.where(target_lengths == 0, 0.0, math.inf).to(log_probs.dtype)
        gamma = (
            log_probs.new_zeros((frames, batch, min(n_classes, states.ext.shape[1]))) if need_grad else None
        )
        rows = has_frames.nonzero().squeeze(1)
        if rows.numel():
            sub_nll, sub_gamma = _forward_backward(
                log_probs.index_select(1, rows),
                states.select(rows),
                input_lengths[rows],
                need_grad,
                nonfinite,
            )
            nll[rows] = sub_nll
            if gamma is not None:
                gamma.index_copy_(1, rows, sub_gamma)
    if nonfinite:
        poisoned = ((log_probs.isnan() | log_probs.isposinf()) & valid.unsqueeze(-1)).any(2).any(0)
        nll = nll.masked_fill(poisoned, math.nan)
    if gamma is not None:
        broken = ~nll.isfinite()
        if bool(broken.any()):
            gamma.masked_fill_((valid & broken.unsqueeze(0)).unsqueeze(-1), math.nan)
    return nll, gamma, states


class _CTCFunction(torch.autograd.Function):
    """Loss and posteriors in one forward pass; the analytic backward only scales (and folds) them."""

    @staticmethod
    def forward(ctx, log_probs, targets, input_lengths, target_lengths, blank, zero_infinity):
        compute = log_probs.detach()
        if compute.dtype in (torch.float16, torch.bfloat16):
            compute = compute.float()
        nll, gamma, states = _nll_and_gamma(
            compute, targets, input_lengths, target_lengths, blank, need_grad=ctx.needs_input_grad[0]
        )
        if zero_infinity:
            infinite = nll == math.inf
            nll = nll.masked_fill(infinite, 0.0)
            if gamma is not None:
                gamma.masked_fill_(infinite.view(1, -1, 1), 0.0)
        ctx.input_dtype = log_probs.dtype
        ctx.n_classes = log_probs.shape[-1]
        # log_probs is kept only to tie the gradient to it when a second derivative is asked for.
        ctx.save_for_backward(gamma, states.ext, log_probs)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        # d nll_b / d log_probs[t, b, c] = -gamma[t, b, c]: the true derivative, valid for any log_probs.
        # Exact to first order only: a double backward raises (asr_ctc.autograd_guard) instead of silently
        # treating gamma as a constant.
        gamma, ext, log_probs = ctx.saved_tensors
        grad = gamma * grad_nll.to(gamma.dtype).neg().view(1, -1, 1)
        if gamma.shape[-1] != ctx.n_classes:  # stored per state (C > S): fold into classes
            grad = states_to_classes(grad, ext.unsqueeze(0), ctx.n_classes)
        grad = first_order_only(grad.to(ctx.input_dtype), log_probs, "asr_ctc.ctc_loss", "log_probs")
        return grad, None, None, None, None, None


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _lengths(value, name: str, batch: int, device: torch.device) -> Tensor:
    """Lengths as a (B,) int64 tensor: ``value`` is a (B,) tensor or a sequence of ints; for a batch of one
    (unbatched input, or B = 1) also a 0-d tensor or an int, as torch accepts."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {value.dtype}")
        if value.dim() > 1 or (value.dim() == 0 and batch != 1):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")
        out = value.to(device=device, dtype=torch.int64).reshape(-1)
    elif _is_int(value) and batch == 1:
        out = torch.tensor([operator.index(value)], dtype=torch.int64, device=device)
    elif isinstance(value, Sequence) and all(_is_int(v) for v in value):
        out = torch.tensor([operator.index(v) for v in value], dtype=torch.int64, device=device)
    else:
        raise ValueError(
            f"{name} must be an integer tensor or a sequence of ints, got {type(value).__name__}"
        )
    if out.numel() != batch:
        raise ValueError(f"{name} must have {batch} entries (the batch size of log_probs), got {out.numel()}")
    if bool((out < 0).any()):
        raise ValueError(f"{name} must be non-negative, got {out.tolist()}")
    return out


def _prepare(log_probs, targets, input_lengths, target_lengths, blank, reduction):
    """Validate the arguments and bring them to the batched, padded form.

    Returns:
        ``(log_probs, targets, input_lengths, target_lengths, unbatched)``: (T, B, C) view of the input,
        (B, max L_b) int64 padded targets, (B,) int64, (B,) int64, and whether the input was unbatched.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if (
        not isinstance(log_probs, Tensor)
        or log_probs.dim() not in (2, 3)
        or log_probs.dtype not in _FLOAT_DTYPES
    ):
        got = (
            f"{log_probs.dim()}-D {log_probs.dtype}"
            if isinstance(log_probs, Tensor)
            else type(log_probs).__name__
        )
        raise ValueError(
            f"log_probs must be a floating-point (T, B, C) or unbatched (T, C) tensor, got {got}"
        )
    unbatched = log_probs.dim() == 2
    lp = log_probs.unsqueeze(1) if unbatched else log_probs
    frames, batch, n_classes = lp.shape
    if lp.numel() == 0:
        raise ValueError(f"log_probs must not be empty (T, B, C >= 1), got shape {tuple(log_probs.shape)}")
    if not isinstance(blank, int) or isinstance(blank, bool) or not 0 <= blank < n_classes:
        raise ValueError(f"blank must be an int in [0, {n_classes}) (C = {n_classes} classes), got {blank!r}")
    if not isinstance(targets, Tensor) or targets.dtype.is_floating_point or targets.dtype.is_complex:
        raise ValueError("targets must be an integer tensor")
    if targets.dtype == torch.bool:
        raise ValueError("targets must be an integer tensor, got dtype torch.bool")
    device = lp.device
    il = _lengths(input_lengths, "input_lengths", batch, device)
    tl = _lengths(target_lengths, "target_lengths", batch, device)
    if bool((il > frames).any()):
        raise ValueError(
            f"input_lengths must be at most T = {frames} (log_probs.shape[0]), got {il.tolist()}"
        )
    targets = targets.to(device=device, dtype=torch.int64)
    max_len = int(tl.max()) if batch else 0
    if targets.dim() == 1:
        # Concatenated targets (the only 1-D form, batched or not): row b is the next target_lengths[b] ids.
        total = int(tl.sum())
        if targets.numel() != total:
            raise ValueError(
                f"1-D (concatenated) targets must have sum(target_lengths) = {total} entries, "
                f"got {targets.numel()}"
            )
        offsets = torch.cumsum(tl, 0) - tl
        index = offsets.unsqueeze(1) + torch.arange(max_len, device=device)
        valid = torch.arange(max_len, device=device) < tl.unsqueeze(1)
        padded = targets[index.clamp(max=max(total - 1, 0))] if total else index.new_zeros(index.shape)
        padded = padded.masked_fill(~valid, blank)
    elif targets.dim() == 2 and not unbatched:
        if targets.shape[0] != batch:
            raise ValueError(f"targets has batch size {targets.shape[0]}, log_probs has {batch}")
        if max_len > targets.shape[1]:
            raise ValueError(
                f"target_lengths must be at most targets.shape[1] = {targets.shape[1]} (padded targets), "
                f"got {tl.tolist()}"
            )
        valid = torch.arange(max_len, device=device) < tl.unsqueeze(1)
        padded = targets[:, :max_len].masked_fill(~valid, blank)
    else:
        expected = "1-D" if unbatched else "(B, W) or 1-D concatenated"
        raise ValueError(
            f"targets must be {expected} for {lp.dim() - unbatched}-D log_probs, got {targets.dim()}-D"
        )
    live = padded[valid]
    if bool(((live < 0) | (live >= n_classes)).any()):
        raise ValueError(f"targets must be class ids in [0, {n_classes}) within target_lengths")
    if bool((live == blank).any()):
        raise ValueError(f"targets must not contain the blank id {blank} within target_lengths")
    return lp, padded, il, tl, unbatched


def _reduce(loss: Tensor, target_lengths: Tensor, reduction: str, unbatched: bool) -> Tensor:
    """``F.ctc_loss``'s reductions of (B,) per-sequence losses: ``sum``; ``mean``, each over its target length
    (at least 1), averaged; ``none``, shaped like the input batch (a scalar for unbatched input)."""
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return (loss / target_lengths.clamp_min(1).to(loss.dtype)).mean()
    return loss.squeeze(0) if unbatched else loss


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int] | int,
    target_lengths: Tensor | Sequence[int] | int,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """Connectionist Temporal Classification loss, with :func:`torch.nn.functional.ctc_loss` semantics.

    Args:
        log_probs: (T, B, C) or unbatched (T, C), float16, bfloat16, float32 or float64: per-frame class
            log-probabilities (normally ``log_softmax`` output; any values are differentiated exactly).
        targets: (B, W) int padded targets (``W >= max(target_lengths)``), or 1-D int concatenated targets
            of ``sum(target_lengths)`` entries (the only form for unbatched input). Ids lie in ``[0, C)`` and
            differ from ``blank`` within each target's length.
        input_lengths: (B,) int tensor or sequence of ints (for a batch of one, unbatched or ``B = 1``,
            also a 0-d tensor or an int), each ``<= T``; frames past a sequence's length are ignored and get
            zero gradient.
        target_lengths: (B,) int tensor or sequence of ints (batch of one: also 0-d or int), each ``>= 0``.
        blank: the blank class id, in ``[0, C)``.
        reduction: ``"none"``: (B,) per-sequence losses (a 0-d tensor unbatched); ``"sum"``: their sum;
            ``"mean"``: each loss divided by its target length clamped to ``>= 1``, averaged over the batch.
        zero_infinity: set infinite losses (targets with no possible alignment) and their gradients to zero.

    Returns:
        The loss, float32 for float16/bfloat16 input, otherwise ``log_probs.dtype``.

    A sequence has no alignment, and gets loss ``inf`` (gradient NaN on its valid frames; both 0 with
    ``zero_infinity``), when its target needs more frames than it has, or when its negative log-likelihood
    exceeds ``1e29`` (compared in float32, or float64 for float64 input). The second case is only reached
    through classes masked with huge negative values (logits or log-probs of ``-1e30``, ``finfo.min``),
    which this loss treats like ``-inf``: "cannot be emitted". Where torch returns that masked value as a
    finite loss (about ``1e30``), this loss returns ``inf``. Below ``1e29`` the losses are torch's.

    Raises:
        ValueError: naming the offending argument, for any input torch would reject or mis-handle.
    """
    lp, padded, il, tl, unbatched = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank, reduction
    )
    nll = _CTCFunction.apply(lp, padded, il, tl, blank, bool(zero_infinity))
    return _reduce(nll, tl, reduction, unbatched)


class CTCLoss(nn.Module):
    """Module form of :func:`ctc_loss`, a drop-in for :class:`torch.nn.CTCLoss`.

    Args:
        blank: the blank class id.
        reduction: ``"none"``, ``"mean"`` or ``"sum"`` (see :func:`ctc_loss`).
        zero_infinity: zero infinite losses and their gradients.
    """

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = zero_infinity

    def forward(
        self,
        log_probs: Tensor,
        targets: Tensor,
        input_lengths: Tensor | Sequence[int] | int,
        target_lengths: Tensor | Sequence[int] | int,
    ) -> Tensor:
        """See :func:`ctc_loss` for shapes and dtypes."""
        return ctc_loss(
            log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction, self.zero_infinity
        )

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"
