"""CTCTrainer: the loss it computes for padded batches, loss swapping, and accumulation/normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import InMemorySpeechDataset as SpeechDataset
from helpers import random_dataset, tiny_model_config
from transformers import TrainingArguments

from asr_ctc.data.collator import IGNORE_INDEX, CTCDataCollator
from asr_ctc.modeling import build_model
from asr_ctc.trainer import CTCTrainer, NonFiniteLossError


def _model(processor, seed=0, **overrides):
    torch.manual_seed(seed)
    tok = processor.tokenizer
    return build_model(tiny_model_config(**overrides), len(tok), tok.pad_token_id)


def _trainer(
    processor,
    model,
    dataset,
    tmp_path,
    impl="custom",
    reduction="mean",
    zero_infinity=True,
    loss_config=None,
    **args,
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
        # A LossConfig (the loss variants' tests) or the three keywords.
        **(
            {"loss_config": loss_config}
            if loss_config is not None
            else {"ctc_impl": impl, "ctc_reduction": reduction, "ctc_zero_infinity": zero_infinity}
        ),
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


def test_loss_config_and_the_ctc_keywords_are_the_same_choice(tiny_processor, tmp_path):
    from asr_ctc.config import LossConfig

    ds = random_dataset(tiny_processor, 2)
    model = _model(tiny_processor)
    by_keywords = _trainer(tiny_processor, model, ds, tmp_path, impl="builtin", reduction="sum")
    assert by_keywords.loss_config == LossConfig(impl="builtin", reduction="sum", zero_infinity=True)
    # The model's own CTC settings are written in one place, from the loss config.
    assert model.config.ctc_loss_reduction == "sum" and model.config.ctc_zero_infinity is True
    trainer = CTCTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none"),
        processing_class=tiny_processor,
        loss_config=LossConfig(impl="torch", reduction="token_mean"),
    )
    assert (trainer.ctc_impl, trainer.ctc_reduction) == ("torch", "token_mean")
    with pytest.raises(ValueError, match="loss_config: given together with ctc_impl"):
        CTCTrainer(model=model, loss_config=LossConfig(), ctc_impl="torch")
    with pytest.raises(ValueError, match="ctc_reduction: token_mean needs impl custom"):
        _trainer(tiny_processor, model, ds, tmp_path, impl="builtin", reduction="token_mean")


def test_frame_lengths_follow_the_conv_arithmetic(tiny_processor):
    from asr_ctc.modeling import frame_lengths, samples_per_frame

    model = _model(tiny_processor).eval()
    samples = torch.tensor([400, 1599, 1600, 8000, 12345])
    expected = []
    for n in samples.tolist():  # each conv layer: floor((n - kernel) / stride) + 1
        for k, s in zip(model.config.conv_kernel, model.config.conv_stride, strict=True):
            n = (n - k) // s + 1
        expected.append(n)
    assert frame_lengths(model, samples).tolist() == expected
    assert frame_lengths(model, samples).dtype == torch.long
    with torch.no_grad():
        logits = model(torch.randn(1, 12345)).logits
    assert logits.shape[1] == expected[-1]
    assert samples_per_frame(model) == 160  # 10 * 4 * 4


def _hf_style_compute_metrics(processor, seen):
    """What the HuggingFace fine-tuning examples write: argmax over the logits, batch_decode."""
    from asr_ctc.decode import wer_cer

    def compute_metrics(pred):
        pred_ids = np.argmax(pred.predictions, axis=-1)
        label_ids = pred.label_ids.copy()
        label_ids[label_ids == -100] = processor.tokenizer.pad_token_id
        hyps = processor.batch_decode(pred_ids)
        refs = processor.batch_decode(label_ids, group_tokens=False)
        seen["hyps"] = hyps
        wer, cer = wer_cer(refs, hyps)
        return {"wer": wer, "cer": cer}

    return compute_metrics


def test_eval_predictions_follow_the_trainer_contract(tiny_processor, tmp_path):
    """prediction_step gives logits; a user's HF-style compute_metrics, ours on logits and ours on argmaxed
    ids (the finetune default) all see the transcripts of each utterance decoded alone, without padding."""
    from asr_ctc.decode import greedy_decode
    from asr_ctc.metrics import argmax_logits, make_compute_metrics

    ds = random_dataset(tiny_processor, 7, seed=8)
    model = _model(tiny_processor, seed=9).eval()
    collate = CTCDataCollator(tiny_processor)
    alone = []
    with torch.no_grad():
        for i in range(len(ds)):
            logits = model(input_values=collate([ds[i]])["input_values"]).logits
            alone += greedy_decode(logits, None, tiny_processor.tokenizer)
    assert len(set(alone)) > 1 and all(alone)  # a random model: varied, non-empty transcripts

    def run(compute_metrics, preprocess=None):
        trainer = CTCTrainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(tmp_path / "o"),
                use_cpu=True,
                report_to="none",
                per_device_eval_batch_size=3,  # batches of different lengths: the Trainer pads with -100
                eval_strategy="no",
                disable_tqdm=True,
            ),
            data_collator=collate,
            eval_dataset=ds,
            processing_class=tiny_processor,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess,
        )
        return trainer.evaluate()

    seen = {}
    hf = run(_hf_style_compute_metrics(tiny_processor, seen))
    assert seen["hyps"] == alone
    ours_on_logits = run(make_compute_metrics(tiny_processor))
    ours_on_ids = run(make_compute_metrics(tiny_processor), argmax_logits)
    refs = [ds.texts[i] for i in range(len(ds))]
    from asr_ctc.decode import wer_cer

    expected_wer, expected_cer = wer_cer(refs, alone)
    for result in (hf, ours_on_logits, ours_on_ids):
        assert result["eval_wer"] == pytest.approx(expected_wer)
        assert result["eval_cer"] == pytest.approx(expected_cer)

    calls = []

    def preprocess(logits, labels):
        calls.append(tuple(logits.shape))
        return argmax_logits(logits, labels)

    run(make_compute_metrics(tiny_processor), preprocess)
    assert len(calls) == 3 and all(len(shape) == 3 for shape in calls)  # honoured, on (B, T, C) logits


def test_padding_frames_of_eval_logits_are_blank(tiny_processor, tmp_path):
    ds = random_dataset(tiny_processor, 4, seed=10)
    model = _model(tiny_processor).eval()
    trainer = _trainer(tiny_processor, model, ds, tmp_path)
    batch = CTCDataCollator(tiny_processor)([ds[i] for i in range(len(ds))])
    _, logits, labels = trainer.prediction_step(model, batch, prediction_loss_only=False)
    with torch.no_grad():
        raw = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
    from asr_ctc.modeling import frame_lengths

    lengths = frame_lengths(model, batch["attention_mask"].sum(-1))
    assert logits.shape == raw.shape and torch.equal(labels, batch["labels"])
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(logits[row, :n], raw[row, :n])
        assert (logits[row, n:].argmax(-1) == tiny_processor.tokenizer.pad_token_id).all()
        assert torch.isfinite(torch.log_softmax(logits[row, n:], -1)).all()
    assert (lengths < raw.shape[1]).any()


@pytest.mark.parametrize(
    ("strategy", "data_seed", "kind"),
    [
        ("group_by_length", None, "EpochLengthGroupedSampler"),
        ("random", None, "EpochRandomSampler"),
        ("random", 11, "EpochRandomSampler"),
    ],
)
def test_train_order_is_seeded_per_epoch(tiny_processor, tmp_path, strategy, data_seed, kind):
    """The training sampler draws each epoch from (data_seed or seed, epoch), never from the global RNG
    (resume in a later epoch: tests/test_resume.py)."""
    ds = random_dataset(tiny_processor, 20, seed=0)
    trainer = _trainer(
        tiny_processor,
        _model(tiny_processor),
        ds,
        tmp_path,
        seed=5,
        data_seed=data_seed,
        train_sampling_strategy=strategy,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == kind
    assert sampler.seed == (5 if data_seed is None else data_seed)
    if strategy == "group_by_length":  # the index's lengths, one optimiser step's batch
        assert sampler.lengths == ds.lengths and sampler.batch_size == 4


class _PadIdCollator(CTCDataCollator):
    """A home-made collator's common mistake: labels padded with the tokenizer's pad id (the blank)."""

    def __call__(self, features):
        batch = super().__call__(features)
        pad = self.processor.tokenizer.pad_token_id
        batch["labels"] = batch["labels"].masked_fill(batch["labels"] == IGNORE_INDEX, pad)
        return batch


@pytest.mark.parametrize("reduction", ["mean", "sum", "token_mean"])
def test_labels_padded_with_the_pad_id_are_read_as_padding(tiny_processor, tmp_path, reduction):
    ds = random_dataset(tiny_processor, 6, seed=4)
    model = _model(tiny_processor).eval()
    features = [ds[i] for i in range(len(ds))]
    proper = CTCDataCollator(tiny_processor)(features)
    padded = _PadIdCollator(tiny_processor)(features)
    pad = tiny_processor.tokenizer.pad_token_id
    assert (padded["labels"] == pad).any() and not (padded["labels"] == IGNORE_INDEX).any()

    # The right value, independently: F.ctc_loss of each utterance alone, on its unpadded labels.
    singles = []
    for f in features:
        with torch.no_grad():
            one = CTCDataCollator(tiny_processor)([f])
            logits = model(input_values=one["input_values"], attention_mask=one["attention_mask"]).logits
        log_probs = logits.log_softmax(-1).transpose(0, 1)
        singles.append(
            F.ctc_loss(
                log_probs, torch.tensor([f["labels"]]), [logits.shape[1]], [len(f["labels"])], blank=pad
            ).item()
            * len(f["labels"])  # F.ctc_loss's mean divides by the target length
        )
    singles, lengths = np.array(singles), np.array([len(f["labels"]) for f in features])
    expected = {
        "mean": (singles / lengths).mean(),
        "sum": singles.sum(),
        "token_mean": singles.sum() / lengths.sum(),
    }

    impls = ("custom", "torch", "reference") + (("builtin",) if reduction != "token_mean" else ())
    for impl in impls:
        trainer = _trainer(tiny_processor, model, ds, tmp_path, impl=impl, reduction=reduction)
        got = []
        for batch in (proper, padded):
            # token_mean's denominator is what the Trainer counts in the step's batches: count it as it does.
            count = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
            assert int(count) == lengths.sum()
            with torch.no_grad():
                got.append(trainer.compute_loss(model, batch, num_items_in_batch=count).item())
        assert got == pytest.approx([expected[reduction]] * 2, rel=1e-4), impl


def test_ctc_targets_match_the_builtin_reading_of_labels():
    """Every -100 or blank entry is dropped wherever it stands (transformers' ForCTCLoss masked_select),
    the rest moved to the front in order, blank after the length."""
    from asr_ctc.trainer import ctc_targets

    labels = torch.tensor([[5, 6, -100, -100], [5, 0, 0, 0], [0, 7, -100, 8], [9, 9, 9, 9]])
    targets, lengths = ctc_targets(labels, blank=0)
    assert lengths.tolist() == [2, 1, 2, 4]
    assert targets.tolist() == [[5, 6, 0, 0], [5, 0, 0, 0], [7, 8, 0, 0], [9, 9, 9, 9]]
