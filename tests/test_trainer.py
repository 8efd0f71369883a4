"""CTCTrainer: the loss it computes for padded batches, loss swapping, and accumulation/normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_dataset, tiny_model_config
from helpers import InMemorySpeechDataset as SpeechDataset
from transformers import TrainingArguments

from asr_ctc.data.collator import CTCDataCollator
from asr_ctc.modeling import build_model
from asr_ctc.trainer import CTCTrainer, NonFiniteLossError


def _model(processor, seed=0, **overrides):
    torch.manual_seed(seed)
    tok = processor.tokenizer
    return build_model(tiny_model_config(**overrides), len(tok), tok.pad_token_id)


def _trainer(
    processor, model, dataset, tmp_path, impl="custom", reduction="mean", zero_infinity=True, **args
):
    targs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=3,
        learning_rate=1e-3,
        seed=0,
        per_device_train_batch_size=8,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    targs.update(args)
    return CTCTrainer(
        model=model,
        args=TrainingArguments(**targs),
        data_collator=CTCDataCollator(processor),
        train_dataset=dataset,
        processing_class=processor,
        ctc_impl=impl,
        ctc_reduction=reduction,
        ctc_zero_infinity=zero_infinity,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_padded_batch_loss_equals_per_utterance_losses(tiny_processor, tmp_path, reduction):
    """Each impl's loss on a padded batch equals the loss of every utterance run alone (no padding), so
    frame lengths come from the mask and padding frames are never scored."""
    ds = random_dataset(tiny_processor, 6, seed=1)
    model = _model(tiny_processor).eval()
    collate = CTCDataCollator(tiny_processor)
    batch = collate([ds[i] for i in range(len(ds))])
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded

    singles = []
    for i in range(len(ds)):
        one = collate([ds[i]])
        trainer = _trainer(tiny_processor, model, ds, tmp_path, impl="torch", reduction="sum")
        with torch.no_grad():
            singles.append(trainer.compute_loss(model, one).item())
    singles = np.array(singles)
    target_lengths = np.array([len(ds[i]["labels"]) for i in range(len(ds))])
    expected = singles.sum() if reduction == "sum" else (singles / target_lengths).mean()

    for impl in ("custom", "torch", "builtin", "reference"):
        trainer = _trainer(tiny_processor, model, ds, tmp_path, impl=impl, reduction=reduction)
        with torch.no_grad():
            got = trainer.compute_loss(model, batch).item()
        assert got == pytest.approx(expected, rel=1e-4), impl


def _logged_losses(trainer):
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_impls_give_the_same_loss_at_every_logged_step(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 24, seed=2)
    runs = {}
    for impl in ("custom", "torch", "builtin"):
        model = _model(tiny_processor, seed=3, hidden_dropout=0.1, mask_time_prob=0.05)
        runs[impl] = _logged_losses(_trainer(tiny_processor, model, ds, tmp_path / impl, impl=impl))
    assert len(runs["custom"]) == 3
    for impl in ("torch", "builtin"):
        np.testing.assert_allclose(runs[impl], runs["custom"], rtol=1e-4)
    assert runs["custom"][0] != runs["custom"][2]  # the model did train in between


@pytest.mark.parametrize(
    ("impl", "reduction"),
    [
        ("custom", "mean"),
        ("custom", "sum"),
        ("custom", "token_mean"),
        ("builtin", "mean"),
        ("torch", "token_mean"),
    ],
)
def test_gradient_accumulation_matches_the_full_batch(tiny_processor, tmp_path, impl, reduction):
    ds = random_dataset(tiny_processor, 16, seed=4)
    full = _logged_losses(
        _trainer(
            tiny_processor,
            _model(tiny_processor, seed=5),
            ds,
            tmp_path / "full",
            impl=impl,
            reduction=reduction,
            per_device_train_batch_size=8,
        )
    )
    accum = _logged_losses(
        _trainer(
            tiny_processor,
            _model(tiny_processor, seed=5),
            ds,
            tmp_path / "ga",
            impl=impl,
            reduction=reduction,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
        )
    )
    np.testing.assert_allclose(accum, full, rtol=1e-4)


def test_infeasible_utterance_without_zero_infinity_stops_with_a_named_error(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 8, seed=6)
    # 0.1 s of audio is 10 frames: too few for a 30-character transcript.
    text = "hello louder music jazz stop"
    bad = SpeechDataset(
        ["too_long"], [text], [np.ones(1600, dtype=np.float32)], [tiny_processor.tokenizer(text).input_ids]
    )
    mixed = SpeechDataset(
        ds.ids + bad.ids, ds.texts + bad.texts, ds.input_values + bad.input_values, ds.labels + bad.labels
    )
    model = _model(tiny_processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(
        tiny_processor,
        model,
        mixed,
        tmp_path,
        zero_infinity=False,
        per_device_train_batch_size=9,
        train_sampling_strategy="sequential",
        max_steps=1,
    )
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*too_long.*no valid CTC alignment"):
        trainer.train()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    # With zero_infinity the same batch trains, and the loss is finite.
    trainer = _trainer(
        tiny_processor,
        _model(tiny_processor),
        mixed,
        tmp_path / "zi",
        zero_infinity=True,
        per_device_train_batch_size=9,
        max_steps=1,
    )
    assert np.isfinite(_logged_losses(trainer)).all()


def test_nan_inputs_are_reported_as_nan_logits(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 4, seed=7)
    ds.input_values[2] = ds.input_values[2].copy()
    ds.input_values[2][100] = np.nan
    trainer = _trainer(
        tiny_processor,
        _model(tiny_processor),
        ds,
        tmp_path,
        per_device_train_batch_size=4,
        train_sampling_strategy="sequential",
        max_steps=1,
    )
    with pytest.raises(NonFiniteLossError, match=r"utt2.*NaN/inf logits"):
        trainer.train()


def test_bad_impl_is_rejected(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 2)
    with pytest.raises(ValueError, match="ctc_impl: expected one of custom, torch, builtin, reference"):
        _trainer(tiny_processor, _model(tiny_processor), ds, tmp_path, impl="warp")
