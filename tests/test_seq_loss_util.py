"""Tests of the PyTorch port of the reference CTC loss (``asr_ctc.seq_loss_util``).

The reference vectors come from the published TensorFlow implementation and its unit test; the exact mode
is checked against ``torch.nn.functional.ctc_loss``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asr_ctc.seq_loss_util import (
    LOG_0,
    calculate_alpha_beta,
    calculate_log_label_prob,
    ctc_loss,
    ctc_loss_like_torch,
    label_trans_table,
    to_blank_augmented_labels,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "reference_vectors.json").read_text())
# Masked alpha/beta entries hold LOG_0-based filler whose exact value depends on float rounding.
FILLER_CLAMP = -700.0


def _f64(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _augmented_reference_labels() -> dict[str, torch.Tensor]:
    case = VECTORS["ctc_loss"]
    raw = {"SEQ_DATA": torch.tensor(case["labels"]), "SEQ_LEN": torch.tensor(case["labels_len"])}
    return to_blank_augmented_labels(raw, blank_index=0, boundary_blanks=True)


def test_log_0_is_the_reference_float32_value() -> None:
    assert LOG_0 == VECTORS["LOG_0"]
    assert LOG_0 == torch.tensor(LOG_0, dtype=torch.float32).item()


# --- reference vectors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    VECTORS["to_blank_augmented_labels"],
    ids=lambda c: f"blank{c['blank_index']}-boundary{c['boundary_blanks']}",
)
def test_to_blank_augmented_labels(case: dict) -> None:
    inputs = {key: torch.tensor(value) for key, value in case["inputs"].items()}
    out = to_blank_augmented_labels(
        inputs, blank_index=case["blank_index"], boundary_blanks=case["boundary_blanks"]
    )
    assert set(out) == {"SEQ_DATA", "SEQ_LEN"}
    assert out["SEQ_DATA"].tolist() == case["expected"]["SEQ_DATA"]
    assert out["SEQ_LEN"].tolist() == case["expected"]["SEQ_LEN"]


def test_label_trans_table() -> None:
    case = VECTORS["label_trans_table"]
    labels, labels_len = torch.tensor(case["labels"]), torch.tensor(case["labels_len"])
    expected = _f64(case["expected"])
    table32 = label_trans_table(labels, labels_len)
    assert table32.dtype == torch.float32
    torch.testing.assert_close(table32.double(), expected, rtol=0, atol=1e-4)
    # In float64 the entries are exactly 0.0 and the float32 LOG_0.
    assert torch.equal(label_trans_table(labels, labels_len, dtype=torch.float64), expected)


def test_label_trans_table_uses_only_max_len_columns() -> None:
    labels = torch.tensor([[0, 1, 0, 1, 0, 0, 0]])
    table = label_trans_table(labels, torch.tensor([5]))
    assert table.shape == (1, 5, 5)
    # 1 -> 3 would skip the blank between two equal labels; 2 -> 4 is blank -> blank.
    assert table[0, 1, 3] == LOG_0 and table[0, 2, 4] == LOG_0
    assert table[0, 0, 1] == 0.0 and table[0, 3, 4] == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calculate_log_label_prob(dtype: torch.dtype) -> None:
    case = VECTORS["calculate_log_label_prob"]
    softmax = torch.softmax(torch.tensor(case["logits"], dtype=dtype), dim=2)
    out = calculate_log_label_prob(torch.tensor(case["labels"]), softmax)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), _f64(case["expected"]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calculate_alpha_beta(dtype: torch.dtype) -> None:
    case = VECTORS["calculate_alpha_beta"]
    alpha, beta, log_seq_prob = calculate_alpha_beta(
        torch.tensor(case["label_trans_table"], dtype=dtype),
        torch.tensor(case["log_label_prob"], dtype=dtype),
        torch.tensor(case["labels_len"]),
        torch.tensor(case["logits_len"]),
    )
    assert alpha.dtype == beta.dtype == log_seq_prob.dtype == dtype
    for name, got in (("alpha", alpha), ("beta", beta)):
        expected = _f64(case[f"expected_{name}"]).clamp_min(FILLER_CLAMP)
        torch.testing.assert_close(
            got.double().clamp_min(FILLER_CLAMP), expected, rtol=0, atol=1e-4, msg=name
        )
    torch.testing.assert_close(
        log_seq_prob.double(), _f64(case["expected_log_seq_prob_final"]), rtol=0, atol=1e-4
    )


def test_beta_is_zero_in_the_two_final_states_at_the_last_frame() -> None:
    case = VECTORS["calculate_alpha_beta"]
    labels_len, logits_len = case["labels_len"], case["logits_len"]
    _, beta, _ = calculate_alpha_beta(
        _f64(case["label_trans_table"]),
        _f64(case["log_label_prob"]),
        torch.tensor(labels_len),
        torch.tensor(logits_len),
    )
    for b, (num_states, frames) in enumerate(zip(labels_len, logits_len, strict=True)):
        last = beta[b, frames - 1]
        assert last[num_states - 1] == 0.0 and last[num_states - 2] == 0.0
        assert (last[: num_states - 2] < FILLER_CLAMP).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact", [False, True])
def test_ctc_loss_reference_values_and_gradient(dtype: torch.dtype, exact: bool) -> None:
    case = VECTORS["ctc_loss"]
    labels = _augmented_reference_labels()
    logits = torch.tensor(case["logits"], dtype=dtype, requires_grad=True)
    loss = ctc_loss(
        labels["SEQ_DATA"], labels["SEQ_LEN"], logits, torch.tensor(case["logits_len"]), exact=exact
    )
    assert loss.shape == (2,) and loss.dtype == dtype
    expected = case["expected_loss_exact"] if exact else case["expected_loss_reference"]
    torch.testing.assert_close(loss.double(), _f64(expected), rtol=0, atol=1e-5)
    loss.sum().backward()
    # The gradient is the exact CTC gradient whichever way the final states are merged.
    torch.testing.assert_close(
        logits.grad.double(), _f64(case["expected_gradient"]), rtol=0, atol=case["gradient_atol"]
    )


def test_reference_quirk_overestimates_the_loss() -> None:
    case = VECTORS["ctc_loss"]
    labels = _augmented_reference_labels()
    logits, logits_len = _f64(case["logits"]), torch.tensor(case["logits_len"])
    reference = ctc_loss(labels["SEQ_DATA"], labels["SEQ_LEN"], logits, logits_len)
    exact = ctc_loss(labels["SEQ_DATA"], labels["SEQ_LEN"], logits, logits_len, exact=True)
    # max(a, b) <= logaddexp(a, b), so the reference loss is strictly larger here (both finals reachable).
    assert (reference > exact + 0.1).all()


def test_gradient_scales_with_upstream_gradient() -> None:
    case = VECTORS["ctc_loss"]
    labels = _augmented_reference_labels()
    logits = _f64(case["logits"]).requires_grad_()
    loss = ctc_loss(labels["SEQ_DATA"], labels["SEQ_LEN"], logits, torch.tensor(case["logits_len"]))
    weights = _f64([2.0, -0.5])
    (loss * weights).sum().backward()
    expected = _f64(case["expected_gradient"]) * weights.view(-1, 1, 1)
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=2e-5)


def test_invalid_sequence_has_zero_loss_and_gradient() -> None:
    # 3 labels need 7 augmented states; 6 frames fail the reference's rule logits_len >= labels_len.
    labels = to_blank_augmented_labels(
        {"SEQ_DATA": torch.tensor([[1, 2, 3], [1, 2, 0]]), "SEQ_LEN": torch.tensor([3, 2])}
    )
    logits = torch.randn(2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logits.requires_grad_()
    loss = ctc_loss(labels["SEQ_DATA"], labels["SEQ_LEN"], logits, torch.tensor([6, 6]))
    loss.sum().backward()
    assert loss[0] == 0.0 and loss[1] > 0.0
    assert (logits.grad[0] == 0.0).all() and (logits.grad[1] != 0.0).any()


# --- exact mode against torch.nn.functional.ctc_loss --------------------------------------------------


def _random_case(seed: int, batch: int, frames: int, classes: int, max_labels: int) -> tuple:
    """Random raw labels (with repeats) and lengths such that frames >= 2L + 1 for every sequence."""
    gen = torch.Generator().manual_seed(seed)
    label_len = torch.randint(0, max_labels + 1, (batch,), generator=gen)
    label_len[0] = max_labels  # keep the padded width equal to max_labels
    # Raw labels are in [0, classes - 1); few classes make repeated neighbours likely.
    raw = torch.randint(0, classes - 1, (batch, max_labels), generator=gen)
    if max_labels >= 2:
        raw[0, 1] = raw[0, 0]  # at least one guaranteed repeat
    positions = torch.arange(max_labels).unsqueeze(0)
    raw = torch.where(positions < label_len.unsqueeze(1), raw, torch.zeros_like(raw))
    min_frames = 2 * label_len + 1
    logit_len = min_frames + (torch.rand(batch, generator=gen) * (frames - min_frames + 1)).long()
    logit_len[-1] = frames  # one sequence uses every frame
    logits = 2.0 * torch.randn(batch, frames, classes, generator=gen, dtype=torch.float64)
    return raw, label_len, logits, logit_len


@pytest.mark.parametrize(
    ("seed", "batch", "frames", "classes", "max_labels"),
    [
        (0, 1, 5, 3, 2),
        (1, 3, 12, 2, 4),
        (2, 4, 20, 6, 5),
        (3, 2, 9, 4, 4),
        (4, 5, 16, 3, 6),
        (5, 3, 30, 10, 8),
    ],
)
def test_exact_matches_torch_ctc_loss(
    seed: int, batch: int, frames: int, classes: int, max_labels: int
) -> None:
    raw, label_len, logits, logit_len = _random_case(seed, batch, frames, classes, max_labels)
    assert (logit_len >= 2 * label_len + 1).all()

    aug = to_blank_augmented_labels({"SEQ_DATA": raw, "SEQ_LEN": label_len})
    ours_logits = logits.clone().requires_grad_()
    ours = ctc_loss(aug["SEQ_DATA"], aug["SEQ_LEN"], ours_logits, logit_len, exact=True)
    ours.sum().backward()

    torch_logits = logits.clone().requires_grad_()
    log_probs = torch.log_softmax(torch_logits, dim=2).transpose(0, 1)
    expected = torch.nn.functional.ctc_loss(
        log_probs, raw + 1, logit_len, label_len, blank=0, reduction="none", zero_infinity=False
    )
    expected.sum().backward()

    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ours_logits.grad, torch_logits.grad, rtol=1e-7, atol=1e-7)


def test_reference_mode_has_the_exact_gradient_on_random_input() -> None:
    raw, label_len, logits, logit_len = _random_case(7, 3, 14, 4, 4)
    aug = to_blank_augmented_labels({"SEQ_DATA": raw, "SEQ_LEN": label_len})
    grads = []
    for exact in (False, True):
        x = logits.clone().requires_grad_()
        ctc_loss(aug["SEQ_DATA"], aug["SEQ_LEN"], x, logit_len, exact=exact).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_ctc_loss_ignores_extra_label_padding() -> None:
    case = VECTORS["ctc_loss"]
    labels = _augmented_reference_labels()
    padded = torch.cat((labels["SEQ_DATA"], torch.zeros(2, 3, dtype=torch.long)), dim=1)
    logits, logits_len = _f64(case["logits"]), torch.tensor(case["logits_len"])
    torch.testing.assert_close(
        ctc_loss(padded, labels["SEQ_LEN"], logits, logits_len),
        ctc_loss(labels["SEQ_DATA"], labels["SEQ_LEN"], logits, logits_len),
    )


# --- ctc_loss_like_torch: the port behind F.ctc_loss's calling convention ------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("blank", [0, 2, 5])
def test_ctc_loss_like_torch_matches_f_ctc_loss(dtype: torch.dtype, blank: int) -> None:
    """Values and gradients (w.r.t. the log-probs and through log_softmax) equal F.ctc_loss's for every
    reduction, on ragged, padded (with -100, as the trainer's labels) targets with repeats."""
    gen = torch.Generator().manual_seed(11 + blank)
    frames, batch, classes = 17, 4, 6
    ids = torch.randint(0, classes - 1, (batch, 5), generator=gen)
    targets = ids + (ids >= blank).long()  # skip the blank id
    targets[0, 1] = targets[0, 0]  # a repeat
    target_lengths = torch.tensor([5, 3, 0, 4])
    input_lengths = torch.tensor([17, 11, 4, 9])  # each >= 2L + 1 (the reference's rule, see below)
    past = torch.arange(5) >= target_lengths.unsqueeze(1)
    padded = targets.masked_fill(past, -100)
    logits = 2 * torch.randn(frames, batch, classes, generator=gen, dtype=torch.float64)
    for reduction in ("none", "mean", "sum"):
        weights = torch.linspace(0.5, 1.5, batch, dtype=dtype) if reduction == "none" else 1.0
        grads, losses = [], []
        for fn, tgt in ((ctc_loss_like_torch, padded), (torch.nn.functional.ctc_loss, targets)):
            x = logits.to(dtype).requires_grad_()
            lp = x.log_softmax(-1)
            lp.retain_grad()
            loss = fn(lp, tgt, input_lengths, target_lengths, blank=blank, reduction=reduction)
            (loss * weights).sum().backward()
            losses.append(loss)
            grads.append((lp.grad, x.grad))
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
        assert losses[0].shape == losses[1].shape and losses[0].dtype == dtype
        torch.testing.assert_close(losses[0], losses[1], **tol)
        torch.testing.assert_close(grads[0][0], grads[1][0], **tol)  # w.r.t. log_probs
        torch.testing.assert_close(grads[0][1], grads[1][1], **tol)  # through log_softmax
    # The default reduction is torch's ("mean"), and 0-d lengths stand for a batch of one.
    lp = logits[:, :1].log_softmax(-1)
    torch.testing.assert_close(
        ctc_loss_like_torch(lp, targets[:1], torch.tensor(17), torch.tensor(5), blank=blank),
        torch.nn.functional.ctc_loss(lp, targets[:1], torch.tensor(17), torch.tensor(5), blank=blank),
    )


def test_ctc_loss_like_torch_keeps_the_reference_validity_rule() -> None:
    """Fewer frames than 2L + 1 states: loss and gradient 0 (the reference), where torch gives a finite loss
    (enough frames for L + repeats) or inf (not enough); zero_infinity changes nothing."""
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 3], [1, 1, 1], [1, 2, 0]])
    args = (targets, torch.tensor([6, 4, 6]), torch.tensor([3, 3, 2]))
    torch_loss = torch.nn.functional.ctc_loss(logits.log_softmax(-1), *args, reduction="none")
    assert torch.isfinite(torch_loss[0]) and torch_loss[1] == torch.inf
    for zero_infinity in (False, True):
        x = logits.clone().requires_grad_()
        loss = ctc_loss_like_torch(x.log_softmax(-1), *args, reduction="none", zero_infinity=zero_infinity)
        loss.sum().backward()
        assert (loss[:2] == 0).all() and (x.grad[:, :2] == 0).all()
        torch.testing.assert_close(loss[2], torch_loss[2])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"log_probs": torch.zeros(6, 5)}, "log_probs must have rank 3"),
        ({"targets": torch.tensor([1, 2, 3, 1])}, "targets must have rank 2"),
        ({"targets": torch.tensor([[1, 0], [3, 1]])}, "targets must be class ids"),  # blank within length
        ({"targets": torch.tensor([[1, 5], [3, 1]])}, "targets must be class ids"),
        ({"input_lengths": torch.tensor([6, 0])}, r"input_lengths must lie in \[1, 6\]"),
        ({"input_lengths": torch.tensor(6)}, r"input_lengths must have shape \(2,\)"),
        ({"input_lengths": torch.tensor([6.0, 6.0])}, "input_lengths must hold integers"),
        ({"target_lengths": [2, 3]}, r"target_lengths must lie in \[0, 2\]"),
        ({"blank": 5}, r"blank must be an int in \[0, 5\)"),
        ({"reduction": "avg"}, "reduction must be one of"),
    ],
)
def test_ctc_loss_like_torch_rejects_bad_input(change: dict, match: str) -> None:
    args = {
        "log_probs": torch.randn(6, 2, 5).log_softmax(-1),
        "targets": torch.tensor([[1, 2], [3, -100]]),
        "input_lengths": [6, 5],
        "target_lengths": torch.tensor([2, 1]),
    }
    ctc_loss_like_torch(**args)  # the good arguments pass
    with pytest.raises(ValueError, match=match):
        ctc_loss_like_torch(**{**args, **change})


# --- input validation -----------------------------------------------------------------------------------


def _good_ctc_args() -> dict:
    labels = _augmented_reference_labels()
    case = VECTORS["ctc_loss"]
    return {
        "labels": labels["SEQ_DATA"],
        "labels_len": labels["SEQ_LEN"],
        "logits": _f64(case["logits"]),
        "logits_len": torch.tensor(case["logits_len"]),
    }


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("labels", torch.zeros(2, 7, 1, dtype=torch.long), "labels must have rank 2"),
        ("labels", torch.zeros(2, 7), "labels must be an integer tensor"),
        ("labels", torch.full((2, 7), 5), r"labels must lie in \[0, 5\)"),
        ("labels_len", torch.tensor([7, 5, 3]), "labels_len has batch size 3"),
        ("labels_len", torch.tensor([8, 5]), r"labels_len must lie in \[1, 7\]"),
        ("labels_len", torch.tensor([7, 0]), r"labels_len must lie in \[1, 7\]"),
        ("logits", torch.zeros(2, 7), "logits must have rank 3"),
        ("logits", torch.zeros(2, 7, 5, dtype=torch.float16), "logits must be float32 or float64"),
        ("logits", torch.zeros(3, 7, 5, dtype=torch.float64), "has batch size 2, expected 3"),
        ("logits_len", torch.tensor([8, 5]), r"logits_len must lie in \[1, 7\]"),
        ("logits_len", torch.tensor([[7, 5]]), "logits_len must have rank 1"),
        ("logits_len", [7, 5], "logits_len must be a torch.Tensor"),
    ],
)
def test_ctc_loss_rejects_bad_input(name: str, bad: object, match: str) -> None:
    args = _good_ctc_args()
    args[name] = bad
    with pytest.raises(ValueError, match=match):
        ctc_loss(**args)


def test_to_blank_augmented_labels_rejects_bad_input() -> None:
    data, lengths = torch.tensor([[1, 2]]), torch.tensor([2])
    with pytest.raises(ValueError, match="'SEQ_DATA' and 'SEQ_LEN'"):
        to_blank_augmented_labels({"SEQ_DATA": data})
    with pytest.raises(ValueError, match=r"inputs\['SEQ_LEN'\] must lie in"):
        to_blank_augmented_labels({"SEQ_DATA": data, "SEQ_LEN": torch.tensor([3])})
    with pytest.raises(ValueError, match=r"inputs\['SEQ_LEN'\] has batch size 2"):
        to_blank_augmented_labels({"SEQ_DATA": data, "SEQ_LEN": torch.tensor([2, 1])})
    with pytest.raises(ValueError, match="blank_index"):
        to_blank_augmented_labels({"SEQ_DATA": data, "SEQ_LEN": lengths}, blank_index=-1)


def test_label_trans_table_and_log_label_prob_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"labels_len must lie in \[0, 3\]"):
        label_trans_table(torch.zeros(1, 3, dtype=torch.long), torch.tensor([4]))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        label_trans_table(torch.zeros(1, 3, dtype=torch.long), torch.tensor([3]), dtype=torch.int64)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        calculate_log_label_prob(torch.tensor([[0, 3]]), torch.full((1, 4, 3), 1 / 3))
    with pytest.raises(ValueError, match="labels has batch size 2"):
        calculate_log_label_prob(torch.zeros(2, 3, dtype=torch.long), torch.full((1, 4, 3), 1 / 3))


def test_calculate_alpha_beta_rejects_bad_input() -> None:
    table = label_trans_table(torch.tensor([[0, 1, 0]]), torch.tensor([3]))
    log_prob = torch.full((1, 4, 3), -1.0)
    good = (table, log_prob, torch.tensor([3]), torch.tensor([4]))
    calculate_alpha_beta(*good)  # sanity: the good arguments pass
    with pytest.raises(ValueError, match="label_trans_table must have shape"):
        calculate_alpha_beta(table[:, :2, :2], *good[1:])
    with pytest.raises(ValueError, match=r"label_len must lie in \[1, 3\]"):
        calculate_alpha_beta(table, log_prob, torch.tensor([0]), good[3])
    with pytest.raises(ValueError, match=r"logit_len must lie in \[1, 4\]"):
        calculate_alpha_beta(table, log_prob, good[2], torch.tensor([5]))
    with pytest.raises(ValueError, match="log_label_prob must have rank 3"):
        calculate_alpha_beta(table, log_prob[0], *good[2:])


def test_second_derivatives_raise_and_the_plain_ops_route_is_exact():
    """The port's backward is first-order only: a Hessian-vector product raises a clear error. The route
    its message names (calculate_alpha_beta with exact=True on plain ops) gives the true Hessian-vector
    product, equal to the independent plain recursion of tests/helpers.py."""
    from helpers import plain_ctc_nll

    from asr_ctc.autograd_guard import SecondDerivativeError

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 8, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, T, C)
    targets, target_lengths = torch.tensor([[1, 2, 2], [3, 1, 0]]), torch.tensor([3, 2])
    frames = torch.tensor([8, 6])  # at least the 2L + 1 states: the port's validity rule
    v = torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    aug = to_blank_augmented_labels({"SEQ_DATA": targets - 1, "SEQ_LEN": target_lengths})  # ids 1.. keep
    labels, labels_len = aug["SEQ_DATA"], aug["SEQ_LEN"]

    loss = ctc_loss(labels, labels_len, logits, frames, exact=True).sum()
    (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
    with pytest.raises(SecondDerivativeError, match=r"seq_loss_util\.ctc_loss: second derivatives .* logits"):
        torch.autograd.grad((grad * v).sum(), logits)

    def reference(x):
        lp = x.log_softmax(-1)
        return sum(
            plain_ctc_nll(lp[b, : int(frames[b])], targets[b, : int(target_lengths[b])].tolist())
            for b in range(2)
        )

    def plain_ops_route(x):
        table = label_trans_table(labels, labels_len, dtype=x.dtype)
        log_label_prob = calculate_log_label_prob(labels, x.softmax(-1))
        _, _, log_p = calculate_alpha_beta(table, log_label_prob, labels_len, frames, exact=True)
        return -log_p.sum()

    hvps = []
    for fn in (reference, plain_ops_route):
        (g,) = torch.autograd.grad(fn(logits), logits, create_graph=True)
        torch.testing.assert_close(g, grad, rtol=1e-8, atol=1e-10)
        hvps.append(torch.autograd.grad((g * v).sum(), logits)[0])
    torch.testing.assert_close(hvps[1], hvps[0], rtol=1e-8, atol=1e-10)
