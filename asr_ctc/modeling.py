"""The wav2vec2 CTC model: a pretrained checkpoint (local directory or hub id) or a small one from scratch."""

from __future__ import annotations

import dataclasses

from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from .config import ModelConfig

# Every ModelConfig field but these is a Wav2Vec2Config dropout/masking knob, passed on as is.
_NOT_KNOBS = {"name_or_path", "architecture", "freeze_feature_encoder"}
_REGULARISATION_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_KNOBS)


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
