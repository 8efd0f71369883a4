"""The loss variants inside CTCTrainer: padded batches, every reduction, gradient accumulation and 2-process
DDP give the same losses as the plain-CTC harness checks for the loss itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_dataset, tiny_run_config
from test_distributed import one_and_two_processes
from test_trainer import _logged_losses, _model
from test_trainer import _trainer as _plain_trainer

from asr_ctc.config import LossConfig
from asr_ctc.data.collator import CTCDataCollator

# One setting per variant (and two combinations), each far enough from 0 to change the loss.
VARIANTS = {
    "label_smoothing": dict(label_smoothing=2.0),  # an untrained model's posteriors are near uniform
    "focal": dict(focal_gamma=2.0),
    "max_entropy": dict(max_entropy=0.5),
    "wctc": dict(wildcard_weight=1.0),
    "star": dict(star_weight=0.3),
    "star+max_entropy": dict(star_weight=0.3, max_entropy=0.2),
    "smoothing+focal": dict(label_smoothing=1.0, focal_gamma=1.0),
}


def _trainer(processor, model, dataset, tmp_path, loss: LossConfig, **args):
    return _plain_trainer(processor, model, dataset, tmp_path, loss_config=loss, **args)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_batch_equals_utterances_alone_for_every_reduction(tiny_processor, tmp_path, variant):
    """Padding frames and padded labels never enter a variant: the padded batch's loss is the loss of each
    utterance run alone, reduced as mean, sum or token_mean; and the variant does change the loss."""
    ds = random_dataset(tiny_processor, 6, seed=1)
    model = _model(tiny_processor).eval()
    collate = CTCDataCollator(tiny_processor)
    batch = collate([ds[i] for i in range(len(ds))])
    assert (batch["attention_mask"] == 0).any()
    loss = LossConfig(reduction="sum", **VARIANTS[variant])
    trainer = _trainer(tiny_processor, model, ds, tmp_path, loss)
    with torch.no_grad():
        singles = np.array([trainer.compute_loss(model, collate([ds[i]])).item() for i in range(len(ds))])
        plain = _trainer(tiny_processor, model, ds, tmp_path, LossConfig(reduction="sum"))
        changed = abs(plain.compute_loss(model, batch).item() - singles.sum()) > 1e-3 * abs(singles.sum())
        # Focal CTC's weight (1 - e^-L)^gamma is 1 to ~80 digits at an untrained model's L of ~190.
        assert changed or variant == "focal"
    lengths = np.array([len(ds[i]["labels"]) for i in range(len(ds))])
    expected = {
        "sum": singles.sum(),
        "mean": (singles / lengths).mean(),
        "token_mean": singles.sum() / lengths.sum(),
    }
    for reduction, want in expected.items():
        loss = LossConfig(reduction=reduction, **VARIANTS[variant])
        trainer = _trainer(tiny_processor, model, ds, tmp_path, loss)
        with torch.no_grad():
            got = trainer.compute_loss(model, batch).item()
        assert got == pytest.approx(want, rel=1e-4), reduction


@pytest.mark.parametrize(
    ("variant", "reduction"),
    [("star+max_entropy", "token_mean"), ("smoothing+focal", "mean"), ("wctc", "sum")],
)
def test_gradient_accumulation_matches_the_full_batch(tiny_processor, tmp_path, variant, reduction):
    ds = random_dataset(tiny_processor, 16, seed=4)
    loss = LossConfig(reduction=reduction, **VARIANTS[variant])
    full = _logged_losses(
        _trainer(tiny_processor, _model(tiny_processor, seed=5), ds, tmp_path / "full", loss)
    )
    accum = _logged_losses(
        _trainer(
            tiny_processor,
            _model(tiny_processor, seed=5),
            ds,
            tmp_path / "ga",
            loss,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
        )
    )
    assert len(full) == 3
    np.testing.assert_allclose(accum, full, rtol=1e-4)


@pytest.mark.parametrize(
    ("reduction", "overrides"),
    [
        ("token_mean", ["loss.star_weight=0.3", "loss.max_entropy=0.2"]),
        ("mean", ["loss.label_smoothing=0.05", "loss.focal_gamma=1.0", "loss.wildcard_weight=1.0"]),
    ],
    ids=["star+max_entropy", "smoothing+focal+wctc"],
)
def test_two_processes_match_one_process(tiny_corpus, tmp_path, reduction, overrides):
    cfg = tiny_run_config(
        tiny_corpus,
        tmp_path / "unused",
        max_steps=2,
        train_sampling_strategy="sequential",
        eval_strategy="no",
        save_strategy="no",
    )
    one, two = one_and_two_processes(cfg, tmp_path, reduction=reduction, overrides=overrides)
    assert len(one) == len(two) == 2
    np.testing.assert_allclose(two, one, rtol=1e-4)
