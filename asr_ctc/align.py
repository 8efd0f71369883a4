"""CTC forced alignment: the single best frame path of a known transcript (Viterbi).

The search runs over the same banded state space as the loss (:mod:`asr_ctc.ctc`): a target of ``L`` labels
has ``2L + 1`` states (:func:`asr_ctc.ctc_states.interleave_blanks`), and a frame may stay in its state,
move one state on, or skip the blank between two *different* labels (two states on). The loss sums over
those paths (``logaddexp``); the alignment takes their maximum and remembers which of the three moves won,
so a step is ``O(B * S)`` work, no ``S x S`` matrix is built and the only per-frame memory is one int8 per
state. Neither the recursion nor the backtracking reads a tensor value on the host, so on an accelerator
the time loops only queue kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# The validator of the production loss: one set of argument rules (and error messages) for both.
from asr_ctc.ctc import _prepare
from asr_ctc.ctc_states import interleave_blanks
from asr_ctc.decode import apply_blank_penalty

__all__ = ["forced_align"]


def _one_length(value, log_probs):
    """A 0-d length tensor or an int stands for a (1,) one when the batch holds one utterance."""
    if isinstance(log_probs, Tensor) and log_probs.dim() == 3 and log_probs.shape[1] == 1:
        if isinstance(value, Tensor) and value.dim() == 0:
            return value.reshape(1)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
    return value


def forced_align(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int] | int,
    target_lengths: Tensor | Sequence[int] | int,
    blank: int = 0,
    blank_penalty: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Best CTC alignment of each target: the frame path of highest probability that collapses to it.

    The arguments follow :func:`asr_ctc.ctc_loss` (and :func:`torch.nn.functional.ctc_loss`); the outputs
    follow :func:`torchaudio.functional.forced_align`, batched.

    Args:
        log_probs: (T, B, C) or unbatched (T, C), float16, bfloat16, float32 or float64: per-frame class
            log-probabilities. The search runs in float32 for half-precision input, else in its own dtype.
        targets: (B, S) int padded targets (``S >= max(target_lengths)``), or 1-D int concatenated targets
            of ``sum(target_lengths)`` entries (the only form for unbatched input). Ids lie in ``[0, C)`` and
            differ from ``blank`` within each target's length.
        input_lengths: (B,) int tensor or sequence of ints (a 0-d tensor or an int when there is one
            utterance), each ``<= T``.
        target_lengths: (B,) int tensor or sequence of ints (a 0-d tensor or an int for one utterance).
        blank: the blank class id, in ``[0, C)``.
        blank_penalty: subtracted from the blank's log-probability at every frame before the search
            (:func:`asr_ctc.decode.apply_blank_penalty`): the path maximises
            ``sum_t log_probs[t, label_t] - blank_penalty * (number of blank frames)``. A positive penalty
            lets tokens start earlier and last longer; 0 is plain Viterbi alignment exactly.

    Returns:
        ``(labels, scores)``:

        * labels: (B, T) int64 (``(T,)`` unbatched), the class of the best path at every frame: ``blank``
          or a target id. ``decode.collapse(labels[b, :input_lengths[b]], blank)`` is target ``b``.
        * scores: (B, T) (``(T,)`` unbatched), ``log_probs.dtype``: ``log_probs[t, b, labels[b, t]]``, so
          ``scores[b].sum()`` is the log-probability of the best path (at most the CTC log-likelihood,
          ``-ctc_loss(..., reduction="none")[b]``, which sums over all paths). The scores are the
          unpenalised log-probabilities even with a ``blank_penalty``.

        Frames at or past an utterance's input length get label ``blank`` and score 0. Between equally good
        paths the backtrack prefers ending in the closing blank, and at each frame staying in a state over
        entering it from the previous one, and that over skipping a blank: tokens come as early as possible.

    Raises:
        ValueError: naming the argument, for arguments :func:`asr_ctc.ctc_loss` rejects, or NaN / +inf in
            ``log_probs`` within the input lengths; naming the utterance, the frames it needs and the frames
            it has, for a target that cannot be aligned: more labels plus adjacent repeats (each repeat
            needs a blank frame between its copies) than frames, or every path of probability 0.
    """
    input_lengths = _one_length(input_lengths, log_probs)
    target_lengths = _one_length(target_lengths, log_probs)
    lp, padded, il, tl, unbatched = _prepare(log_probs, targets, input_lengths, target_lengths, blank, "none")
    frames, batch, _ = lp.shape
    device = lp.device
    compute = lp.detach()
    if compute.dtype in (torch.float16, torch.bfloat16):
        compute = compute.float()
    compute = apply_blank_penalty(compute, blank, blank_penalty)
    active = torch.arange(frames, device=device).unsqueeze(1) < il.unsqueeze(0)  # (T, B)
    if bool(((compute.isnan() | compute.isposinf()) & active.unsqueeze(-1)).any()):
        raise ValueError("log_probs must not hold NaN or +inf within input_lengths")

    # Each adjacent repeat needs a blank frame between its two copies.
    label_pos = torch.arange(padded.shape[1], device=device)
    repeats = ((padded[:, 1:] == padded[:, :-1]) & (label_pos[1:] < tl.unsqueeze(1))).sum(1)
    needed = tl + repeats
    short = needed > il
    if bool(short.any()):
        b = int(short.nonzero()[0, 0])
        raise ValueError(
            f"utterance {b}: its target of {int(tl[b])} labels ({int(repeats[b])} adjacent repeats) needs "
            f"at least {int(needed[b])} frames, got input_lengths[{b}] = {int(il[b])}"
        )

    ext, n_states = interleave_blanks(padded, tl, blank, pad_value=blank)  # (B, S), (B,)
    n_ext = ext.shape[1]
    state_pos = torch.arange(n_ext, device=device)
    live = state_pos < n_states.unsqueeze(1)
    # Emissions of every state at every frame, "log 0" on the padding states so no path enters them.
    emit = compute.gather(2, ext.unsqueeze(0).expand(frames, -1, -1))
    emit = emit.masked_fill(~live.unsqueeze(0), -math.inf)
    # The +2 move enters a label from the label two states back, over the blank between them; it is
    # forbidden into a blank and between two equal labels (that blank is the only thing separating them).
    can_skip = torch.zeros_like(live)
    can_skip[:, 2:] = (ext[:, 2:] != ext[:, :-2]) & (state_pos[2:] % 2 == 1)
    log_skip = torch.zeros(ext.shape, dtype=compute.dtype, device=device).masked_fill_(~can_skip, -math.inf)

    # score[b, 2 + s] is the best prefix ending in state s; two leading "log 0" columns make the s-1 and
    # s-2 neighbours plain views. Start in the first blank or the first label.
    score = torch.full((batch, n_ext + 2), -math.inf, dtype=compute.dtype, device=device)
    score[:, 2:4] = emit[0, :, :2]
    stay, one, two = score[:, 2:], score[:, 1:-1], score[:, :-2]
    # back[t, b, s]: how state s was entered at frame t (0 stay, 1 from s-1, 2 from s-2).
    back = torch.zeros((frames, batch, n_ext), dtype=torch.int8, device=device)
    two_code = torch.tensor(2, dtype=torch.int8, device=device)
    for t in range(1, frames):
        # Pairwise comparisons, not a max over a stacked (3, B, S) tensor: elementwise kernels are far
        # faster than a reduction over the outer dimension. Ties go to the smaller move (stay first).
        from_one = one > stay
        best = torch.where(from_one, one, stay)
        skip = two + log_skip
        from_two = skip > best
        best = torch.where(from_two, skip, best)
        move = torch.where(from_two, two_code, from_one.to(torch.int8))
        running = active[t].unsqueeze(1)
        # Past its last frame an utterance keeps its scores and "stays", so the backtrack below passes
        # through those frames unchanged.
        stay.copy_(torch.where(running, best + emit[t], stay))
        back[t] = move.masked_fill_(~running, 0)

    # A path ends in the last label or the closing blank (for an empty target only the latter exists).
    last = (n_states - 1).unsqueeze(1)
    ends = torch.cat((last, (last - 1).clamp_min(0)), dim=1)  # (B, 2)
    end_scores = stay.gather(1, ends)
    end_scores[:, 1].masked_fill_(tl == 0, -math.inf)
    which = (end_scores[:, 1] > end_scores[:, 0]).long()  # a tie ends in the closing blank
    best_end = end_scores.gather(1, which.unsqueeze(1)).squeeze(1)
    dead = (best_end == -math.inf) & (il > 0)
    if bool(dead.any()):
        b = int(dead.nonzero()[0, 0])
        raise ValueError(
            f"utterance {b}: every alignment of its target has probability 0 (log_probs -inf on the path); "
            f"it needs at least {int(needed[b])} frames, got input_lengths[{b}] = {int(il[b])}"
        )

    state = ends.gather(1, which.unsqueeze(1)).squeeze(1)  # (B,)
    path = torch.empty((frames, batch), dtype=torch.int64, device=device)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        if t:
            state = state - back[t].gather(1, state.unsqueeze(1)).squeeze(1).long()

    labels = ext.gather(1, path.t()).masked_fill_(~active.t(), blank)  # (B, T)
    scores = lp.detach().gather(2, labels.t().unsqueeze(-1)).squeeze(-1).t()
    scores = scores.masked_fill(~active.t(), 0.0)
    if unbatched:
        return labels[0], scores[0]
    return labels, scores
