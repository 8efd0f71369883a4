"""Label-prior CTC and delay-penalised CTC (asr_ctc.variants.timing): brute force, gradcheck, knob 0 = plain
CTC, torch's wrong gradient on unnormalised scores, and the trainer's prior (accumulation, resume, DDP)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_dataset, tiny_model_config, tiny_run_config
from test_ctc import brute_force_nll
from test_distributed import one_and_two_processes
from transformers import TrainingArguments

from asr_ctc.align import forced_align
from asr_ctc.config import ConfigError, LossConfig, config_from_dict
from asr_ctc.ctc import ctc_loss
from asr_ctc.data.collator import CTCDataCollator
from asr_ctc.modeling import build_model
from asr_ctc.trainer import CTCTrainer
from asr_ctc.variants import timing
from asr_ctc.variants.timing import (
    LABEL_PRIOR_FILE,
    LabelPrior,
    _delay_lattice,
    apply_label_prior,
    delay_penalty_ctc_loss,
    find_label_prior,
    load_label_prior,
)

TARGETS = [(1,), (1, 2), (2, 2), (1, 2, 1), ()]


def _paths(frames, n_classes, target, blank=0):
    """Every frame labelling that collapses to ``target``."""
    for path in itertools.product(range(n_classes), repeat=frames):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == list(target):
            yield path


def _delay_path_score(scores, path, penalty, blank=0):
    """A path's log-score with the delay penalty: each onset (a non-blank frame whose label differs from the
    previous frame's) at frame t adds -penalty * (t - T // 2) (Yao et al. 2023; k2)."""
    frames = scores.shape[0]
    total = scores[torch.arange(frames), torch.tensor(path)].sum()
    for t, c in enumerate(path):
        if c != blank and (t == 0 or path[t - 1] != c):
            total = total - penalty * (t - frames // 2)
    return total


def _random_log_prior(n_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    prior = torch.rand(n_classes, generator=gen, dtype=torch.float64) + 0.05
    prior[0] += 2.0  # blank-heavy, as a trained CTC model's prior is
    return (prior / prior.sum()).log()


# -- label priors: the math -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_label_prior_loss_gradient_and_best_path_match_brute_force(target):
    gen = torch.Generator().manual_seed(10 + len(target))
    logits = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    log_prior, beta = _random_log_prior(3, 1), 0.7
    scores = apply_label_prior(logits.log_softmax(-1), log_prior, beta)
    assert not torch.allclose(scores.exp().sum(-1), torch.ones(5, dtype=torch.float64))  # unnormalised
    expected = brute_force_nll(scores, target, blank=0)
    (expected_grad,) = torch.autograd.grad(expected, logits, retain_graph=True)
    got = ctc_loss(scores, torch.tensor(target, dtype=torch.long), 5, len(target), reduction="sum")
    (grad,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)

    # Best path: forced alignment on the prior-scaled scores is the argmax over the enumerated paths.
    best = max(
        _paths(5, 3, target), key=lambda p: float(scores.detach()[torch.arange(5), torch.tensor(p)].sum())
    )
    labels, path_scores = forced_align(
        scores.detach(), torch.tensor(target, dtype=torch.long), 5, len(target)
    )
    assert labels.tolist() == list(best)
    torch.testing.assert_close(path_scores.sum(), scores[torch.arange(5), torch.tensor(best)].sum().detach())


def test_torch_ctc_loss_trains_a_different_signal_on_prior_scaled_scores():
    """Same loss value, different gradient: torch's backward is ``exp(s) - gamma`` for scores ``s``, right
    only when ``exp(s)`` sums to one. Through log_softmax its error is exactly ``exp(s) - p * sum exp(s)``."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 3, 5, generator=gen, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 2], [3, 4, 0], [2, 0, 0]])
    lengths, target_lengths = torch.tensor([12, 9, 6]), torch.tensor([3, 2, 1])
    log_prior = _random_log_prior(5, 2)

    def signal(fn, beta):
        x = logits.clone().requires_grad_(True)
        s = apply_label_prior(x.log_softmax(-1), log_prior, beta)
        loss = fn(s, targets, lengths, target_lengths, reduction="sum")
        return loss, torch.autograd.grad(loss, x)[0], s.detach()

    ours_loss, ours, s = signal(ctc_loss, 0.5)
    torch_loss, theirs, _ = signal(F.ctc_loss, 0.5)
    torch.testing.assert_close(ours_loss, torch_loss)  # the forward is the same sum over paths
    assert (theirs - ours).abs().max() > 1e-2  # the training signal is not
    valid = (torch.arange(12).unsqueeze(1) < lengths).unsqueeze(-1)
    predicted = (s.exp() - s.exp().sum(-1, keepdim=True) * logits.softmax(-1)) * valid
    torch.testing.assert_close(theirs - ours, predicted)
    # ...and ours is the derivative of the forward (gradcheck), at beta = 0 both agree.
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: ctc_loss(
            apply_label_prior(z.log_softmax(-1), log_prior, 0.5), targets, lengths, target_lengths
        ),
        (x,),
    )
    torch.testing.assert_close(signal(ctc_loss, 0.0)[1], signal(F.ctc_loss, 0.0)[1])


def test_apply_label_prior_knob_zero_and_bad_arguments():
    lp = torch.randn(4, 2, 3).log_softmax(-1)
    assert apply_label_prior(lp, torch.zeros(3), 0.0) is lp  # plain CTC, bit for bit
    with pytest.raises(ValueError, match="log_prior must have shape \\(3,\\)"):
        apply_label_prior(lp, torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        apply_label_prior(lp, torch.zeros(3), -0.1)
    with pytest.raises(ValueError, match="momentum must be"):
        LabelPrior(0.5, momentum=1.0)
    with pytest.raises(ValueError, match="warmup_steps must be"):
        LabelPrior(0.5, warmup_steps=-1)


# -- label priors: the running average --------------------------------------------------------------------


def test_prior_is_the_running_mean_posterior_over_non_padding_frames():
    gen = torch.Generator().manual_seed(0)
    tracker = LabelPrior(beta=0.5, warmup_steps=1, momentum=0.25)
    assert tracker.log_prior() is None and not tracker.active(5)
    a = torch.randn(6, 2, 4, generator=gen).log_softmax(-1)
    b = torch.randn(5, 3, 4, generator=gen).log_softmax(-1)
    la, lb = torch.tensor([6, 3]), torch.tensor([5, 1, 2])
    # Padding frames must not count: poison them.
    a[3:, 1] = 0.0
    b[1:, 1], b[2:, 2] = 0.0, 0.0
    out = tracker.scores(a, la, step=0, training=True)
    assert out is a  # no prior before the first update
    tracker.scores(b, lb, step=0, training=True)  # the step's second micro-batch
    tracker.update()
    frames = [a[:6, 0], a[:3, 1], b[:5, 0], b[:1, 1], b[:2, 2]]
    first = torch.cat(frames).double().exp().mean(0)
    np.testing.assert_allclose(tracker.prior, first.numpy(), rtol=1e-12)
    assert tracker.updates == 1 and not tracker.active(0) and tracker.active(1)

    c = torch.randn(4, 1, 4, generator=gen).log_softmax(-1)
    scores = tracker.scores(c, torch.tensor([4]), step=1, training=True)
    torch.testing.assert_close(scores, c - 0.5 * first.log().float())
    tracker.update()
    second = 0.25 * first + 0.75 * c[:, 0].double().exp().mean(0)
    np.testing.assert_allclose(tracker.prior, second.numpy(), rtol=1e-12)
    # Evaluation uses the prior but does not collect.
    tracker.scores(c, torch.tensor([4]), step=2, training=False)
    tracker.update()
    assert tracker.updates == 2

    # State: JSON-ready, and restored from a Trainer state exactly.
    restored = LabelPrior(beta=0.5, warmup_steps=1, momentum=0.25)
    saved = json.loads(json.dumps({"LabelPrior": tracker.state()}))

    class State:
        stateful_callbacks = saved

    restored.on_train_begin(None, State(), None)
    assert restored.prior == tracker.prior and restored.updates == 2


# -- delay penalty ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("penalty", [0.0, 0.4])
def test_delay_penalty_loss_gradient_and_best_path_match_brute_force(target, penalty):
    gen = torch.Generator().manual_seed(20 + len(target))
    raw = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    path_scores = [(_delay_path_score(raw, p, penalty), p) for p in _paths(5, 3, target)]
    expected = -torch.logsumexp(torch.stack([s for s, _ in path_scores]), 0)
    (expected_grad,) = torch.autograd.grad(expected, raw)
    tgt = torch.tensor(target, dtype=torch.long)
    got = delay_penalty_ctc_loss(raw, tgt, 5, len(target), reduction="sum", penalty=penalty)
    (grad,) = torch.autograd.grad(got, raw)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)

    # Best path (the max semiring of the same recursion): its score, and its frames (the score's gradient
    # is the one-hot of the best path's classes).
    best_score, best = max(path_scores, key=lambda sp: float(sp[0].detach()))
    x = raw.detach().clone().requires_grad_(True)
    viterbi = _delay_lattice(
        x.unsqueeze(1),
        tgt.view(1, -1) if target else tgt.view(1, 0),
        torch.tensor([5]),
        torch.tensor([len(target)]),
        0,
        penalty,
        maximum=True,
    )
    torch.testing.assert_close(viterbi[0], best_score.detach())
    (onehot,) = torch.autograd.grad(viterbi.sum(), x)
    assert onehot.argmax(-1).tolist() == list(best)


def test_delay_penalty_zero_is_plain_ctc_and_gradcheck_passes():
    gen = torch.Generator().manual_seed(5)
    for dtype, tol in (
        (torch.float64, dict(rtol=1e-12, atol=1e-12)),
        (torch.float32, dict(rtol=1e-5, atol=1e-5)),
    ):
        logits = torch.randn(40, 4, 6, generator=gen, dtype=dtype)
        targets = torch.tensor([[1, 2, 2, 3, 5], [4, 4, 0, 0, 0], [5, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
        lengths, target_lengths = torch.tensor([40, 23, 7, 3]), torch.tensor([5, 2, 1, 0])
        for reduction in ("none", "mean", "sum"):
            a = logits.clone().requires_grad_(True)
            b = logits.clone().requires_grad_(True)
            plain = ctc_loss(a.log_softmax(-1), targets, lengths, target_lengths, reduction=reduction)
            ours = delay_penalty_ctc_loss(
                b.log_softmax(-1), targets, lengths, target_lengths, reduction=reduction, penalty=0.0
            )
            torch.testing.assert_close(ours, plain, **tol)
            torch.testing.assert_close(
                torch.autograd.grad(ours.sum(), b)[0], torch.autograd.grad(plain.sum(), a)[0], **tol
            )
    raw = torch.randn(7, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 2, 2], [3, 1, 0], [2, 0, 0]])
    assert torch.autograd.gradcheck(
        lambda lp: delay_penalty_ctc_loss(lp, targets, [7, 5, 3], [3, 2, 1], penalty=0.3), (raw,)
    )


def test_delay_penalty_padding_infeasible_targets_and_effect():
    gen = torch.Generator().manual_seed(6)
    lp = torch.randn(12, 3, 5, generator=gen, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3], [2, 2, 0], [4, 0, 0]])
    lengths, target_lengths = torch.tensor([12, 8, 4]), torch.tensor([3, 2, 1])
    batched = delay_penalty_ctc_loss(lp, targets, lengths, target_lengths, reduction="none", penalty=0.2)
    for b in range(3):
        n = int(lengths[b])
        one = delay_penalty_ctc_loss(
            lp[:n, b], targets[b, : target_lengths[b]], n, target_lengths[b], reduction="none", penalty=0.2
        )
        torch.testing.assert_close(batched[b], one)
    # No alignment: 2 frames for "2 2" (needs 3).
    x = lp.clone().requires_grad_(True)
    bad = delay_penalty_ctc_loss(x, targets, [12, 2, 4], target_lengths, reduction="none", penalty=0.2)
    assert bad[1] == math.inf and torch.isfinite(bad[[0, 2]]).all()
    zero = delay_penalty_ctc_loss(
        x, targets, [12, 2, 4], target_lengths, reduction="none", zero_infinity=True, penalty=0.2
    )
    assert zero[1] == 0
    assert torch.autograd.grad(zero.sum(), x)[0][:, 1].abs().sum() == 0
    # The effect: the posterior-expected onset frame of a one-token target moves earlier with the penalty.
    flat = torch.zeros(10, 1, 3, dtype=torch.float64, requires_grad=True)

    def mean_onset(penalty):
        loss = delay_penalty_ctc_loss(flat.log_softmax(-1), torch.tensor([[1]]), [10], [1], penalty=penalty)
        (grad,) = torch.autograd.grad(loss, flat)
        occupancy = -grad[:, 0, 1]  # how much the label's frames are used: posterior mass per frame, centred
        return float((occupancy * torch.arange(10)).sum() / occupancy.abs().sum())

    assert mean_onset(0.5) < mean_onset(0.0)
    with pytest.raises(ValueError, match="penalty must be a finite number >= 0"):
        delay_penalty_ctc_loss(lp, targets, lengths, target_lengths, penalty=-1.0)
    with pytest.raises(ValueError, match="input_lengths must be at most T"):
        delay_penalty_ctc_loss(lp, targets, [13, 8, 4], target_lengths, penalty=0.1)


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"impl": "torch", "label_prior_beta": 0.3},
            "loss.impl: torch cannot train with label_prior_beta.*122243",
        ),
        ({"impl": "builtin", "label_prior_beta": 0.3}, "builtin cannot train"),
        ({"impl": "reference", "label_prior_beta": 0.3}, "renormalises"),
        ({"impl": "torch", "delay_penalty": 0.1}, "delay_penalty > 0 runs its own lattice"),
        ({"label_prior_beta": -1}, "loss.label_prior_beta: expected a finite number >= 0"),
        ({"delay_penalty": math.inf}, "loss.delay_penalty: expected a finite number >= 0"),
        ({"label_prior_momentum": 1}, "loss.label_prior_momentum: expected a number in \\[0, 1\\)"),
        ({"label_prior_warmup_steps": -2}, "loss.label_prior_warmup_steps: expected an int >= 0"),
    ],
)
def test_bad_timing_options_are_one_clear_config_error(tmp_path, overrides, match):
    raw = {"output_dir": str(tmp_path), "data": {"train": {"manifest": "x.tsv"}}, "loss": overrides}
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw, check_files=False)


def test_knobs_default_to_plain_ctc():
    cfg = LossConfig()
    assert cfg.label_prior_beta == 0 and cfg.delay_penalty == 0
    LossConfig(impl="torch", label_prior_momentum=0.5, label_prior_warmup_steps=3)  # unused knobs: fine


# -- the trainer ------------------------------------------------------------------------------------------


def _model(processor, seed=5):
    torch.manual_seed(seed)
    tok = processor.tokenizer
    return build_model(tiny_model_config(), len(tok), tok.pad_token_id)


def _trainer(processor, dataset, out, loss_config, **args):
    targs = dict(
        output_dir=str(out),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=3,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        seed=0,
        per_device_train_batch_size=8,
        dataloader_num_workers=0,
        disable_tqdm=True,
        train_sampling_strategy="sequential",
    )
    targs.update(args)
    return CTCTrainer(
        model=_model(processor),
        args=TrainingArguments(**targs),
        data_collator=CTCDataCollator(processor),
        train_dataset=dataset,
        processing_class=processor,
        loss_config=loss_config,
    )


def _losses(trainer):
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_knob_zero_leaves_the_trainer_s_scores_and_loss_untouched(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 8, seed=1)
    trainer = _trainer(tiny_processor, ds, tmp_path, LossConfig())
    assert find_label_prior(trainer) is None
    lp, lengths = torch.randn(5, 2, 3).log_softmax(-1), torch.tensor([5, 4])
    assert timing.training_scores(trainer, lp, lengths) is lp  # knob at 0: the plain scores
    batch = CTCDataCollator(tiny_processor)([ds[i] for i in range(8)])
    plain = trainer.compute_loss(trainer.model, batch)
    with_delay = _trainer(tiny_processor, ds, tmp_path, LossConfig(delay_penalty=0.2))
    penalised = with_delay.compute_loss(with_delay.model, batch)
    # The delay penalty changes the loss (the same model: seeded alike); at 0 nothing is called.
    assert abs(penalised.item() - plain.item()) > 1e-3


@pytest.mark.parametrize(
    "loss_config",
    [
        LossConfig(label_prior_beta=0.5, label_prior_warmup_steps=1, label_prior_momentum=0.5),
        LossConfig(label_prior_beta=0.5, label_prior_momentum=0.5, reduction="token_mean"),
        LossConfig(delay_penalty=0.05),
    ],
    ids=["prior-mean", "prior-token_mean", "delay"],
)
def test_gradient_accumulation_matches_the_full_batch(tiny_processor, tmp_path, loss_config):
    ds = random_dataset(tiny_processor, 16, seed=4)
    full_trainer = _trainer(tiny_processor, ds, tmp_path / "full", loss_config)
    full = _losses(full_trainer)
    ga_trainer = _trainer(
        tiny_processor,
        ds,
        tmp_path / "ga",
        loss_config,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    accum = _losses(ga_trainer)
    np.testing.assert_allclose(accum, full, rtol=1e-5)
    plain = _losses(
        _trainer(tiny_processor, ds, tmp_path / "plain", LossConfig(reduction=loss_config.reduction))
    )
    assert abs(full[-1] - plain[-1]) > 1e-4  # the variant really was on
    if loss_config.label_prior_beta:
        full_prior, ga_prior = find_label_prior(full_trainer), find_label_prior(ga_trainer)
        assert full_prior.updates == ga_prior.updates == 3
        np.testing.assert_allclose(ga_prior.prior, full_prior.prior, rtol=1e-6)
        saved = json.loads((tmp_path / "full" / LABEL_PRIOR_FILE).read_text())
        assert saved["prior"] == full_prior.prior and saved["beta"] == 0.5
        torch.testing.assert_close(load_label_prior(tmp_path / "full"), full_prior.log_prior())


def test_resume_restores_the_prior_exactly(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 16, seed=7)
    cfg = LossConfig(label_prior_beta=0.5, label_prior_warmup_steps=1, label_prior_momentum=0.5)
    whole_trainer = _trainer(
        tiny_processor, ds, tmp_path / "whole", cfg, max_steps=4, save_strategy="steps", save_steps=2
    )
    whole = _losses(whole_trainer)
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["LabelPrior"]["attributes"]["updates"] == 2
    # The prior of a checkpoint is what inference finds there.
    assert load_label_prior(checkpoint) is not None

    resumed_trainer = _trainer(tiny_processor, ds, tmp_path / "resumed", cfg, max_steps=4)
    resumed_trainer.train(resume_from_checkpoint=str(checkpoint))
    resumed = [e["loss"] for e in resumed_trainer.state.log_history if "loss" in e]
    np.testing.assert_allclose(resumed[-2:], whole[-2:], rtol=1e-6)
    assert find_label_prior(resumed_trainer).prior == pytest.approx(
        find_label_prior(whole_trainer).prior, rel=1e-9
    )
    assert find_label_prior(resumed_trainer).updates == 4


def test_two_processes_match_one_process_with_the_prior_on(tiny_corpus, tmp_path):
    # The prior's sums are all-reduced: 4 + 4 utterances on two processes give the prior (and the losses)
    # of 8 on one.
    cfg = tiny_run_config(
        tiny_corpus,
        tmp_path / "unused",
        max_steps=3,
        train_sampling_strategy="sequential",
        eval_strategy="no",
        save_strategy="no",
    )
    cfg["loss"].update(label_prior_beta=0.5, label_prior_momentum=0.5, label_prior_warmup_steps=1)
    one, two = one_and_two_processes(cfg, tmp_path)
    one_prior, two_prior = (json.loads((tmp_path / d / LABEL_PRIOR_FILE).read_text()) for d in ("one", "two"))
    assert len(one) == len(two) == 3 and one_prior["updates"] == two_prior["updates"] == 3
    np.testing.assert_allclose(two, one, rtol=1e-4)
    np.testing.assert_allclose(two_prior["prior"], one_prior["prior"], rtol=1e-5)


def test_finetune_with_priors_then_align_with_them(tiny_corpus, tmp_path, capsys):
    """The whole path on the tiny corpus: a run with label priors and the delay penalty saves its prior;
    inference --timestamps --label-prior aligns with it, from the final model and from a checkpoint."""
    from asr_ctc.cli import inference_main
    from asr_ctc.finetune import run_finetune

    out = tmp_path / "run"
    raw = tiny_run_config(tiny_corpus, out, max_steps=12, eval_strategy="no", save_steps=6)
    raw["loss"].update(label_prior_beta=0.3, label_prior_warmup_steps=4, delay_penalty=0.01)
    run_finetune(config_from_dict(raw))
    saved = json.loads((out / LABEL_PRIOR_FILE).read_text())
    assert saved["updates"] == 12 and len(saved["prior"]) == len(json.loads((out / "vocab.json").read_text()))
    assert sum(saved["prior"]) == pytest.approx(1.0, abs=1e-6)  # an average of (float32) distributions
    for model in (out, out / "checkpoint-6"):
        dest = tmp_path / f"inf_{model.name}"
        code = inference_main(
            ["--model", str(model), "--output-dir", str(dest), "--timestamps", "--label-prior", "0.3"]
        )
        assert code == 0
        assert json.loads((dest / "summary.json").read_text())["alignment_label_prior_beta"] == 0.3
        assert (dest / "words.json").is_file()
    # A model trained without priors has none to align with; a bad BETA is one error line, exit code 2.
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="--label-prior: .* has no label prior"):
        timing.alignment_log_prior(tmp_path / "plain", 0.3)
    assert timing.alignment_log_prior(tmp_path / "plain", 0.0) is None
    capsys.readouterr()
    assert inference_main(["--model", str(out), "--label-prior", "-1"]) == 2
    assert "error: --label-prior must be a finite number >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_delay_penalty_analytic_gradient_equals_autograd_through_the_plain_recursion(dtype):
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(30, 5, 7, generator=gen, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 2, 3, 6, 6], [4, 4, 4, 0, 0, 0], [5, 1, 0, 0, 0, 0], [2] * 6, [0] * 6])
    lengths, target_lengths = torch.tensor([30, 17, 4, 9, 1]), torch.tensor([6, 3, 2, 6, 0])
    x = logits.to(dtype).requires_grad_(True)
    ours = delay_penalty_ctc_loss(
        x.log_softmax(-1), targets, lengths, target_lengths, reduction="none", penalty=0.3
    )
    (grad,) = torch.autograd.grad(ours.sum(), x)
    y = logits.clone().requires_grad_(True)
    reference = -_delay_lattice(y.log_softmax(-1), targets, lengths, target_lengths, 0, 0.3)
    reference = torch.where(reference > 1e29, math.inf, reference)  # "2 2 2 2 2 2" has no alignment in 9
    (expected,) = torch.autograd.grad(torch.where(reference.isinf(), 0.0, reference).sum(), y)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert ours[3] == math.inf
    torch.testing.assert_close(ours.double(), reference, **tol)
    torch.testing.assert_close(grad.double(), expected, **tol)
