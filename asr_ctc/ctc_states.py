"""The CTC state space shared by both loss implementations and the aligner.

A target of L labels is searched over S = 2L + 1 *states*: the labels with a blank before, between and after
them. The reference-parity port (:mod:`asr_ctc.seq_loss_util`), the production loss (:mod:`asr_ctc.ctc`) and
the forced aligner (:mod:`asr_ctc.align`) build that extended sequence, and both losses, in the gradient, fold
per-state posteriors back onto the C output classes; this module holds those two pieces of math once, so
none of the three imports another for them.
"""

from __future__ import annotations

import torch


def interleave_blanks(
    labels: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int,
    boundary_blanks: bool = True,
    pad_value: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleave blanks with each row of ``labels``.

    Args:
        labels: (B, L) int64, class ids; entries past a row's length are ignored.
        label_lengths: (B,) int64, number of valid labels per row.
        blank: the class id written between labels.
        boundary_blanks: also put a blank first and last (length 2L+1); otherwise only between labels (2L-1).
        pad_value: written past each row's extended length.

    Returns:
        ``(extended, extended_lengths)``: (B, 2L+1) or (B, max(2L-1, 0)) int64, and (B,) int64.
    """
    batch, max_len = labels.shape
    blanks = torch.full_like(labels, blank)
    if boundary_blanks:
        # [b, l0, b, l1, ..., b, l_{L-1}] followed by one closing blank.
        pairs = torch.stack((blanks, labels), dim=2).reshape(batch, 2 * max_len)
        extended = torch.cat((pairs, blanks[:, :1] if max_len else labels.new_full((batch, 1), blank)), dim=1)
        ext_lengths = 2 * label_lengths + 1
    else:
        # [l0, b, l1, b, ..., l_{L-1}]: drop the trailing blank of the (label, blank) pairs.
        extended = torch.stack((labels, blanks), dim=2).reshape(batch, 2 * max_len)[:, :-1]
        ext_lengths = (2 * label_lengths - 1).clamp_min(0)
    positions = torch.arange(extended.shape[1], device=labels.device)
    valid = positions.unsqueeze(0) < ext_lengths.unsqueeze(1)
    extended = torch.where(valid, extended, torch.full_like(extended, pad_value))
    return extended, ext_lengths


def states_to_classes(values: torch.Tensor, state_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sum per-state values into their output classes.

    The CTC gradient needs, for every class c, the total posterior of the states labelled c (a class can
    appear in many states: every blank, and repeated labels); a scatter-add does that in one pass instead
    of a loop over labels.

    Args:
        values: (..., S) float, one value per state (e.g. state posteriors at each frame).
        state_labels: (..., S) int64, broadcastable to ``values``: the class of each state.
        num_classes: C.

    Returns:
        (..., C) float, same dtype as ``values``.
    """
    index = state_labels.expand_as(values)
    out = values.new_zeros(*values.shape[:-1], num_classes)
    return out.scatter_add_(-1, index, values)
