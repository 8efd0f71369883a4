"""Intermediate, self-conditioned and consistency-regularised CTC (asr_ctc.variants.encoder)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import NO_RANDOMNESS, TINY_ARCH, random_dataset, tiny_model_config, tiny_run_config
from test_trainer import _trainer as trainer_for
from transformers import AutoConfig, AutoModelForCTC

from asr_ctc.config import ConfigError, LossConfig, config_from_dict
from asr_ctc.data.collator import CTCDataCollator
from asr_ctc.inference import run_inference
from asr_ctc.modeling import build_model, frame_lengths, load_ctc_model
from asr_ctc.variants.encoder import (
    CONFIG_KEY,
    IntermediateCTC,
    _final_norm,
    _tap,
    attach_intermediate_ctc,
    consistency_kl,
)

REPO = Path(__file__).resolve().parents[1]
THREE_LAYERS = dataclasses.replace(TINY_ARCH, num_hidden_layers=3)


def _model(processor, seed=0, arch=THREE_LAYERS, **overrides):
    torch.manual_seed(seed)
    tok = processor.tokenizer
    return build_model(tiny_model_config(architecture=arch, **overrides), len(tok), tok.pad_token_id)


def _trainer(processor, model, dataset, tmp_path, loss=None, **args):
    return trainer_for(processor, model, dataset, tmp_path, loss_config=loss or LossConfig(), **args)


def _batch(processor, n=6, seed=1):
    ds = random_dataset(processor, n, seed=seed)
    return ds, CTCDataCollator(processor)([ds[i] for i in range(len(ds))])


def _loss_and_grads(trainer, model, batch):
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- the tap: which hidden state feeds the shared head ----------------------------------------------------


def _tiny_family_config(model_type):
    common = dict(
        vocab_size=12,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16, 16],
        conv_kernel=[10, 4],
        conv_stride=[10, 4],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        **NO_RANDOMNESS,
    )
    if model_type == "wav2vec2-stable":
        stable = dict(do_stable_layer_norm=True, feat_extract_norm="layer")
        return AutoConfig.for_model("wav2vec2", **stable, **common)
    if model_type == "wav2vec2-conformer":
        return AutoConfig.for_model(model_type, position_embeddings_type="relative", **common)
    return AutoConfig.for_model(model_type, **common)


@pytest.mark.parametrize(
    "model_type", ["wav2vec2", "wav2vec2-stable", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer"]
)
def test_the_tap_of_the_last_layer_reproduces_the_models_logits(model_type):
    # The rule for the closing LayerNorm (_final_norm) is right for a family exactly when the last layer's
    # output, put through it and the shared head, gives the model's own logits.
    torch.manual_seed(0)
    model = AutoModelForCTC.from_config(_tiny_family_config(model_type)).eval()
    n = len(model.base_model.encoder.layers)
    taps = IntermediateCTC([n], model.config.hidden_size, model.config.vocab_size, self_conditioning=False)
    model.base_model.encoder.layers[n - 1].register_forward_hook(_tap(model, taps, n, _final_norm(model)))
    audio = torch.randn(2, 4000)
    with torch.no_grad():
        logits = model(audio).logits
    torch.testing.assert_close(taps.logits[0], logits, rtol=1e-5, atol=1e-5)


def test_intermediate_logits_equal_the_head_on_the_layers_hidden_state(tiny_processor):
    # Independent of the hooks: transformers' own output_hidden_states gives layer k's output as
    # hidden_states[k]; this model is pre-LN (do_stable_layer_norm), so the encoder's closing norm applies.
    model = _model(tiny_processor).eval()
    assert model.config.do_stable_layer_norm
    taps = attach_intermediate_ctc(model, [1, 2], self_conditioning=False)
    _, batch = _batch(tiny_processor)
    with torch.no_grad():
        out = model(batch["input_values"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    for z, k in zip(taps.logits, [1, 2], strict=True):
        expected = model.lm_head(model.wav2vec2.encoder.layer_norm(out.hidden_states[k]))
        torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)


def test_bad_layer_indices_are_refused(tiny_processor):
    for layers in ([0], [3], [1, 1], []):
        with pytest.raises(ValueError, match=r"loss.intermediate_layers: expected distinct .* \[1, 2\]"):
            attach_intermediate_ctc(_model(tiny_processor), layers, self_conditioning=False)


# -- intermediate CTC in the trainer ------------------------------------------------------------------------


def test_intermediate_weight_zero_is_plain_ctc_exactly(tiny_processor, tmp_path):
    ds, batch = _batch(tiny_processor)
    plain = _model(tiny_processor)
    tapped = _model(tiny_processor)
    attach_intermediate_ctc(tapped, [1, 2], self_conditioning=False)
    loss0, grads0 = _loss_and_grads(_trainer(tiny_processor, plain, ds, tmp_path), plain, batch)
    cfg = LossConfig(intermediate_layers=[1, 2], intermediate_weight=0.0)
    loss1, grads1 = _loss_and_grads(_trainer(tiny_processor, tapped, ds, tmp_path, cfg), tapped, batch)
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name


@pytest.mark.parametrize("reduction", ["mean", "sum", "token_mean"])
def test_intermediate_loss_is_the_weighted_sum_of_per_layer_ctc(tiny_processor, tmp_path, reduction):
    ds, batch = _batch(tiny_processor)
    model = _model(tiny_processor).eval()
    attach_intermediate_ctc(model, [1, 2], self_conditioning=False)
    cfg = LossConfig(intermediate_layers=[1, 2], intermediate_weight=0.3, reduction=reduction)
    trainer = _trainer(tiny_processor, model, ds, tmp_path, cfg)
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
        out = model(batch["input_values"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    # The reference: F.ctc_loss on each layer's head output, combined and reduced by hand.
    lengths = frame_lengths(model, batch["attention_mask"].sum(-1))
    labels = batch["labels"]
    target_lengths = (labels != -100).sum(-1)
    targets = labels.clamp_min(0)
    norm = model.wav2vec2.encoder.layer_norm

    def ctc(logits):
        lp = F.log_softmax(logits, -1).transpose(0, 1)
        return F.ctc_loss(lp, targets, lengths, target_lengths, blank=0, reduction="none", zero_infinity=True)

    inter = [ctc(model.lm_head(norm(out.hidden_states[k]))) for k in (1, 2)]
    per_utt = 0.7 * ctc(out.logits) + 0.3 * (inter[0] + inter[1]) / 2
    if reduction == "mean":
        expected = (per_utt / target_lengths).mean()
    elif reduction == "sum":
        expected = per_utt.sum()
    else:
        expected = per_utt.sum() / target_lengths.sum()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _logged_losses(trainer):
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("self_conditioning", [False, True])
def test_gradient_accumulation_matches_the_full_batch(tiny_processor, tmp_path, self_conditioning):
    ds = random_dataset(tiny_processor, 16, seed=4)
    cfg = LossConfig(
        intermediate_layers=[1], intermediate_weight=0.3, self_conditioning=self_conditioning, reduction="sum"
    )
    runs = []
    for batch, accumulation in ((8, 1), (4, 2)):
        model = _model(tiny_processor, seed=5)
        attach_intermediate_ctc(model, [1], self_conditioning=self_conditioning)
        trainer = _trainer(
            tiny_processor,
            model,
            ds,
            tmp_path / f"b{batch}",
            cfg,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
        )
        runs.append(_logged_losses(trainer))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-4)


# -- self-conditioning ---------------------------------------------------------------------------------------


def test_self_conditioning_adds_the_projected_posteriors_to_the_next_layers_input(tiny_processor):
    model = _model(tiny_processor).eval()
    _, batch = _batch(tiny_processor)
    inputs = dict(input_values=batch["input_values"], attention_mask=batch["attention_mask"])
    enc = model.wav2vec2.encoder
    seen = {}  # layer 1's own output and layer 2's input, recorded by hooks placed before the tap
    enc.layers[0].register_forward_hook(lambda _m, _a, out: seen.__setitem__("h1", out))
    enc.layers[1].register_forward_pre_hook(lambda _m, args: seen.__setitem__("x2", args[0]))
    with torch.no_grad():
        plain = model(**inputs).logits
    taps = attach_intermediate_ctc(model, [1], self_conditioning=True)
    proj = taps.projections["1"]
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        torch.testing.assert_close(model(**inputs).logits, plain, rtol=0, atol=0)  # zero projection: no-op
        proj.bias.fill_(0.5)
        proj.weight.normal_()
        conditioned = model(**inputs).logits
        # Layer 2 sees layer 1's output plus the projected posteriors of the shared head (pre-LN model:
        # through the encoder's closing norm).
        h1 = seen["h1"]
        expected_x2 = h1 + proj(model.lm_head(enc.layer_norm(h1)).softmax(-1))
    torch.testing.assert_close(seen["x2"], expected_x2, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(conditioned, plain)


def test_self_conditioned_model_saves_and_loads(tiny_processor, tmp_path):
    model = _model(tiny_processor).eval()
    taps = attach_intermediate_ctc(model, [1, 2], self_conditioning=True)
    with torch.no_grad():
        for p in taps.parameters():
            p.normal_()
    _, batch = _batch(tiny_processor)
    with torch.no_grad():
        before = model(batch["input_values"], attention_mask=batch["attention_mask"]).logits
    model.save_pretrained(tmp_path / "run")
    assert "intermediate_ctc.projections.1.weight" in model.state_dict()

    ours = load_ctc_model(tmp_path / "run").eval()
    with torch.no_grad():
        after = ours(batch["input_values"], attention_mask=batch["attention_mask"]).logits
    # Equal up to float rounding: build_model computes the front end time-major, loading uses the stock one.
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    # Plain transformers drops the projections (and only them) and runs the encoder unconditioned: what
    # our model gives with its projections zeroed.
    plain = AutoModelForCTC.from_pretrained(tmp_path / "run").eval()
    assert not hasattr(plain, "intermediate_ctc")
    ours_sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("intermediate_ctc.")}
    assert set(plain.state_dict()) == set(ours_sd)
    with torch.no_grad():
        for p in ours.intermediate_ctc.parameters():
            p.zero_()
        unconditioned = ours(batch["input_values"], attention_mask=batch["attention_mask"]).logits
        got = plain(batch["input_values"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, unconditioned, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, before)


def test_intermediate_only_model_loads_in_plain_transformers_unchanged(tiny_processor, tmp_path):
    model = _model(tiny_processor).eval()
    attach_intermediate_ctc(model, [1], self_conditioning=False)
    model.save_pretrained(tmp_path / "run")
    assert getattr(AutoConfig.from_pretrained(tmp_path / "run"), CONFIG_KEY) == {
        "layers": [1],
        "self_conditioning": False,
    }
    _, batch = _batch(tiny_processor)
    plain = AutoModelForCTC.from_pretrained(tmp_path / "run").eval()
    with torch.no_grad():
        a = model(batch["input_values"], attention_mask=batch["attention_mask"]).logits
        b = plain(batch["input_values"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- CR-CTC -------------------------------------------------------------------------------------------------


def test_consistency_kl_matches_its_definition_and_gradcheck():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 4, dtype=torch.float64).log_softmax(-1)
    b = torch.randn(2, 5, 4, dtype=torch.float64).log_softmax(-1)
    lengths = torch.tensor([5, 3])
    got = consistency_kl(a, b, lengths)
    pa, pb = a.exp(), b.exp()
    for i, n in enumerate(lengths.tolist()):
        kl_ab = (pb[i, :n] * (b[i, :n] - a[i, :n])).sum()
        kl_ba = (pa[i, :n] * (a[i, :n] - b[i, :n])).sum()
        assert got[i].item() == pytest.approx(0.5 * (kl_ab + kl_ba).item(), rel=1e-12)
    assert torch.equal(consistency_kl(a, a, lengths), torch.zeros(2, dtype=torch.float64))

    # Stop-gradient: with respect to view a, only KL(sg(pb) || pa) / 2 has a gradient (a numerical derivative
    # of consistency_kl itself would also move the detached target, so it is checked through this term).
    real = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)

    def pulled_towards_b(x):
        kl = F.kl_div(x.log_softmax(-1), b, log_target=True, reduction="none").sum(-1)
        return 0.5 * (kl * real).sum()

    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pulled_towards_b, (x,))
    consistency_kl(x.log_softmax(-1), b, lengths).sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(pulled_towards_b(x), x)[0])


def test_consistency_weight_zero_is_plain_ctc_exactly(tiny_processor, tmp_path):
    ds, batch = _batch(tiny_processor)
    losses = []
    for weight in (None, 0.0):
        model = _model(tiny_processor, mask_time_prob=0.3, mask_time_length=2)
        cfg = LossConfig() if weight is None else LossConfig(consistency_weight=weight)
        np.random.seed(0)  # the model draws its time masks from numpy's RNG
        losses.append(_loss_and_grads(_trainer(tiny_processor, model, ds, tmp_path, cfg), model, batch))
    assert torch.equal(losses[0][0], losses[1][0])
    for name in losses[0][1]:
        assert torch.equal(losses[0][1][name], losses[1][1][name]), name


def test_consistency_loss_is_two_views_plus_their_kl(tiny_processor, tmp_path):
    ds, batch = _batch(tiny_processor)
    model = _model(tiny_processor, mask_time_prob=0.3, mask_time_length=2).train()
    cfg = LossConfig(consistency_weight=0.2, reduction="sum")
    trainer = _trainer(tiny_processor, model, ds, tmp_path, cfg)
    np.random.seed(1)
    torch.manual_seed(1)
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
    # The same draw of masks, by hand: one forward over the doubled batch.
    np.random.seed(1)
    torch.manual_seed(1)
    doubled = {k: torch.cat([v, v]) for k, v in batch.items() if torch.is_tensor(v) and k != "labels"}
    with torch.no_grad():
        logits = model(**doubled).logits
    b = batch["labels"].shape[0]
    assert not torch.allclose(logits[:b], logits[b:])  # the two views really were masked differently
    lengths = frame_lengths(model, doubled["attention_mask"].sum(-1))
    labels = torch.cat([batch["labels"], batch["labels"]])
    lp = F.log_softmax(logits, -1)
    ctc = F.ctc_loss(
        lp.transpose(0, 1),
        labels.clamp_min(0),
        lengths,
        (labels != -100).sum(-1),
        reduction="none",
        zero_infinity=True,
    )
    kl = consistency_kl(lp[:b], lp[b:], lengths[:b])
    expected = (0.5 * (ctc[:b] + ctc[b:]) + 0.2 * kl).sum()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert kl.min() > 0


def test_config_validation():
    with pytest.raises(ValueError, match="intermediate_layers: intermediate_weight > 0"):
        LossConfig(intermediate_weight=0.3)
    with pytest.raises(ValueError, match="intermediate_weight: expected"):
        LossConfig(intermediate_layers=[1], intermediate_weight=1.5)
    with pytest.raises(ValueError, match="impl: builtin"):
        LossConfig(impl="builtin", consistency_weight=0.2)
    raw = {
        "output_dir": "x",
        "model": {"mask_time_prob": 0.0},
        "data": {"train": {"manifest": "m.tsv"}},
        "loss": {"consistency_weight": 0.2},
    }
    with pytest.raises(ConfigError, match="loss.consistency_weight: needs model.mask_time_prob > 0"):
        config_from_dict(raw, check_files=False)


# -- whole runs: 2-process DDP parity, resume, the project's own inference ----------------------------------


def _variant_run_config(corpus, out, **training):
    cfg = tiny_run_config(corpus, out, **training)
    cfg["model"]["architecture"]["num_hidden_layers"] = 2
    cfg["loss"].update(intermediate_layers=[1], intermediate_weight=0.3, self_conditioning=True)
    return cfg


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_corpus, tmp_path):
    from test_distributed import one_and_two_processes

    cfg = _variant_run_config(
        tiny_corpus,
        tmp_path / "unused",
        max_steps=3,
        train_sampling_strategy="sequential",
        eval_strategy="no",
        save_strategy="no",
    )
    one, two = one_and_two_processes(cfg, tmp_path, reduction="token_mean")
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, rtol=1e-4)


def _finetune(cfg_path, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "scripts/finetune.py", "--config", str(cfg_path), *overrides]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_cr_ctc_resumes_exactly_and_the_run_decodes_with_its_taps(tiny_corpus, tmp_path):
    # CR-CTC's two views draw their time masks from the RNG that checkpoints save: a run resumed from
    # step 4 logs the same losses as the unbroken one. Constant learning rate: the first run's shorter
    # max_steps (a key a resume may change) then does not change the schedule.
    cfg = _variant_run_config(
        tiny_corpus,
        tmp_path / "unused",
        max_steps=8,
        save_steps=4,
        eval_strategy="no",
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
    )
    cfg["model"].update(mask_time_prob=0.3, mask_time_length=2)
    cfg["loss"]["consistency_weight"] = 0.2
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    _finetune(cfg_path, f"output_dir={tmp_path / 'whole'}")
    _finetune(cfg_path, f"output_dir={tmp_path / 'part'}", "training.max_steps=4")
    _finetune(cfg_path, f"output_dir={tmp_path / 'part'}", "--resume")

    def losses(run):
        history = json.loads((run / "log_history.json").read_text())
        return {e["step"]: e["loss"] for e in history if "loss" in e}

    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "part")
    assert sorted(resumed) == list(range(1, 9))
    np.testing.assert_allclose([resumed[s] for s in range(1, 9)], [whole[s] for s in range(1, 9)], rtol=1e-5)

    # The project's own inference rebuilds the self-conditioning taps from config.json.
    run = tmp_path / "whole"
    model = load_ctc_model(run).eval()
    assert model.intermediate_ctc.self_conditioning and model.intermediate_ctc.layers == [1]
    result = run_inference(run, split="test")
    assert result.num_utterances > 0
