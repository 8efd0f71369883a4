"""The wav2vec2 CTC model: a pretrained checkpoint (local directory or hub id) or a small one from scratch."""

from __future__ import annotations

import dataclasses

from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from .config import ModelConfig

_REGULARISATION_KEYS = (
    "hidden_dropout",
    "activation_dropout",
    "attention_dropout",
    "feat_proj_dropout",
    "final_dropout",
    "layerdrop",
    "mask_time_prob",
    "mask_time_length",
    "mask_feature_prob",
    "mask_feature_length",
)


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> Wav2Vec2ForCTC:
    """A ``Wav2Vec2ForCTC`` whose output layer matches the vocabulary.

    With ``cfg.name_or_path`` the encoder comes from that checkpoint (its CTC head is re-initialised when
    the vocabulary size differs, as when fine-tuning a self-supervised checkpoint); without it the model
    is built from ``cfg.architecture`` with random weights, which is all there is offline.
    """
    knobs = {k: getattr(cfg, k) for k in _REGULARISATION_KEYS}
    common = dict(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        **knobs,
    )
    if cfg.name_or_path:
        model = Wav2Vec2ForCTC.from_pretrained(cfg.name_or_path, ignore_mismatched_sizes=True, **common)
    else:
        arch = dataclasses.asdict(cfg.architecture)
        arch["num_feat_extract_layers"] = len(arch["conv_dim"])
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**arch, **common))
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model
