"""Tests of the production CTC loss (:mod:`asr_ctc.ctc`) against torch's native loss and a brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from asr_ctc.ctc import CTCLoss, ctc_loss

REDUCTIONS = ("none", "mean", "sum")
# Losses are compared with torch in the same dtype: both round their log-space recursions to ~1e-7 (f32) or
# ~1e-15 (f64) relative. Gradients are compared with torch's float64 gradient: in float32 the posteriors
# come from exp(alpha + beta - log p) of terms of size |log p|, so both implementations carry an absolute
# error of ~|log p| * 1e-7 there (torch's ~6x ours at T = 301, see test_float32_gradient_error).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}
GRAD_TOL = {torch.float32: dict(rtol=1e-3, atol=1e-4), torch.float64: dict(rtol=1e-8, atol=1e-10)}


def random_targets(gen, batch, max_len, n_classes, blank, repeats=False):
    """(B, max_len) ids in [0, C) without ``blank``; with ``repeats`` many neighbours are equal."""
    ids = torch.randint(0, n_classes - 1, (batch, max(max_len, 1)), generator=gen)
    ids = ids + (ids >= blank).long()  # skip the blank id
    if repeats and ids.shape[1] > 1:
        same = torch.rand(ids.shape, generator=gen) < 0.5
        same[:, 0] = False
        for j in range(1, ids.shape[1]):
            ids[:, j] = torch.where(same[:, j], ids[:, j - 1], ids[:, j])
    return ids


def compare(log_probs_raw, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, dtype):
    """Loss and gradient (through log_softmax) of ours vs torch; returns the two losses."""
    args = (targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
    x = log_probs_raw.to(dtype).clone().requires_grad_(True)
    ours = ctc_loss(x.log_softmax(-1), *args)
    ref = F.ctc_loss(x.detach().log_softmax(-1), *args)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, equal_nan=True, **TOL[dtype])
    # Weighted sum so that every row's gradient matters; NaN where torch's is NaN (infinite losses).
    weights = torch.linspace(0.5, 1.5, ours.numel(), dtype=torch.float64).view(ours.shape)
    (grad,) = torch.autograd.grad((ours * weights.to(dtype)).sum(), x)
    x64 = log_probs_raw.double().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((F.ctc_loss(x64.log_softmax(-1), *args) * weights).sum(), x64)
    torch.testing.assert_close(grad.double(), expected, equal_nan=True, **GRAD_TOL[dtype])
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(12))
def test_fuzz_against_torch(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 6, (), generator=gen))
    n_classes = int(torch.randint(2, 9, (), generator=gen))
    frames = int(torch.randint(1, 40, (), generator=gen))
    blank = (0, n_classes - 1, n_classes // 2)[seed % 3]
    max_len = int(torch.randint(0, 15, (), generator=gen))
    targets = random_targets(gen, batch, max_len, n_classes, blank, repeats=seed % 2 == 0)
    input_lengths = torch.randint(0, frames + 1, (batch,), generator=gen)
    input_lengths[0] = frames  # at least one full-length sequence
    # Lengths up to max_len include infeasible targets (too long for their frames) and empty ones.
    target_lengths = torch.randint(0, max_len + 1, (batch,), generator=gen)
    logits = torch.randn(frames, batch, n_classes, generator=gen, dtype=torch.float64) * 2
    for reduction, zero_infinity in itertools.product(REDUCTIONS, (False, True)):
        compare(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, dtype)


@pytest.mark.parametrize("frames", [1, 2, 3, 64, 65, 150, 301])
def test_lengths_blocks_and_parity(frames):
    """Odd/even T, T below and above a block of steps, ragged inputs, feasible and infeasible targets."""
    gen = torch.Generator().manual_seed(frames)
    batch, n_classes = 4, 6
    max_len = max(1, min(frames // 2, 40))
    targets = random_targets(gen, batch, max_len, n_classes, 0, repeats=True)
    input_lengths = torch.tensor([frames, max(frames - 1, 0), frames // 2, frames // 3 + 1])
    target_lengths = torch.tensor([max_len, max_len // 2, 0, max_len])
    logits = torch.randn(frames, batch, n_classes, generator=gen, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        compare(logits, targets, input_lengths, target_lengths, 0, "none", False, dtype)


def test_float32_gradient_error():
    """float32 posteriors: ours within 4e-5 of the float64 gradient (torch's float32 is off by ~1.5e-4)."""
    gen = torch.Generator().manual_seed(301)
    frames, batch, n_classes = 301, 4, 6
    targets = random_targets(gen, batch, 40, n_classes, 0, repeats=True)
    args = (targets, torch.tensor([301, 300, 150, 101]), torch.tensor([40, 20, 0, 40]))

    def grad(fn, dtype):
        x = logits.to(dtype).requires_grad_(True)
        return torch.autograd.grad(fn(x.log_softmax(-1), *args, reduction="sum"), x)[0].double()

    logits = torch.randn(frames, batch, n_classes, generator=gen, dtype=torch.float64)
    expected = grad(F.ctc_loss, torch.float64)
    assert (grad(ctc_loss, torch.float32) - expected).abs().max() < 4e-5


def test_concatenated_targets_match_padded():
    gen = torch.Generator().manual_seed(1)
    frames, batch, n_classes = 30, 4, 7
    target_lengths = torch.tensor([5, 0, 9, 3])
    padded = random_targets(gen, batch, 9, n_classes, 0)
    concatenated = torch.cat([padded[b, : target_lengths[b]] for b in range(batch)])
    logits = torch.randn(frames, batch, n_classes, generator=gen, dtype=torch.float64)
    lengths = torch.full((batch,), frames)
    for reduction in REDUCTIONS:
        a, _ = compare(logits, concatenated, lengths, target_lengths, 0, reduction, False, torch.float64)
        b = ctc_loss(logits.log_softmax(-1), padded, lengths, target_lengths, 0, reduction)
        torch.testing.assert_close(a.detach(), b)


def test_int_sequences_and_int32_tensors():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 3, 5, generator=gen)
    targets = random_targets(gen, 3, 4, 5, 0)
    lp = logits.log_softmax(-1)
    expected = F.ctc_loss(lp, targets, (12, 10, 12), (4, 2, 3), reduction="none")
    torch.testing.assert_close(ctc_loss(lp, targets, [12, 10, 12], (4, 2, 3), reduction="none"), expected)
    got = ctc_loss(
        lp, targets.int(), torch.tensor([12, 10, 12]).int(), torch.tensor([4, 2, 3]).int(), reduction="none"
    )
    torch.testing.assert_close(got, expected)


def test_many_classes_fold_in_backward():
    """C larger than the number of states: posteriors are kept per state and folded in the backward."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 3, 200, generator=gen, dtype=torch.float64)
    targets = random_targets(gen, 3, 6, 200, 0)
    compare(
        logits, targets, torch.tensor([50, 31, 7]), torch.tensor([6, 4, 6]), 0, "mean", False, torch.float64
    )
    compare(
        logits, targets, torch.tensor([50, 31, 7]), torch.tensor([6, 4, 6]), 0, "sum", True, torch.float32
    )


def brute_force_nll(log_probs, target, blank):
    """-log p(target) by enumerating every frame labelling (C^T of them): independent of any recursion."""
    frames, n_classes = log_probs.shape
    scores = []
    for path in itertools.product(range(n_classes), repeat=frames):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == list(target):
            scores.append(log_probs[torch.arange(frames), torch.tensor(path)].sum())
    if not scores:
        return torch.tensor(math.inf, dtype=log_probs.dtype)
    return -torch.logsumexp(torch.stack(scores), 0)


@pytest.mark.parametrize("target", [(1,), (1, 2), (2, 2), (1, 2, 1), ()])
def test_brute_force_loss_and_raw_gradient(target):
    """Loss and the gradient w.r.t. raw (unnormalised) log_probs equal those of the path enumeration."""
    gen = torch.Generator().manual_seed(len(target))
    raw = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = brute_force_nll(raw, target, blank=0)
    (expected_grad,) = torch.autograd.grad(expected, raw)
    targets = torch.tensor(target, dtype=torch.long)
    got = ctc_loss(raw, targets, 5, len(target), reduction="sum")
    (grad,) = torch.autograd.grad(got, raw)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_gradcheck_raw_log_probs():
    gen = torch.Generator().manual_seed(4)
    raw = torch.randn(7, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 2, 2], [3, 1, 0], [2, 0, 0]])
    input_lengths, target_lengths = torch.tensor([7, 5, 3]), torch.tensor([3, 2, 1])
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda lp, r=reduction: ctc_loss(lp, targets, input_lengths, target_lengths, reduction=r), (raw,)
        )
    # The same check fails for torch's own loss, whose gradient assumes log_softmax inputs.
    assert not torch.autograd.gradcheck(
        lambda lp: F.ctc_loss(lp, targets, input_lengths, target_lengths), (raw,), raise_exception=False
    )


def test_infinite_losses_and_zero_infinity():
    """No alignment: inf loss, NaN gradient on the valid frames (like torch), 0 past them; zero_infinity."""
    logits = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 1, 1], [1, 2, 3]])  # row 0 needs 5 frames (repeats)
    input_lengths, target_lengths = torch.tensor([3, 4]), torch.tensor([3, 3])
    loss = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction="none")
    assert loss[0] == math.inf and torch.isfinite(loss[1])
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad[:3, 0].isnan().all() and (grad[3, 0] == 0).all() and grad[:, 1].isfinite().all()
    loss = ctc_loss(
        logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction="none", zero_infinity=True
    )
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert loss[0] == 0 and (grad[:, 0] == 0).all() and grad[:, 1].abs().sum() > 0


def test_minus_inf_log_probs_and_nan_rows():
    gen = torch.Generator().manual_seed(5)
    lp = torch.randn(10, 3, 6, generator=gen, dtype=torch.float64)
    lp[:, :, 5] = -math.inf  # a class the model can never emit
    lp = lp.log_softmax(-1)
    targets = random_targets(gen, 3, 4, 5, 0)
    lengths, target_lengths = torch.tensor([10, 9, 10]), torch.tensor([4, 3, 2])
    expected = F.ctc_loss(lp, targets, lengths, target_lengths, reduction="none")
    torch.testing.assert_close(ctc_loss(lp, targets, lengths, target_lengths, reduction="none"), expected)
    # NaN in a valid frame poisons that sequence only; NaN past a sequence's end is ignored.
    lp = lp.clone()
    lp[2, 0, 1] = math.nan
    lp[9, 1, 2] = math.nan
    got = ctc_loss(lp, targets, lengths, target_lengths, reduction="none")
    assert got[0].isnan()
    torch.testing.assert_close(got[1:], expected[1:])


def peaked_log_probs(gen, frames, batch, n_classes, targets, target_lengths, blank):
    """What a confident model emits: a random alignment of the target gets log-prob ~0 per frame, every other
    class -50..-200."""
    logits = -50 - 150 * torch.rand(frames, batch, n_classes, generator=gen, dtype=torch.float64)
    for b in range(batch):
        length = int(target_lengths[b])
        # Split the frames into 2L+1 segments (blank, label, blank, ..., blank); labels get >= 1 frame.
        cuts = torch.sort(torch.randperm(frames - 1, generator=gen)[: 2 * length] + 1).values.tolist()
        bounds = [0, *cuts, frames]
        for seg in range(2 * length + 1):
            cls = blank if seg % 2 == 0 else int(targets[b, seg // 2])
            logits[bounds[seg] : bounds[seg + 1], b, cls] = 0.0
    return logits.log_softmax(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_peaked_log_probs(dtype):
    """Confident, trained-model-like outputs (log-probs of -50..-200), for the true and for wrong targets."""
    gen = torch.Generator().manual_seed(6)
    frames, batch, n_classes = 120, 4, 12
    target_lengths = torch.tensor([30, 20, 45, 1])
    targets = random_targets(gen, batch, 45, n_classes, 0, repeats=False)
    lp = peaked_log_probs(gen, frames, batch, n_classes, targets, target_lengths, 0)
    wrong = targets.roll(1, dims=1)
    for tgt in (targets, wrong):
        ours, ref = compare(lp, tgt, torch.full((batch,), frames), target_lengths, 0, "none", False, dtype)
        assert torch.isfinite(ours).all()
    # Against float64 torch, the float32 loss is relative-exact too (compare() used torch's float32).
    ours = ctc_loss(lp.to(dtype), wrong, torch.full((batch,), frames), target_lengths, reduction="none")
    ref = F.ctc_loss(lp, wrong, torch.full((batch,), frames), target_lengths, reduction="none")
    assert ((ours.double() - ref).abs() / ref.abs()).max() < (1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(half):
    gen = torch.Generator().manual_seed(7)
    lp = torch.randn(20, 3, 6, generator=gen).log_softmax(-1).to(half).requires_grad_(True)
    targets = random_targets(gen, 3, 5, 6, 0)
    args = (targets, torch.tensor([20, 17, 20]), torch.tensor([5, 3, 4]))
    loss = ctc_loss(lp, *args, reduction="sum")
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.dtype == half
    upcast = lp.detach().float().requires_grad_(True)
    expected = ctc_loss(upcast, *args, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, upcast)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad.to(half))


def test_unbatched():
    gen = torch.Generator().manual_seed(8)
    lp = torch.randn(15, 6, generator=gen, dtype=torch.float64).log_softmax(-1)
    target = torch.tensor([1, 3, 3, 5])
    for reduction in REDUCTIONS:
        expected = F.ctc_loss(lp, target, torch.tensor(15), torch.tensor(4), reduction=reduction)
        got = ctc_loss(lp, target, torch.tensor(15), torch.tensor(4), reduction=reduction)
        assert got.shape == expected.shape == ()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(ctc_loss(lp, target, 15, 4, reduction=reduction), expected)
        batched = ctc_loss(lp.unsqueeze(1), target.unsqueeze(0), [15], [4], reduction=reduction)
        torch.testing.assert_close(got, batched.squeeze())


def test_zero_dim_lengths_for_a_batch_of_one():
    """torch accepts 0-d lengths for (T, 1, C) as well as for unbatched (T, C) input (its own
    test_CTCLoss_critical_target_len relies on it): same values and gradients."""
    gen = torch.Generator().manual_seed(18)
    logits = torch.randn(12, 1, 6, generator=gen, dtype=torch.float64)
    cases = [
        (logits, torch.tensor([[1, 3, 3, 5]])),  # (T, 1, C), padded targets
        (logits, torch.tensor([1, 3, 3, 5])),  # (T, 1, C), concatenated targets
        (logits[:, 0], torch.tensor([1, 3, 3, 5])),  # unbatched (T, C)
    ]
    for (raw, targets), reduction in itertools.product(cases, REDUCTIONS):
        lengths = (torch.tensor(12), torch.tensor(4))
        x, y = raw.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        got = ctc_loss(x.log_softmax(-1), targets, *lengths, reduction=reduction)
        expected = F.ctc_loss(y.log_softmax(-1), targets, *lengths, reduction=reduction)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)
        got.sum().backward()
        expected.sum().backward()
        torch.testing.assert_close(x.grad, y.grad)
    # T = L, the critical target length of torch's test: exactly one alignment.
    lp = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64).log_softmax(-1)
    args = (torch.tensor([[1, 2, 3]]), torch.tensor(3), torch.tensor(3))
    torch.testing.assert_close(ctc_loss(lp, *args), F.ctc_loss(lp, *args))
    lp = torch.randn(5, 2, 4).log_softmax(-1)
    with pytest.raises(ValueError, match=r"input_lengths must have shape \(2,\)"):
        ctc_loss(lp, torch.ones(2, 1, dtype=torch.long), torch.tensor(5), [1, 1])


def masked_logits(dtype, value, uses):
    """(T, 3, 6) logits with class 5 masked (``value``) on every frame, targets and lengths. Row 1's target
    [1, 5, 2, 5] holds class 5 ``uses`` times (length 3 or 4), so each of its alignments crosses ``uses``
    masked frames; rows 0 and 2 never need class 5."""
    gen = torch.Generator().manual_seed(19)
    logits = torch.randn(12, 3, 6, generator=gen, dtype=torch.float64).to(dtype)
    logits[..., 5] = value
    targets = torch.tensor([[1, 2, 3, 4], [1, 5, 2, 5], [4, 4, 1, 0]])
    return logits, targets, torch.tensor([12, 12, 10]), torch.tensor([4, 2 + uses, 3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_classes_below_the_threshold_are_impossible(dtype):
    """A target that needs a class masked with -1e30 / finfo.min / -inf has no alignment: inf (0 with
    zero_infinity), as -inf masking gives in torch too. Rows that never need the masked class match torch,
    whatever the mask value."""
    for value, zero_infinity in itertools.product((-1e30, torch.finfo(dtype).min, -math.inf), (False, True)):
        logits, targets, lengths, target_lengths = masked_logits(dtype, value, 1)
        args = (targets, lengths, target_lengths, 0, "none", zero_infinity)
        x = logits.clone().requires_grad_(True)
        got = ctc_loss(x.log_softmax(-1), *args)
        (grad,) = torch.autograd.grad(got.sum(), x)
        assert got[1] == (0.0 if zero_infinity else math.inf)
        assert (grad[:, 1] == 0).all() if zero_infinity else grad[:, 1].isnan().all()
        # Against torch with -1e30 masking (under -inf masking torch's gradient is NaN on every row).
        y = logits.clamp_min(-1e30).requires_grad_(True)
        expected = F.ctc_loss(y.log_softmax(-1), *args)
        (expected_grad,) = torch.autograd.grad(expected[0::2].sum(), y)
        torch.testing.assert_close(got[0::2], expected[0::2], **TOL[dtype])
        torch.testing.assert_close(grad[:, 0::2], expected_grad[:, 0::2], **TOL[dtype])
        assert 0.99e30 < expected[1] < 1.01e30  # torch: the masked value comes back as a finite "loss"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_just_below_and_above_the_threshold(dtype):
    """Losses up to 1e29 are torch's: a target crossing one frame masked at -9e28 (loss ~9e28) or two at
    -4.9e28 (~9.8e28); past 1e29 (two frames at -9e28, or one at -1.1e29) there is no alignment."""
    for value, uses in ((-9e28, 1), (-4.9e28, 2), (-1e27, 2)):
        logits, targets, lengths, target_lengths = masked_logits(dtype, value, uses)
        lp = logits.log_softmax(-1).requires_grad_(True)
        got = ctc_loss(lp, targets, lengths, target_lengths, reduction="none")
        expected = F.ctc_loss(lp.detach(), targets, lengths, target_lengths, reduction="none")
        torch.testing.assert_close(got, expected, **TOL[dtype])
        assert got[1] < 1e29
        # The path scores' O(1) differences are lost next to 1e28 in any float, so row 1's posteriors are
        # not comparable with torch's; they stay finite and sum to 1 per valid frame (-grad is gamma).
        (grad,) = torch.autograd.grad(got.sum(), lp)
        assert grad.isfinite().all()
        torch.testing.assert_close(grad[:, 1].sum(-1), torch.full((12,), -1.0, dtype=dtype))
    for value, uses in ((-9e28, 2), (-1.1e29, 1)):
        logits, targets, lengths, target_lengths = masked_logits(dtype, value, uses)
        lp = logits.log_softmax(-1)
        got = ctc_loss(lp, targets, lengths, target_lengths, reduction="none")
        expected = F.ctc_loss(lp, targets, lengths, target_lengths, reduction="none")
        assert 1e29 < expected[1] < 2e29 and got[1] == math.inf
        torch.testing.assert_close(got[0::2], expected[0::2], **TOL[dtype])


def test_module_parity():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(25, 4, 7, generator=gen, dtype=torch.float64)
    targets = random_targets(gen, 4, 8, 7, 3)
    lengths, target_lengths = torch.tensor([25, 20, 25, 3]), torch.tensor([8, 5, 0, 6])
    for reduction, zero_infinity in itertools.product(REDUCTIONS, (False, True)):
        ours = CTCLoss(blank=3, reduction=reduction, zero_infinity=zero_infinity)
        ref = torch.nn.CTCLoss(blank=3, reduction=reduction, zero_infinity=zero_infinity)
        lp = logits.log_softmax(-1)
        torch.testing.assert_close(
            ours(lp, targets, lengths, target_lengths), ref(lp, targets, lengths, target_lengths)
        )
    assert "blank=3" in repr(CTCLoss(blank=3))


def test_no_grad_path_and_retain_graph():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(40, 3, 5, generator=gen, requires_grad=True)
    targets = random_targets(gen, 3, 6, 5, 0)
    args = (targets, torch.tensor([40, 33, 12]), torch.tensor([6, 6, 2]))
    with torch.no_grad():
        plain = ctc_loss(logits.log_softmax(-1), *args, reduction="none")
    loss = ctc_loss(logits.log_softmax(-1), *args, reduction="none")
    torch.testing.assert_close(plain, loss.detach())
    (first,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss.sum(), logits)
    torch.testing.assert_close(first, second)


def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(11)
    batch_first = torch.randn(3, 30, 6, generator=gen, dtype=torch.float64).log_softmax(-1)
    lp = batch_first.transpose(0, 1)  # (T, B, C) view, not contiguous
    targets = random_targets(gen, 3, 7, 6, 0)
    args = (targets, torch.tensor([30, 22, 30]), torch.tensor([7, 7, 1]))
    torch.testing.assert_close(
        ctc_loss(lp, *args, reduction="none"), F.ctc_loss(lp.contiguous(), *args, reduction="none")
    )


def test_frames_past_input_length_are_ignored():
    """Whatever lies past a sequence's input length (here huge values) changes nothing, for any sequence."""
    gen = torch.Generator().manual_seed(12)
    lp = torch.randn(40, 3, 5, generator=gen, dtype=torch.float64).log_softmax(-1)
    targets = random_targets(gen, 3, 6, 5, 0)
    # Sequences sit side by side in the lattice: a short one (0) next to a longer one (1).
    args = (targets, torch.tensor([25, 40, 12]), torch.tensor([6, 6, 3]))
    expected = F.ctc_loss(lp, *args, reduction="none")
    clean = lp.clone().requires_grad_(True)
    garbage = lp.clone()
    garbage[25:, 0] = 1e30
    garbage[12:, 2] = -1e25
    garbage.requires_grad_(True)
    loss = ctc_loss(garbage, *args, reduction="none")
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), garbage)
    (clean_grad,) = torch.autograd.grad(ctc_loss(clean, *args, reduction="sum"), clean)
    torch.testing.assert_close(grad, clean_grad)
    assert (grad[25:, 0] == 0).all() and (grad[12:, 2] == 0).all()


def test_padding_beyond_target_lengths_is_ignored():
    """Like torch, ids past a target's length (even out of range or blank) are not looked at."""
    lp = torch.randn(10, 2, 4, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 2, 0, 99], [3, -5, 0, 0]])
    got = ctc_loss(lp, targets, [10, 10], [2, 1], reduction="none")
    expected = F.ctc_loss(lp, targets.clamp(0, 3), [10, 10], [2, 1], reduction="none")
    torch.testing.assert_close(got, expected)


def good_args():
    return dict(
        log_probs=torch.randn(8, 2, 5).log_softmax(-1),
        targets=torch.tensor([[1, 2, 3], [4, 1, 0]]),
        input_lengths=torch.tensor([8, 6]),
        target_lengths=torch.tensor([3, 2]),
    )


BAD_INPUTS = [
    (dict(log_probs=torch.randn(8)), "log_probs"),
    (dict(log_probs=torch.randn(8, 2, 5, 1)), "log_probs"),
    (dict(log_probs=torch.zeros(8, 2, 5, dtype=torch.long)), "log_probs"),
    (dict(log_probs=torch.zeros(0, 2, 5)), "log_probs"),
    (dict(blank=5), "blank"),
    (dict(blank=-1), "blank"),
    (dict(reduction="avg"), "reduction"),
    (dict(targets=torch.tensor([[1, 2, 5], [4, 1, 0]])), "targets"),
    (dict(targets=torch.tensor([[1, -2, 3], [4, 1, 0]])), "targets"),
    (dict(targets=torch.tensor([[1, 0, 3], [4, 1, 0]])), "targets.*blank"),
    (dict(targets=torch.tensor([[1.0, 2.0, 3.0], [4.0, 1.0, 0.0]])), "targets"),
    (dict(targets=torch.ones(2, 3, 1, dtype=torch.long)), "targets"),
    (dict(targets=torch.tensor([[1, 2, 3]])), "targets"),
    (dict(targets=torch.tensor([1, 2, 3, 4])), "targets"),  # concatenated: sum(target_lengths) = 5
    (dict(input_lengths=torch.tensor([8, -1])), "input_lengths"),
    (dict(input_lengths=torch.tensor([9, 6])), "input_lengths"),
    (dict(input_lengths=torch.tensor([8, 6, 8])), "input_lengths"),
    (dict(input_lengths=torch.tensor([[8, 6]])), "input_lengths"),
    (dict(input_lengths=torch.tensor([8.0, 6.0])), "input_lengths"),
    (dict(input_lengths=8), "input_lengths"),
    (dict(target_lengths=torch.tensor([3, -2])), "target_lengths"),
    (dict(target_lengths=torch.tensor([4, 2])), "target_lengths"),
    (dict(target_lengths=[3]), "target_lengths"),
]


@pytest.mark.parametrize("change, match", BAD_INPUTS)
def test_bad_inputs_raise_value_error(change, match):
    args = {**good_args(), **change}
    with pytest.raises(ValueError, match=match):
        ctc_loss(**args)


def test_bad_unbatched_and_module_arguments():
    lp = torch.randn(8, 5).log_softmax(-1)
    with pytest.raises(ValueError, match="targets"):
        ctc_loss(lp, torch.tensor([[1, 2]]), 8, 2)
    with pytest.raises(ValueError, match="input_lengths"):
        ctc_loss(lp, torch.tensor([1, 2]), [8, 8], 2)
    with pytest.raises(ValueError, match="reduction"):
        CTCLoss(reduction="avg")
    ctc_loss(**good_args())  # and the good arguments pass


@pytest.mark.parametrize("n_classes", [4, 12])  # C <= S (posteriors per class) and C > S (per state)
def test_second_derivatives_raise_a_clear_error_not_a_wrong_value(n_classes):
    """A Hessian-vector product through log_softmax and ctc_loss: the backward is exact to first order
    only, so the double backward raises instead of silently dropping the CTC curvature (pytorch#70108).
    The first-order gradient taken with create_graph=True stays exact, checked against a plain-autograd
    recursion (tests/helpers.py) whose own Hessian-vector product differs from the log_softmax-only part
    that a silent double backward would return."""
    from helpers import plain_ctc_nll

    from asr_ctc.autograd_guard import SecondDerivativeError

    gen = torch.Generator().manual_seed(3)
    frames, batch = 6, 2
    logits = torch.randn(frames, batch, n_classes, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 2, 2], [3, 1, 0]])
    input_lengths, target_lengths = torch.tensor([6, 5]), torch.tensor([3, 2])
    v = torch.randn(frames, batch, n_classes, generator=gen, dtype=torch.float64)

    def reference(x):
        lp = x.log_softmax(-1)
        return sum(
            plain_ctc_nll(lp[: int(input_lengths[b]), b], targets[b, : int(target_lengths[b])].tolist())
            for b in range(batch)
        )

    loss = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
    (ref_grad,) = torch.autograd.grad(reference(logits), logits, create_graph=True)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-10)
    with pytest.raises(SecondDerivativeError, match=r"asr_ctc\.ctc_loss: second derivatives .* log_probs"):
        torch.autograd.grad((grad * v).sum(), logits)

    # The reference's Hessian-vector product is right (central differences of its gradient) ...
    (ref_hvp,) = torch.autograd.grad((ref_grad * v).sum(), logits)
    eps = 1e-6
    plus = torch.autograd.grad(reference(logits + eps * v), logits)[0]
    minus = torch.autograd.grad(reference(logits - eps * v), logits)[0]
    torch.testing.assert_close(ref_hvp, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-6)
    # ... and far from what a silent double backward returns: log_softmax's part alone, the CTC gradient
    # with respect to log_probs held constant.
    lp = logits.log_softmax(-1)
    (held,) = torch.autograd.grad(ctc_loss(lp, targets, input_lengths, target_lengths, reduction="sum"), lp)
    (silent_grad,) = torch.autograd.grad((lp * held.detach()).sum(), logits, create_graph=True)
    (silent_hvp,) = torch.autograd.grad((silent_grad * v).sum(), logits)
    assert (silent_hvp - ref_hvp).norm() > 0.2 * ref_hvp.norm()


def test_first_order_gradients_keep_working_under_create_graph():
    """create_graph=True for a first-order gradient alone (no double backward) is not an error."""
    x = torch.randn(5, 1, 4, dtype=torch.float64, requires_grad=True)
    loss = ctc_loss(x.log_softmax(-1), torch.tensor([[1, 2]]), [5], [2])
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    (plain,) = torch.autograd.grad(ctc_loss(x.log_softmax(-1), torch.tensor([[1, 2]]), [5], [2]), x)
    torch.testing.assert_close(grad.detach(), plain)
