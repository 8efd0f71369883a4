"""PyTorch port of the published TensorFlow reference CTC loss (cognitive_workflow_kit, ``seq_loss_util``).

The function names and semantics follow the reference, so that its unit test carries over unchanged:

* :func:`to_blank_augmented_labels` builds the blank-augmented state sequence of each target,
* :func:`label_trans_table` the (S, S) table of allowed state transitions (0.0 allowed, ``LOG_0`` not),
* :func:`calculate_log_label_prob` the log probability of every state's class at every frame,
* :func:`calculate_alpha_beta` the per-frame normalised forward and backward variables,
* :func:`ctc_loss` the per-sequence loss, with an analytic gradient w.r.t. the logits,
* :func:`ctc_loss_like_torch` the same loss behind :func:`torch.nn.functional.ctc_loss`'s calling convention.

The reference author's PyTorch course library (chanwcom/courses, ``2025_spring/xai604/assignments/hw01``,
``ctc_loss_lib.py``) uses the same functions under two further names, provided here so that its unit test
``ctc_loss_test.py`` runs against this module unchanged: :data:`label_trans_allowance_table` (an alias of
:func:`label_trans_table`) and :func:`sequence_mask`; its ``update_non_blank_token_index`` flag is the
keyword of the same name of :func:`to_blank_augmented_labels`.

Conventions: a label sequence is a dict ``{"SEQ_DATA": (B, L) int, "SEQ_LEN": (B,) int}``; log 0 is
represented by the finite :data:`LOG_0` (float32 ``log(1e-307)``) so that no ``-inf`` enters the recursion.

Reference quirk: the reference merges the two admissible final states (last blank, last label) with ``max``
instead of log-add-exp, so its loss over-estimates the exact negative log-likelihood. ``exact=False`` (the
default) keeps that behaviour for parity; ``exact=True`` gives the exact CTC loss. The gradient is the exact
CTC gradient in both modes (it comes from the state posteriors, not from the merged final value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from asr_ctc.autograd_guard import first_order_only
from asr_ctc.ctc_states import interleave_blanks, states_to_classes

__all__ = [
    "LOG_0",
    "to_blank_augmented_labels",
    "label_trans_table",
    "label_trans_allowance_table",
    "sequence_mask",
    "calculate_log_label_prob",
    "calculate_alpha_beta",
    "ctc_loss",
    "ctc_loss_like_torch",
]

#: Stand-in for log(0): float32 log(1e-307) (about -706.8936), the value the reference uses. Kept as the
#: float32 value even in float64 computations so that both dtypes carry the same filler numbers.
LOG_0: float = torch.tensor(math.log(1e-307), dtype=torch.float32).item()

_FLOAT_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------------
# Input validation: every public function checks its arguments up front, so that a wrong shape or length
# fails with a message naming the argument instead of an index error deep inside the recursion.
# --------------------------------------------------------------------------------------------------------


def _check_tensor(name: str, value: object, rank: int, kind: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(value.shape)}")
    if kind == "int" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor, got {value.dtype}")
    if kind == "float" and value.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got {value.dtype}")
    return value


def _check_batch(batch: int, **tensors: torch.Tensor) -> None:
    for name, value in tensors.items():
        if value.shape[0] != batch:
            raise ValueError(f"{name} has batch size {value.shape[0]}, expected {batch}")


def _check_lengths(name: str, lengths: torch.Tensor, low: int, high: int, what: str) -> None:
    if lengths.numel() == 0:
        return
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < low or hi > high:
        raise ValueError(f"{name} must lie in [{low}, {high}] ({what}), got values in [{lo}, {hi}]")


def _check_label_dict(name: str, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(labels, dict) or "SEQ_DATA" not in labels or "SEQ_LEN" not in labels:
        raise ValueError(f"{name} must be a dict with keys 'SEQ_DATA' and 'SEQ_LEN'")
    data = _check_tensor(f"{name}['SEQ_DATA']", labels["SEQ_DATA"], 2, "int")
    lengths = _check_tensor(f"{name}['SEQ_LEN']", labels["SEQ_LEN"], 1, "int")
    _check_batch(data.shape[0], **{f"{name}['SEQ_LEN']": lengths})
    _check_lengths(f"{name}['SEQ_LEN']", lengths, 0, data.shape[1], "the width of SEQ_DATA")
    return data, lengths


# --------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------


def to_blank_augmented_labels(
    inputs: dict[str, torch.Tensor],
    blank_index: int = 0,
    boundary_blanks: bool = True,
    update_non_blank_token_index: bool = True,
) -> dict[str, torch.Tensor]:
    """Insert blanks into label sequences, making room for the blank class.

    Every label ``>= blank_index`` is shifted up by one so that ``blank_index`` becomes free for the blank;
    blanks are then interleaved between the labels and, with ``boundary_blanks``, also put first and last.

    Args:
        inputs: ``{"SEQ_DATA": (B, L) int, "SEQ_LEN": (B,) int}``; entries past a row's length are ignored.
        blank_index: class id of the blank in the augmented labels (>= 0).
        boundary_blanks: put a blank before the first and after the last label (length 2L+1 per row);
            otherwise only between labels (2L-1, 0 for an empty row).
        update_non_blank_token_index: shift labels ``>= blank_index`` up by one. Pass False when the label
            ids already leave ``blank_index`` free (a Hugging Face wav2vec 2.0 vocabulary, whose pad token is
            the blank); the name is the author's course library's.

    Returns:
        ``{"SEQ_DATA": (B, 2L+1) or (B, max(2L-1, 0)) int64, "SEQ_LEN": (B,) int64}``; entries past a row's
        augmented length are 0.
    """
    data, lengths = _check_label_dict("inputs", inputs)
    if isinstance(blank_index, bool) or not isinstance(blank_index, int) or blank_index < 0:
        raise ValueError(f"blank_index must be a non-negative int, got {blank_index!r}")
    data = data.long()
    shifted = torch.where(data >= blank_index, data + 1, data) if update_non_blank_token_index else data
    # Padding is reset to 0 by interleave_blanks, so shifting it above is harmless.
    seq_data, seq_len = interleave_blanks(shifted, lengths.long(), blank_index, boundary_blanks, pad_value=0)
    return {"SEQ_DATA": seq_data, "SEQ_LEN": seq_len}


def label_trans_table(
    labels: torch.Tensor, labels_len: torch.Tensor, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Log transition table between the states of blank-augmented label sequences.

    Transition ``i -> j`` is allowed (0.0) when ``j == i``, ``j == i + 1``, or ``j == i + 2`` unless
    ``labels[i] == labels[i + 2]`` (this forbids both blank -> blank and skipping the blank between two equal
    labels); every other entry is :data:`LOG_0`. As in the reference, the table covers the first
    ``S = max(labels_len)`` columns of ``labels`` and the equality test runs on the data as is, padding
    included (transitions into padded states are masked later by :func:`calculate_alpha_beta`).

    Args:
        labels: (B, L) int, blank-augmented labels.
        labels_len: (B,) int, augmented length of each row, at most L.
        dtype: float32 or float64, dtype of the table.

    Returns:
        (B, S, S) ``dtype``, entry ``[b, i, j]`` is the log weight of moving from state i to state j.
    """
    _check_tensor("labels", labels, 2, "int")
    _check_tensor("labels_len", labels_len, 1, "int")
    _check_batch(labels.shape[0], labels_len=labels_len)
    _check_lengths("labels_len", labels_len, 0, labels.shape[1], "the width of labels")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")

    batch = labels.shape[0]
    num_states = int(labels_len.max()) if batch else 0
    states = labels[:, :num_states]
    positions = torch.arange(num_states, device=labels.device)
    step = positions.unsqueeze(0) - positions.unsqueeze(1)  # step[i, j] = j - i
    skip_ok = torch.zeros(batch, num_states, dtype=torch.bool, device=labels.device)
    if num_states > 2:
        skip_ok[:, :-2] = states[:, :-2] != states[:, 2:]
    allowed = (step == 0) | (step == 1) | ((step == 2) & skip_ok.unsqueeze(2))
    zero = torch.zeros((), dtype=dtype, device=labels.device)
    log_0 = torch.full((), LOG_0, dtype=dtype, device=labels.device)
    return torch.where(allowed, zero, log_0)


#: The author's course-library name (chanwcom/courses, 2025 ``ctc_loss_lib.py``) of :func:`label_trans_table`.
label_trans_allowance_table = label_trans_table


def sequence_mask(
    lengths: torch.Tensor, maxlen: int | None = None, dtype: torch.dtype = torch.bool
) -> torch.Tensor:
    """Mask of the valid positions of padded sequences (PyTorch counterpart of ``tf.sequence_mask``).

    Args:
        lengths: (...) int, length of each sequence, >= 0.
        maxlen: width of the mask (>= 0); defaults to ``lengths.max()`` (0 for an empty ``lengths``).
        dtype: dtype of the result (bool, an integer or a float dtype).

    Returns:
        (..., maxlen) ``dtype``: entry ``[..., i]`` is 1 (True) when ``i < lengths[...]``, else 0 (False).

    Raises:
        ValueError: ``lengths`` is not an integer tensor or has a negative entry, or ``maxlen`` is not a
            non-negative int.
    """
    if not isinstance(lengths, torch.Tensor) or lengths.is_floating_point() or lengths.is_complex() or (
        lengths.dtype == torch.bool
    ):
        got = lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be an integer torch.Tensor, got {got}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got minimum {int(lengths.min())}")
    if maxlen is None:
        maxlen = int(lengths.max()) if lengths.numel() else 0
    elif isinstance(maxlen, torch.Tensor) and maxlen.numel() == 1 and not maxlen.is_floating_point():
        maxlen = int(maxlen)
    if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0:
        raise ValueError(f"maxlen must be a non-negative int or None, got {maxlen!r}")
    positions = torch.arange(maxlen, device=lengths.device)
    return (positions < lengths.unsqueeze(-1)).to(dtype)


def calculate_log_label_prob(labels: torch.Tensor, softmax_output: torch.Tensor) -> torch.Tensor:
    """Log probability of each state's class at every frame.

    Args:
        labels: (B, S) int, blank-augmented labels, each in [0, C).
        softmax_output: (B, T, C) float32 or float64, per-frame class probabilities.

    Returns:
        (B, T, S), dtype of ``softmax_output``: ``log(softmax_output[b, t, labels[b, s]])``, clamped below at
        :data:`LOG_0` so that a probability that underflowed to 0 stays finite.
    """
    _check_tensor("labels", labels, 2, "int")
    _check_tensor("softmax_output", softmax_output, 3, "float")
    _check_batch(softmax_output.shape[0], labels=labels)
    num_classes = softmax_output.shape[2]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (the class axis of softmax_output), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    batch, frames, _ = softmax_output.shape
    index = labels.long().unsqueeze(1).expand(batch, frames, labels.shape[1])
    return softmax_output.gather(2, index).log().clamp_min(LOG_0)


def calculate_alpha_beta(
    label_trans_table: torch.Tensor,
    log_label_prob: torch.Tensor,
    label_len: torch.Tensor,
    logit_len: torch.Tensor,
    *,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward variables of the reference recursion, and the sequence log-probability.

    Both recursions are renormalised at every frame (their maximum over states is subtracted) so that they
    stay in range without log-space underflow; the forward normalisers are accumulated to recover the
    sequence probability. ``alpha[b, t, s]`` includes the emission at frame t, ``beta[b, t, s]`` does not,
    so ``alpha + beta`` is the log posterior of state s at frame t up to a per-frame constant. At each
    sequence's last valid frame, ``beta`` is 0 in the two admissible final states and about ``LOG_0``
    elsewhere.

    Entries outside a sequence (frame ``t >= logit_len`` or state ``s >= label_len``) have ``LOG_0`` added
    (once per reason), as in the reference; they are filler, not probabilities.

    Args:
        label_trans_table: (B, S, S) float, from :func:`label_trans_table`; cast to the dtype of
            ``log_label_prob``.
        log_label_prob: (B, T, S) float32 or float64, from :func:`calculate_log_label_prob`.
        label_len: (B,) int, blank-augmented label lengths, in [1, S].
        logit_len: (B,) int, number of valid frames, in [1, T].
        exact: merge the two final states with log-add-exp (exact sequence log-probability) instead of the
            reference's ``max``.

    Returns:
        ``(alpha, beta, log_seq_prob_final)``: (B, T, S), (B, T, S) and (B,), dtype of ``log_label_prob``.
    """
    _check_tensor("log_label_prob", log_label_prob, 3, "float")
    _check_tensor("label_trans_table", label_trans_table, 3, "float")
    _check_tensor("label_len", label_len, 1, "int")
    _check_tensor("logit_len", logit_len, 1, "int")
    batch, frames, num_states = log_label_prob.shape
    if batch == 0:
        raise ValueError("log_label_prob must have a non-empty batch")
    _check_batch(batch, label_trans_table=label_trans_table, label_len=label_len, logit_len=logit_len)
    if tuple(label_trans_table.shape[1:]) != (num_states, num_states):
        raise ValueError(
            f"label_trans_table must have shape (B, S, S) with S = {num_states} (the state axis of "
            f"log_label_prob), got {tuple(label_trans_table.shape)}"
        )
    _check_lengths("label_len", label_len, 1, num_states, "the state axis of log_label_prob")
    _check_lengths("logit_len", logit_len, 1, frames, "the frame axis of log_label_prob")

    dtype, device = log_label_prob.dtype, log_label_prob.device
    table = label_trans_table.to(dtype)  # 0.0 and LOG_0 are exact in both float dtypes
    label_len = label_len.long().to(device)
    logit_len = logit_len.long().to(device)
    rows = torch.arange(batch, device=device)
    state_pos = torch.arange(num_states, device=device)
    frame_pos = torch.arange(frames, device=device)
    log_0 = torch.full((), LOG_0, dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)

    # Forward: start in state 0; a_t[j] = logsumexp_i(a_{t-1}[i] + table[i, j]) + emission. As in the
    # reference there is no masking inside the loop: frames past a sequence's end are computed but unused.
    alpha_t = torch.where(state_pos == 0, zero, log_0).expand(batch, num_states)
    accum = torch.zeros(batch, dtype=dtype, device=device)
    alphas, accums = [], []
    for t in range(frames):
        alpha_t = torch.logsumexp(alpha_t.unsqueeze(2) + table, dim=1) + log_label_prob[:, t]
        norm = alpha_t.amax(dim=1)
        alpha_t = alpha_t - norm.unsqueeze(1)
        accum = accum + norm
        alphas.append(alpha_t)
        accums.append(accum)
    gamma = torch.stack(alphas, dim=1)
    accum_all = torch.stack(accums, dim=1)

    # Backward: end in state label_len - 1 (the last blank with boundary blanks); the emission used at
    # frame t is that of frame t + 1, so beta excludes the current frame. Frames past the sequence are
    # reset to the initial vector, which makes the last valid frame start from it.
    beta_init = torch.where(state_pos.unsqueeze(0) == (label_len - 1).unsqueeze(1), zero, log_0)
    beta_t = beta_init
    betas = [beta_init] * frames
    for t in range(frames - 1, -1, -1):
        emission = log_label_prob[:, t + 1] if t + 1 < frames else torch.zeros_like(beta_t)
        beta_t = torch.logsumexp((beta_t + emission).unsqueeze(1) + table, dim=2)
        beta_t = beta_t - beta_t.amax(dim=1, keepdim=True)
        beta_t = torch.where((t >= logit_len).unsqueeze(1), beta_init, beta_t)
        betas[t] = beta_t
    delta = torch.stack(betas, dim=1)

    # Sequence log-probability at the last valid frame, from the two admissible final states.
    last_frame = logit_len - 1
    final_last = gamma[rows, last_frame, label_len - 1]
    # A one-state sequence (empty target) has a single final state; the reference would index state -1.
    final_prev = torch.where(label_len >= 2, gamma[rows, last_frame, (label_len - 2).clamp_min(0)], log_0)
    merged = torch.logaddexp(final_last, final_prev) if exact else torch.maximum(final_last, final_prev)
    log_seq_prob_final = merged + accum_all[rows, last_frame]

    # Mask as the reference does: add LOG_0 for an invalid frame, and again for an invalid state.
    frame_invalid = (frame_pos.unsqueeze(0) >= logit_len.unsqueeze(1)).to(dtype).unsqueeze(2)
    state_invalid = (state_pos.unsqueeze(0) >= label_len.unsqueeze(1)).to(dtype).unsqueeze(1)
    gamma = gamma + LOG_0 * frame_invalid
    delta = delta + LOG_0 * frame_invalid
    gamma = gamma + LOG_0 * state_invalid
    delta = delta + LOG_0 * state_invalid
    return gamma, delta, log_seq_prob_final


class _CTCLossFunction(torch.autograd.Function):
    """Reference CTC loss with the analytic gradient w.r.t. the logits.

    Autograd through the recursion would be slow (a graph node per frame) and would differentiate the
    reference's ``max`` merge; the analytic gradient ``softmax - state posteriors per class`` is exact and
    cheap, so it is computed in the forward pass and only rescaled in the backward pass.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        labels: torch.Tensor,
        labels_len: torch.Tensor,
        logits: torch.Tensor,
        logits_len: torch.Tensor,
        exact: bool,
    ) -> torch.Tensor:
        batch, frames, num_classes = logits.shape
        softmax = torch.softmax(logits, dim=2)
        log_label_prob = calculate_log_label_prob(labels, softmax)
        table = label_trans_table(labels, labels_len, dtype=logits.dtype)
        alpha, beta, log_seq_prob = calculate_alpha_beta(
            table, log_label_prob, labels_len, logits_len, exact=exact
        )
        # The reference's validity rule compares frames against the blank-augmented length (not the
        # tighter L + repeats bound); kept for parity.
        valid = logits_len >= labels_len
        loss = torch.where(valid, -log_seq_prob, torch.zeros_like(log_seq_prob))

        # State posteriors: alpha + beta normalised over states at each frame, folded onto the classes.
        log_post = alpha + beta
        log_post = log_post - torch.logsumexp(log_post, dim=2, keepdim=True)
        class_post = states_to_classes(log_post.exp(), labels.long().unsqueeze(1), num_classes)
        grad = softmax - class_post
        frame_valid = torch.arange(frames, device=logits.device).unsqueeze(0) < logits_len.unsqueeze(1)
        keep = (frame_valid & valid.unsqueeze(1)).unsqueeze(2)
        # where, not multiply: filler frames must contribute exactly 0 whatever their values.
        grad = torch.where(keep, grad, torch.zeros_like(grad))
        # logits is kept only to tie the gradient to it when a second derivative is asked for.
        ctx.save_for_backward(grad, logits)
        return loss

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[None, None, torch.Tensor, None, None]:
        # Exact to first order only: a double backward raises (asr_ctc.autograd_guard) instead of silently
        # treating the saved gradient as a constant.
        grad, logits = ctx.saved_tensors
        grad = grad * grad_output.to(grad.dtype).view(-1, 1, 1)
        grad = first_order_only(grad, logits, "asr_ctc.seq_loss_util.ctc_loss", "logits")
        return None, None, grad, None, None


def ctc_loss(
    labels: torch.Tensor,
    labels_len: torch.Tensor,
    logits: torch.Tensor,
    logits_len: torch.Tensor,
    *,
    exact: bool = False,
) -> torch.Tensor:
    """Per-sequence CTC loss of the reference, differentiable w.r.t. ``logits``.

    A sequence whose number of frames is smaller than its blank-augmented label length is treated as
    invalid (the reference's rule): its loss and gradient are 0.

    Args:
        labels: (B, S) int, blank-augmented labels (see :func:`to_blank_augmented_labels`), in [0, C).
        labels_len: (B,) int, blank-augmented lengths, in [1, S]; columns past ``max(labels_len)`` are
            ignored.
        logits: (B, T, C) float32 or float64, unnormalised scores (softmax is taken over C).
        logits_len: (B,) int, number of valid frames, in [1, T].
        exact: ``False`` reproduces the reference, which merges the two final states with ``max`` and
            so over-estimates the loss; ``True`` gives the exact negative log-likelihood. The gradient is
            the exact CTC gradient in both modes.

    Returns:
        (B,) dtype of ``logits``: the loss of each sequence (``-log p(labels | logits)`` with ``exact``).
    """
    _check_tensor("labels", labels, 2, "int")
    _check_tensor("labels_len", labels_len, 1, "int")
    _check_tensor("logits", logits, 3, "float")
    _check_tensor("logits_len", logits_len, 1, "int")
    if logits.shape[0] == 0:
        raise ValueError("logits must have a non-empty batch")
    _check_batch(logits.shape[0], labels=labels, labels_len=labels_len, logits_len=logits_len)
    _check_lengths("labels_len", labels_len, 1, labels.shape[1], "the width of labels")
    _check_lengths("logits_len", logits_len, 1, logits.shape[1], "the frame axis of logits")
    num_classes = logits.shape[2]
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (the class axis of logits), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    device = logits.device
    labels_len = labels_len.long().to(device)
    logits_len = logits_len.long().to(device)
    # The transition table spans max(labels_len) states; drop extra padding columns so every state
    # tensor agrees with it.
    labels = labels[:, : int(labels_len.max())].long().to(device)
    return _CTCLossFunction.apply(labels, labels_len, logits, logits_len, bool(exact))


_REDUCTIONS = ("none", "mean", "sum")


def _as_lengths(name: str, value: object, batch: int) -> torch.Tensor:
    lengths = torch.as_tensor(value)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {lengths.dtype}")
    # A 0-d tensor or an int stands for a batch of one, as in F.ctc_loss.
    if lengths.dim() > 1 or lengths.numel() != batch:
        shape = tuple(lengths.shape)
        raise ValueError(f"{name} must have shape ({batch},) (the batch of log_probs), got {shape}")
    return lengths.reshape(-1).long()


def ctc_loss_like_torch(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor | Sequence[int],
    target_lengths: torch.Tensor | Sequence[int],
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> torch.Tensor:
    """The port's exact loss (:func:`ctc_loss` with ``exact=True``) with the calling convention of
    :func:`torch.nn.functional.ctc_loss` (its defaults included), so that it can stand in for it (the
    trainer's ``reference`` loss, the benchmark).

    The port takes blank-augmented labels and (B, T, C) logits, to which it applies a softmax: the
    log-probabilities are passed as those logits (``softmax(log_softmax(x)) = softmax(x)``), which gives
    torch's values and torch's gradient (``exp(log_probs) - posteriors``) for normalised log-probabilities.

    Differences from torch, all the reference's: a sequence with fewer frames than its ``2L + 1`` states
    (``input_lengths[b] < 2 * target_lengths[b] + 1``) gets loss 0 and gradient 0, feasible or not (torch:
    a finite loss when ``input_lengths[b] >= L`` + repeats, else ``inf``). So the loss is never ``inf`` and
    ``zero_infinity`` changes nothing; it is accepted for the calling convention. Only the padded targets
    form and (T, B, C) input are supported.

    Args:
        log_probs: (T, B, C) float32 or float64, per-frame class log-probabilities.
        targets: (B, W) int, padded target ids in ``[0, C)``, not ``blank`` within each target's length;
            entries past it are ignored (any value, e.g. -100 padding).
        input_lengths: (B,) int tensor or sequence of ints, in ``[1, T]`` (0-d or int for B = 1).
        target_lengths: (B,) int tensor or sequence of ints, in ``[0, W]`` (0-d or int for B = 1).
        blank: the blank class id, in ``[0, C)``.
        reduction: ``"none"``: (B,) losses; ``"sum"``: their sum; ``"mean"``: each loss divided by its
            target length clamped to ``>= 1``, averaged over the batch (torch's definitions).
        zero_infinity: accepted and ignored (no loss is infinite, see above).

    Returns:
        (B,) for ``"none"``, else 0-d; dtype of ``log_probs``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _check_tensor("log_probs", log_probs, 3, "float")
    _check_tensor("targets", targets, 2, "int")
    frames, batch, num_classes = log_probs.shape
    _check_batch(batch, targets=targets)
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < num_classes:
        raise ValueError(f"blank must be an int in [0, {num_classes}) (C = {num_classes}), got {blank!r}")
    device = log_probs.device
    input_lengths = _as_lengths("input_lengths", input_lengths, batch).to(device)
    target_lengths = _as_lengths("target_lengths", target_lengths, batch).to(device)
    _check_lengths("input_lengths", input_lengths, 1, frames, "T, the frames of log_probs")
    _check_lengths("target_lengths", target_lengths, 0, targets.shape[1], "the width of targets")
    targets = targets.long().to(device)
    live = targets[torch.arange(targets.shape[1], device=device) < target_lengths.unsqueeze(1)]
    if bool(((live < 0) | (live >= num_classes) | (live == blank)).any()):
        raise ValueError(
            f"targets must be class ids in [0, {num_classes}) other than blank {blank} within target_lengths"
        )
    # interleave_blanks overwrites the entries past each length, so their values never reach the port.
    extended, extended_lengths = interleave_blanks(targets, target_lengths, blank)
    loss = ctc_loss(extended, extended_lengths, log_probs.transpose(0, 1), input_lengths, exact=True)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return (loss / target_lengths.clamp_min(1).to(loss.dtype)).mean()
    return loss
