"""The loss variants (asr_ctc.variants): each checked against brute force over all alignments under its own
definition, gradcheck, plain CTC at knob 0, padded and concatenated targets, float32 and float64."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import load_benchmark

from asr_ctc import ctc_loss
from asr_ctc.config import LossConfig
from asr_ctc.variants import (
    focal_ctc,
    label_smoothing_kl,
    lattice_ctc_loss,
    per_utterance_loss,
    register_variant,
)

STAR = "*"
REPO = Path(__file__).resolve().parents[1]


# -- the brute force: every alignment, scored by the variant's definition (no lattice involved) ------------


def _collapse(symbols: tuple) -> list:
    """CTC's many-to-one map, with the star: merge repeats, drop blanks (0), then drop stars."""
    merged = [s for i, s in enumerate(symbols) if i == 0 or s != symbols[i - 1]]
    return [s for s in merged if s not in (0, STAR)]


def _alignment_scores(lp: torch.Tensor, target: list[int], wildcard: float, star: float) -> list:
    """The score (log-probability) of every alignment of ``target`` to the (T, C) scores ``lp``, blank 0.

    Definitions: an alignment is ``wildcard^a, middle, wildcard^b`` (``a = b = 0`` without wildcards, else
    ``a, b >= 0`` and at least one middle frame), where ``middle`` is a sequence over the classes (and the
    star) that collapses to ``target``. A wildcard frame scores ``wildcard * sum_k p_t(k)``, a star frame
    ``star * sum_{k != 0} p_t(k)``, a class frame ``p_t(k)``.
    """
    frames, n_classes = lp.shape
    alphabet = list(range(n_classes)) + ([STAR] if star > 0 else [])
    lse_all = torch.logsumexp(lp, -1)
    lse_star = torch.logsumexp(lp[:, 1:], -1)
    scores = []
    ends = [(a, b) for a in range(frames + 1) for b in range(frames + 1 - a) if frames - a - b >= 1]
    if wildcard == 0:
        ends = [(0, 0)]
    for a, b in ends:
        middle = range(a, frames - b)
        for symbols in itertools.product(alphabet, repeat=len(middle)):
            if _collapse(symbols) != target:
                continue
            score = lp.new_zeros(())
            for t in range(a):
                score = score + math.log(wildcard) + lse_all[t]
            for t in range(frames - b, frames):
                score = score + math.log(wildcard) + lse_all[t]
            for t, s in zip(middle, symbols, strict=True):
                score = score + (math.log(star) + lse_star[t] if s == STAR else lp[t, s])
            scores.append(score)
    return scores


def _brute_force_loss(lp, target, wildcard=0.0, star=0.0, entropy=0.0):
    scores = torch.stack(_alignment_scores(lp, target, wildcard, star))
    log_z = torch.logsumexp(scores, 0)
    log_post = scores - log_z
    h = -(log_post.exp() * log_post).sum()
    return -log_z - entropy * h


# (wildcard, star, entropy) settings, each a variant or a combination.
SETTINGS = {
    "plain": (0.0, 0.0, 0.0),
    "wctc": (1.0, 0.0, 0.0),
    "wctc_half": (0.5, 0.0, 0.0),
    "star": (0.0, 0.3, 0.0),
    "star_free": (0.0, 1.0, 0.0),
    "maxent": (0.0, 0.0, 0.7),
    "all": (0.6, 0.2, 0.4),
}
# Targets of a batch: repeats (needs a blank or star between), distinct, one label, empty.
TARGETS = [[1, 1], [2, 1, 2], [2], []]
FRAMES = [5, 4, 5, 3]  # ragged input lengths; T = 5


def _batch(dtype=torch.float64, normalised=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(max(FRAMES), len(TARGETS), 3, generator=g, dtype=dtype)
    lp = scores.log_softmax(-1) if normalised else scores
    padded = torch.zeros(len(TARGETS), 3, dtype=torch.long)
    for b, t in enumerate(TARGETS):
        padded[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    lengths = torch.tensor([len(t) for t in TARGETS])
    return lp.requires_grad_(), padded, torch.tensor(FRAMES), lengths


@pytest.mark.parametrize("normalised", [True, False], ids=["log_softmax", "raw_scores"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_lattice_loss_and_gradient_match_brute_force(setting, normalised):
    wildcard, star, entropy = SETTINGS[setting]
    lp, targets, frames, lengths = _batch(normalised=normalised)
    got = lattice_ctc_loss(
        lp, targets, frames, lengths, reduction="none",
        wildcard_weight=wildcard, star_weight=star, entropy_weight=entropy,
    )  # fmt: skip
    (got_grad,) = torch.autograd.grad(got.sum(), lp)
    want = torch.stack(
        [
            _brute_force_loss(lp[: FRAMES[b], b], TARGETS[b], wildcard, star, entropy)
            for b in range(len(TARGETS))
        ]
    )
    (want_grad,) = torch.autograd.grad(want.sum(), lp)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-10)
    assert (got_grad[5:] == 0).all()
    for b, n in enumerate(FRAMES):  # frames past an input length get no gradient
        assert (got_grad[n:, b] == 0).all()


def test_the_brute_force_sees_each_variant():
    """Each setting changes the loss (the enumerator is not trivially plain CTC), and the entropy of a
    single-alignment target is 0."""
    lp, *_ = _batch()
    values = {k: _brute_force_loss(lp[:, 0], [1, 1], *v).item() for k, v in SETTINGS.items()}
    assert len(set(values.values())) == len(values)
    one = torch.randn(2, 3, dtype=torch.float64).log_softmax(-1)  # [1, 1] in 3 frames: one alignment
    lp3 = torch.cat((one, one[:1]))
    assert len(_alignment_scores(lp3, [1, 1], 0.0, 0.0)) == 1
    torch.testing.assert_close(_brute_force_loss(lp3, [1, 1], entropy=5.0), _brute_force_loss(lp3, [1, 1]))


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s != "plain"])
def test_lattice_gradcheck(setting):
    wildcard, star, entropy = SETTINGS[setting]
    lp, targets, frames, lengths = _batch(normalised=False, seed=3)

    def loss(x):
        return lattice_ctc_loss(
            x, targets, frames, lengths, reduction="sum",
            wildcard_weight=wildcard, star_weight=star, entropy_weight=entropy,
        )  # fmt: skip

    assert torch.autograd.gradcheck(loss, (lp.detach().requires_grad_(),))


def _random_case(dtype, seed=0, frames=30, batch=4, classes=7):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(frames, batch, classes, generator=g, dtype=dtype).log_softmax(-1).requires_grad_()
    lengths = torch.tensor([6, 0, 3, 5])
    targets = torch.randint(1, classes, (batch, 6), generator=g)
    targets[0, 1] = targets[0, 0]  # a repeat
    frames_ = torch.tensor([frames, 20, 9, 25])
    return lp, targets, frames_, lengths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("concatenated", [False, True])
def test_lattice_at_zero_weights_is_plain_ctc(dtype, concatenated):
    lp, targets, frames, lengths = _random_case(dtype)
    if concatenated:
        targets = torch.cat([targets[b, :n] for b, n in enumerate(lengths.tolist())])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for reduction in ("none", "mean", "sum"):
        got = lattice_ctc_loss(lp, targets, frames, lengths, reduction=reduction)
        want = ctc_loss(lp, targets, frames, lengths, reduction=reduction)
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(got, F.ctc_loss(lp, targets, frames, lengths, reduction=reduction), **tol)
        (g1,) = torch.autograd.grad(got.sum(), lp)
        (g2,) = torch.autograd.grad(want.sum(), lp)
        torch.testing.assert_close(g1, g2, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lattice_variants_padded_equal_concatenated_and_one_at_a_time(dtype):
    lp, targets, frames, lengths = _random_case(dtype, seed=1)
    concat = torch.cat([targets[b, :n] for b, n in enumerate(lengths.tolist())])
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    kw = dict(wildcard_weight=0.7, star_weight=0.1, entropy_weight=0.3)
    padded = lattice_ctc_loss(lp, targets, frames, lengths, reduction="none", **kw)
    assert padded.dtype == dtype
    torch.testing.assert_close(lattice_ctc_loss(lp, concat, frames, lengths, reduction="none", **kw), padded)
    for b in range(4):
        n = int(frames[b])
        alone = lattice_ctc_loss(lp[:n, b], targets[b, : lengths[b]], n, lengths[b], reduction="none", **kw)
        torch.testing.assert_close(alone, padded[b], **tol)
    mean = lattice_ctc_loss(lp, targets, frames, lengths, reduction="mean", **kw)
    torch.testing.assert_close(mean, (padded / lengths.clamp_min(1)).mean(), **tol)
    total = lattice_ctc_loss(lp, targets, frames, lengths, reduction="sum", **kw)
    torch.testing.assert_close(total, padded.sum())


def test_lattice_infeasible_targets_and_zero_infinity():
    lp = torch.randn(3, 2, 4, dtype=torch.float64).log_softmax(-1).requires_grad_()
    targets = torch.tensor([[1, 1, 2], [1, 2, 3]])
    frames, lengths = torch.tensor([3, 3]), torch.tensor([3, 3])
    for kw in ({}, {"star_weight": 0.5}, {"entropy_weight": 1.0}):
        loss = lattice_ctc_loss(lp, targets, frames, lengths, reduction="none", **kw)
        loss = loss.detach()
        assert loss[0] == math.inf and math.isfinite(loss[1])  # [1, 1, 2] needs 4 frames
        zeroed = lattice_ctc_loss(lp, targets, frames, lengths, 0, "none", zero_infinity=True, **kw)
        assert zeroed[0] == 0 and zeroed[1] == loss[1]
        (grad,) = torch.autograd.grad(zeroed.sum(), lp)
        assert (grad[:, 0] == 0).all() and torch.isfinite(grad).all()
    # W-CTC cannot rescue a target longer than the frames either.
    wctc = lattice_ctc_loss(lp.detach(), targets, frames, lengths, 0, "none", wildcard_weight=1.0)
    assert wctc[0] == math.inf


def test_lattice_half_precision_is_computed_in_float32():
    lp, targets, frames, lengths = _random_case(torch.float32, seed=2)
    want = lattice_ctc_loss(lp, targets, frames, lengths, star_weight=0.2)
    got = lattice_ctc_loss(lp.detach().bfloat16(), targets, frames, lengths, star_weight=0.2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"wildcard_weight": 1.5}, "wildcard_weight: expected a number in"),
        ({"star_weight": -0.1}, "star_weight"),
        ({"entropy_weight": math.inf}, "entropy_weight: expected a finite number"),
        ({"entropy_weight": True}, "entropy_weight"),
        ({"reduction": "token_mean"}, "reduction must be one of"),
    ],
)
def test_lattice_bad_arguments_are_named(kwargs, match):
    lp = torch.randn(4, 1, 3).log_softmax(-1)
    with pytest.raises(ValueError, match=match):
        lattice_ctc_loss(lp, torch.tensor([[1]]), [4], [1], **kwargs)


# -- label smoothing and focal CTC ---------------------------------------------------------------------------


def test_label_smoothing_is_the_kl_from_uniform_over_real_frames():
    lp, targets, frames, lengths = _random_case(torch.float64, seed=4)
    got = label_smoothing_kl(lp, frames)
    uniform = torch.full((lp.shape[-1],), 1.0 / lp.shape[-1], dtype=torch.float64)
    for b in range(lp.shape[1]):
        want = sum(F.kl_div(lp[t, b], uniform, reduction="sum") for t in range(int(frames[b])))
        torch.testing.assert_close(got[b], want)
    assert torch.autograd.gradcheck(lambda x: label_smoothing_kl(x, frames), (lp.detach().requires_grad_(),))
    flat = torch.full_like(lp, -math.log(lp.shape[-1]))
    torch.testing.assert_close(label_smoothing_kl(flat, frames), torch.zeros(4, dtype=torch.float64))


def test_focal_ctc_weight_and_gradient():
    nll = torch.tensor([0.05, 0.7, 3.0, 0.0, math.inf], dtype=torch.float64, requires_grad=True)
    gamma = 2.0
    got = focal_ctc(nll, gamma, alpha=0.5)
    p = torch.exp(-nll.detach())
    torch.testing.assert_close(got[:3], 0.5 * (1 - p[:3]) ** gamma * nll.detach()[:3])
    assert got[3] == 0 and got[4] == math.inf
    (grad,) = torch.autograd.grad(got[:4].sum(), nll)
    L, q = nll.detach()[:3], p[:3]
    analytic = 0.5 * (1 - q) ** gamma * (1 + gamma * L * q / (1 - q))  # the docstring's derivative
    torch.testing.assert_close(grad[:3], analytic)
    assert grad[3] == 0
    x = torch.tensor([0.1, 1.3, 4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: focal_ctc(v, 0.5), (x,))
    torch.testing.assert_close(focal_ctc(x, 0.0), x)  # gamma 0: plain CTC


@pytest.mark.parametrize("setting", ["plain", "star", "all"])
def test_focal_and_label_smoothing_on_top_of_the_brute_force(setting):
    """The assembled loss of every variant at once, against brute force: focal weight of the enumerated
    -log Z, minus beta H of the enumerated alignment distribution, plus eps KL from kl_div."""
    wildcard, star, entropy = SETTINGS[setting]
    lp, targets, frames, lengths = _batch(seed=11)
    cfg = LossConfig(
        focal_gamma=1.5, label_smoothing=0.3, max_entropy=entropy, wildcard_weight=wildcard, star_weight=star
    )
    got = per_utterance_loss(lp, targets, frames, lengths, 0, cfg)
    uniform = torch.full((3,), 1.0 / 3, dtype=torch.float64)
    want = []
    for b, target in enumerate(TARGETS):
        x = lp[: FRAMES[b], b]
        nll = _brute_force_loss(x, target, wildcard, star)
        h = (_brute_force_loss(x, target, wildcard, star, 1.0) - nll) / -1.0
        kl = sum(F.kl_div(x[t], uniform, reduction="sum") for t in range(FRAMES[b]))
        # focal_ctc's rule for L <= 0 (W-CTC's loss can be negative: its alignments overlap): 0
        focal = (1 - torch.exp(-nll)) ** 1.5 * nll if nll > 0 else 0 * nll
        want.append(focal - entropy * h + 0.3 * kl)
    want = torch.stack(want)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (g1,) = torch.autograd.grad(got.sum(), lp)
    (g2,) = torch.autograd.grad(want.sum(), lp)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)


def test_every_variant_in_float32_matches_float64():
    cfg = LossConfig(
        label_smoothing=0.1, focal_gamma=1.0, max_entropy=0.2, wildcard_weight=0.5, star_weight=0.2
    )
    lp64, targets, frames, lengths = _random_case(torch.float64, seed=12)
    results = {}
    for dtype in (torch.float32, torch.float64):
        lp = lp64.detach().to(dtype).requires_grad_()
        loss = per_utterance_loss(lp, targets, frames, lengths, 0, cfg)
        (grad,) = torch.autograd.grad(loss.sum(), lp)
        assert loss.dtype == grad.dtype == dtype
        results[dtype] = (loss.double(), grad.double())
    for got, want in zip(results[torch.float32], results[torch.float64], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# -- per_utterance_loss: the function the trainer calls ---------------------------------------------------


@pytest.mark.parametrize("impl", ["custom", "torch", "reference"])
def test_every_knob_at_zero_is_plain_ctc_exactly(impl):
    lp, targets, frames, lengths = _random_case(torch.float32, seed=5)
    frames[1] = 20
    zeros = dict(label_smoothing=0, focal_gamma=0, max_entropy=0, wildcard_weight=0, star_weight=0)
    got = per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig(impl=impl, **zeros))
    want = {"custom": ctc_loss, "torch": F.ctc_loss}.get(impl)
    if want is not None:
        assert torch.equal(got, want(lp, targets, frames, lengths, reduction="none", zero_infinity=True))
    else:
        torch.testing.assert_close(got, ctc_loss(lp, targets, frames, lengths, reduction="none"))


def test_per_utterance_loss_assembles_the_variants():
    lp, targets, frames, lengths = _random_case(torch.float64, seed=6)
    cfg = LossConfig(
        label_smoothing=0.1, focal_gamma=1.5, max_entropy=0.2, star_weight=0.3, zero_infinity=False
    )
    got = per_utterance_loss(lp, targets, frames, lengths, 0, cfg)
    nll = lattice_ctc_loss(lp, targets, frames, lengths, reduction="none", star_weight=0.3)
    with_h = lattice_ctc_loss(lp, targets, frames, lengths, 0, "none", star_weight=0.3, entropy_weight=0.2)
    entropy = (nll - with_h) / 0.2
    want = focal_ctc(nll, 1.5) - 0.2 * entropy + 0.1 * label_smoothing_kl(lp, frames)
    torch.testing.assert_close(got, want)
    # label smoothing and focal CTC compose with torch's loss as well
    cfg = LossConfig(impl="torch", label_smoothing=0.1, focal_gamma=1.5)
    want = focal_ctc(F.ctc_loss(lp, targets, frames, lengths, reduction="none", zero_infinity=True), 1.5)
    want = want + 0.1 * label_smoothing_kl(lp, frames)
    torch.testing.assert_close(per_utterance_loss(lp, targets, frames, lengths, 0, cfg), want)


def test_registered_variants_log_probs_and_term():
    lp, targets, frames, lengths = _random_case(torch.float64, seed=7)

    @register_variant("_test_scale", kind="log_probs")
    def scale(batch, value):
        return batch.log_probs * value

    @register_variant("_test_frames", kind="term")
    def frames_term(batch, value):
        return value * batch.input_lengths.to(batch.log_probs.dtype)

    cfg = LossConfig(variants={"_test_scale": 0.5, "_test_frames": 2.0})
    got = per_utterance_loss(lp, targets, frames, lengths, 0, cfg)
    want = ctc_loss(lp * 0.5, targets, frames, lengths, reduction="none", zero_infinity=True) + 2.0 * frames
    torch.testing.assert_close(got, want)
    off = LossConfig(variants={"_test_scale": 0, "_test_frames": 0})
    assert torch.equal(
        per_utterance_loss(lp, targets, frames, lengths, 0, off),
        per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig()),
    )

    @register_variant("_test_bad", kind="term")
    def bad(batch, value):
        return batch.log_probs

    with pytest.raises(ValueError, match="'_test_bad' \\(term\\) must return a tensor of shape \\(4,\\)"):
        per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig(variants={"_test_bad": 1.0}))
    with pytest.raises(ValueError, match="variants: 'nope' is not registered"):
        per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig(variants={"nope": 1.0}))
    with pytest.raises(ValueError, match="kind: expected one of"):
        register_variant("x", kind="other")
    with pytest.raises(ValueError, match="name: expected a new variant name"):
        register_variant("star_weight")


def test_package_variants_read_their_value_from_a_loss_config_field():
    """How this package's other modules (timing variants) plug in: ``config_field=True``. Shown with an
    existing field, removed from the registry afterwards."""
    from asr_ctc import variants

    lp, targets, frames, lengths = _random_case(torch.float64, seed=9)
    with pytest.raises(ValueError, match="'no_such_key' is not a LossConfig field"):
        register_variant("no_such_key", config_field=True)
    try:
        register_variant("zero_infinity", kind="term", config_field=True)(
            lambda batch, value: torch.full_like(batch.target_lengths, 7, dtype=batch.log_probs.dtype)
        )
        assert "zero_infinity" not in variants.registered_variants()  # not a loss.variants name
        plain = ctc_loss(lp, targets, frames, lengths, reduction="none", zero_infinity=True)
        got = per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig())
        torch.testing.assert_close(got, plain + 7)
    finally:
        variants._REGISTRY.pop("zero_infinity", None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_smoothing": -0.1}, "label_smoothing: expected a finite number >= 0.0"),
        ({"focal_gamma": math.nan}, "focal_gamma"),
        ({"wildcard_weight": 2.0}, r"wildcard_weight: expected a number in \[0.0, 1.0\]"),
        ({"star_weight": True}, "star_weight"),
        ({"max_entropy": 0.1, "impl": "torch"}, "max_entropy: needs impl custom"),
        ({"wildcard_weight": 1.0, "impl": "reference"}, "wildcard_weight: needs impl custom"),
        ({"label_smoothing": 0.1, "impl": "builtin"}, "impl: builtin computes plain CTC"),
        ({"variants": {"nope": "high"}}, "variants: nope: expected a finite number"),
    ],
)
def test_loss_config_rejects_bad_variant_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_variant_keys_load_from_yaml_overrides():
    from asr_ctc.config import ConfigError, apply_overrides, config_from_dict

    raw = {"output_dir": "x", "data": {"train": {"manifest": "m.tsv"}}}
    cfg = config_from_dict(apply_overrides(raw, ["loss.star_weight=0.25", "loss.max_entropy=1"]), False)
    assert cfg.loss.star_weight == 0.25 and cfg.loss.max_entropy == 1.0
    with pytest.raises(ConfigError, match="loss.star_weight: expected a number in"):
        config_from_dict(apply_overrides(raw, ["loss.star_weight=3"]), False)


def test_a_run_saved_before_the_variant_keys_resumes_as_plain_ctc():
    from asr_ctc.config import config_from_dict, to_dict
    from asr_ctc.finetune import resume_differences

    raw = {"output_dir": "x", "data": {"train": {"manifest": "m.tsv"}}, "loss": {"impl": "custom"}}
    saved = to_dict(config_from_dict(raw, check_files=False))
    keys = ("label_smoothing", "focal_gamma", "max_entropy", "wildcard_weight", "star_weight", "variants")
    for key in keys:
        del saved["loss"][key]  # what an older run_config.yaml holds
    assert resume_differences(saved, config_from_dict(raw, check_files=False)) == []
    changed = config_from_dict({**raw, "loss": {"star_weight": 0.1}}, check_files=False)
    assert resume_differences(saved, changed) == ["loss.star_weight: 0.0 -> 0.1"]


# -- README: "Writing your own variant" ---------------------------------------------------------------------


def test_readme_writing_your_own_variant_runs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Writing your own variant", 1)
    assert len(section) == 2, "README.md has no 'Writing your own variant' section"
    blocks = re.findall(r"```python\n(.*?)```", section[1], flags=re.S)
    assert blocks, "the section has no python code block"
    code = blocks[0]
    assert len(code.strip().splitlines()) < 30
    namespace: dict = {}
    exec(compile(code, "README.md:writing-your-own-variant", "exec"), namespace)  # noqa: S102
    # The example's own checks ran (plain CTC at 0); check again here, independently of its asserts.
    lp = torch.randn(20, 2, 5, dtype=torch.float64).log_softmax(-1)
    targets, frames, lengths = torch.tensor([[1, 2], [3, 0]]), torch.tensor([20, 15]), torch.tensor([2, 1])
    off = per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig(variants={"blank_penalty": 0.0}))
    plain = F.ctc_loss(lp, targets, frames, lengths, reduction="none", zero_infinity=True)
    torch.testing.assert_close(off, plain)
    on = per_utterance_loss(lp, targets, frames, lengths, 0, LossConfig(variants={"blank_penalty": 0.5}))
    shifted = lp.clone()
    shifted[..., 0] -= 0.5
    torch.testing.assert_close(on, ctc_loss(shifted, targets, frames, lengths, reduction="none"))


# -- the benchmark's corrupted-transcript corpus -------------------------------------------------------------


def _bench():
    return load_benchmark("bench_variants")


def test_drop_words_removes_a_run_at_the_ends_or_anywhere():
    import random

    bench = _bench()
    rng = random.Random(0)
    text = "a b c d e f"
    words = text.split()
    seen_inside = False
    for _ in range(200):
        ends = bench.drop_words(text, "ends", rng).split()
        assert 4 <= len(ends) <= 5 and (ends == words[: len(ends)] or ends == words[-len(ends) :])
        kept = bench.drop_words(text, "anywhere", rng).split()
        n = len(words) - len(kept)
        assert 1 <= n <= 2
        assert any(words[:i] + words[i + n :] == kept for i in range(len(words) - n + 1))
        seen_inside |= kept != words[: len(kept)] and kept != words[-len(kept) :]
    assert seen_inside
    assert bench.drop_words("one", "anywhere", rng) == "one"
    with pytest.raises(ValueError, match="where: expected one of ends, anywhere"):
        bench.drop_words(text, "middle", rng)


def test_corrupt_corpus_changes_only_the_chosen_share_of_train(tmp_path):
    bench = _bench()
    src = tmp_path / "src"
    src.mkdir()
    for split, n in (("train", 20), ("dev", 3), ("test", 3)):
        rows = "".join(f"{split}{i}\twavs/{split}{i}.wav\tw{i} x y z\tv1\n" for i in range(n))
        (src / f"{split}.tsv").write_text("id\taudio\ttext\tvoice\n" + rows)
    summary = bench.corrupt_corpus(src, tmp_path / "out", "ends", fraction=0.3)
    assert summary["corrupted"] == 6 and summary["words_before"] == 80 and summary["words_after"] < 80
    old = [line.split("\t") for line in (src / "train.tsv").read_text().splitlines()]
    new = [line.split("\t") for line in (tmp_path / "out" / "train.tsv").read_text().splitlines()]
    assert new[0] == old[0] and sum(a[2] != b[2] for a, b in zip(old, new, strict=True)) == 6
    # The audio stays the original's (paths relative to the new manifest), the other columns unchanged.
    for a, b in zip(old[1:], new[1:], strict=True):
        assert b[1] == "../src/" + a[1] and (a[0], a[3]) == (b[0], b[3])
    assert (tmp_path / "out" / "dev.tsv").read_text().replace("../src/", "") == (src / "dev.tsv").read_text()


# -- a second reference on cases too long to enumerate: autograd through the plain log-space recursion ------


def _autograd_lattice(lp, targets, frames, lengths, wildcard, star, entropy):
    """-log Z - entropy * H by the textbook recursion over the same lattice, differentiated by autograd."""
    from asr_ctc.variants.lattice import OFFSETS, _emissions, build_lattice

    lattice = build_lattice(targets, lengths, 0, lp.shape[-1], wildcard > 0, star > 0)
    em = _emissions(lp, lattice, 0, wildcard, star)

    def shift(x, d, fill):
        pad = x.new_full((x.shape[0], abs(d)), fill)
        return x if d == 0 else torch.cat((pad, x[:, :-d]), 1) if d > 0 else torch.cat((x[:, -d:], pad), 1)

    log_w = torch.zeros(lattice.allowed.shape, dtype=lp.dtype).masked_fill(~lattice.allowed, -1e30)
    alpha = em[0] + torch.zeros_like(em[0]).masked_fill(~lattice.start, -1e30)
    r = em[0]
    for t in range(1, lp.shape[0]):
        cand = torch.stack([shift(alpha, d, -1e30) for d in OFFSETS], -1) + log_w
        new = torch.logsumexp(cand, -1) + em[t]
        prev_r = torch.stack([shift(r, d, 0.0) for d in OFFSETS], -1)
        new_r = (torch.softmax(cand, -1) * prev_r).sum(-1) + em[t]
        new_r = torch.where(new > -1e29, new_r, torch.zeros_like(new_r))
        running = (t < frames).unsqueeze(1)
        alpha, r = torch.where(running, new, alpha), torch.where(running, new_r, r)
    ends = alpha.masked_fill(~lattice.final, -1e30)
    log_z = torch.logsumexp(ends, -1)
    h = log_z - (torch.softmax(ends, -1) * r).sum(-1)
    return -log_z - entropy * h


@pytest.mark.parametrize("setting", ["plain", "wctc_half", "star", "maxent", "all"])
def test_hand_written_gradient_matches_autograd_on_longer_cases(setting):
    wildcard, star, entropy = SETTINGS[setting]
    lp, targets, frames, lengths = _random_case(torch.float64, seed=8)
    frames[1] = 20
    got = lattice_ctc_loss(
        lp, targets, frames, lengths, reduction="none",
        wildcard_weight=wildcard, star_weight=star, entropy_weight=entropy,
    )  # fmt: skip
    want = _autograd_lattice(lp, targets, frames, lengths, wildcard, star, entropy)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    weights = torch.tensor([1.0, 0.5, -2.0, 3.0], dtype=torch.float64)
    (g1,) = torch.autograd.grad((got * weights).sum(), lp)
    (g2,) = torch.autograd.grad((want * weights).sum(), lp)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-9)
