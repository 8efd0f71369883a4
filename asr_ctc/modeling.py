"""The CTC model: a pretrained checkpoint of any CTC-capable speech encoder (local directory or hub id:
wav2vec2, HuBERT, WavLM, Data2VecAudio, wav2vec2-conformer, ...) or a small wav2vec2 from scratch.

Also the one home of the conv front end's arithmetic: :func:`frame_lengths` (output frames per utterance)
and :func:`samples_per_frame` (for timestamps). :func:`build_model` computes a wav2vec2-family front end
time-major, as matrix products (:mod:`asr_ctc.front_end`): exact, same checkpoint, faster on a CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCTC,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)
from transformers.utils import cached_file

from .config import ModelConfig
from .front_end import use_time_major_front_end
from .hub import hub_offline_reason, use_offline_mode_if_unreachable

logger = logging.getLogger(__name__)

# Every ModelConfig field but these is a dropout/masking knob of the model config, passed on as is.
_NOT_KNOBS = {"name_or_path", "architecture", "freeze_feature_encoder"}
_REGULARISATION_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_KNOBS)


class CheckpointError(ValueError):
    """``model.name_or_path`` cannot be loaded (no such directory or hub id, no network) or does not fit."""


def _unreachable(src: str, exc: Exception) -> CheckpointError:
    offline = None if Path(src).exists() or not isinstance(exc, OSError) else hub_offline_reason()
    if offline is not None:  # a file not found offline: one cause, said once (the libraries' adds nothing)
        return CheckpointError(
            f"model.name_or_path: cannot load {src!r}: not a local directory, and the HuggingFace hub cannot "
            f"be used ({offline}) and has no copy of it in the local cache; run once with network access, "
            "or give a local checkpoint directory"
        )
    where = "a local directory" if Path(src).exists() else "not a local directory, nor a reachable hub model"
    return CheckpointError(f"model.name_or_path: cannot load {src!r} ({where}): {exc}".replace("\n", " "))


def load_checkpoint_config(src: str) -> PretrainedConfig:
    """The model config of checkpoint ``src``; :class:`CheckpointError` when it cannot be reached.

    Offline, a typo, or a missing directory all surface from transformers/huggingface_hub as ``OSError``
    subclasses (``LocalEntryNotFoundError``, ``RepositoryNotFoundError``, ...); a dropped connection can also
    surface as a ``ConnectionError`` or an httpx transport error, which is why the net is wide.
    """
    if not Path(src).exists():
        use_offline_mode_if_unreachable()  # fail (or load from the cache) at once, not after ~30 s of retries
    try:
        return AutoConfig.from_pretrained(src)
    except (OSError, ValueError, ConnectionError) as exc:
        raise _unreachable(src, exc) from exc
    except Exception as exc:  # httpx errors are not OSErrors; do not import httpx just to name them
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "huggingface_hub"):
            raise _unreachable(src, exc) from exc
        raise


def load_checkpoint_processor(src: str) -> Wav2Vec2Processor | None:
    """The checkpoint's own processor, or ``None`` when it ships no CTC tokenizer (a self-supervised
    checkpoint: the caller builds a vocabulary from the data).

    "No tokenizer" and "cannot reach the checkpoint" are different answers: the first returns ``None``,
    the second raises :class:`CheckpointError`. A checkpoint without a feature-extractor config gets the
    standard wav2vec2 one (zero-mean unit-variance 16 kHz audio).
    """
    config = load_checkpoint_config(src)  # raises when the checkpoint cannot be reached at all
    try:
        vocab = cached_file(src, "vocab.json", _raise_exceptions_for_missing_entries=False)
        if vocab is None:
            return None
        tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(src)
        has_fe = cached_file(src, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        feature_extractor = (
            Wav2Vec2FeatureExtractor.from_pretrained(src)
            if has_fe
            else Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
        )
    except (OSError, ConnectionError) as exc:
        raise _unreachable(src, exc) from exc
    if _has_ctc_head(config) and config.vocab_size != len(tokenizer):
        # The head's outputs and the tokenizer's ids must mean the same tokens: a different count means
        # targets would be scored against the wrong outputs (or outside the head).
        raise CheckpointError(
            f"model.name_or_path: {src} has a CTC head of {config.vocab_size} outputs but its tokenizer has "
            f"{len(tokenizer)} tokens; the checkpoint is inconsistent (fix its vocab.json or config.json)"
        )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def _has_ctc_head(config: PretrainedConfig) -> bool:
    return any(name.endswith("ForCTC") for name in (getattr(config, "architectures", None) or []))


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> PreTrainedModel:
    """A CTC model whose output layer matches the vocabulary.

    With ``cfg.name_or_path`` the encoder comes from that checkpoint through ``AutoModelForCTC``, so any
    family with a CTC head works. A self-supervised checkpoint (no CTC head) gets a new head of
    ``vocab_size`` outputs; a fine-tuned one keeps its head when ``vocab_size`` is its size (its own
    tokenizer, which :func:`load_checkpoint_processor` checked against the head), and gets a new head
    otherwise. Without ``name_or_path`` a wav2vec2 is built from ``cfg.architecture`` with random weights,
    which is all there is offline.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
    """
    knobs = {k: getattr(cfg, k) for k in _REGULARISATION_KEYS}
    if cfg.name_or_path:
        src = cfg.name_or_path
        config = load_checkpoint_config(src)
        if _has_ctc_head(config) and config.vocab_size != vocab_size:
            logger.warning(
                "%s has a %d-output CTC head; a new %d-output head is trained for the vocabulary built "
                "from the data",
                src,
                config.vocab_size,
                vocab_size,
            )
        unknown = [k for k in knobs if not hasattr(config, k)]
        if unknown:
            logger.warning("%s (%s) has no %s; ignored", src, config.model_type, ", ".join(unknown))
        for key, value in knobs.items():
            if key not in unknown:
                setattr(config, key, value)
        config.vocab_size = vocab_size
        config.pad_token_id = pad_token_id
        try:
            model = AutoModelForCTC.from_pretrained(src, config=config, ignore_mismatched_sizes=True)
        except (OSError, ConnectionError) as exc:
            raise _unreachable(src, exc) from exc
    else:
        arch = dataclasses.asdict(cfg.architecture)
        arch["num_feat_extract_layers"] = len(arch["conv_dim"])
        model = Wav2Vec2ForCTC(
            Wav2Vec2Config(**arch, vocab_size=vocab_size, pad_token_id=pad_token_id, **knobs)
        )
    use_time_major_front_end(model)
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


def load_ctc_model(model_dir: str | Path) -> PreTrainedModel:
    """A trained CTC model from a run directory or a ``checkpoint-N``, as this project trained it.

    ``AutoModelForCTC.from_pretrained``, then the encoder-level variants that ``config.json`` records
    (:func:`asr_ctc.variants.encoder.restore_intermediate_ctc`: self-conditioning projections, whose weights
    plain loading drops).
    """
    from safetensors.torch import load_file

    from .variants.encoder import CONFIG_KEY, restore_intermediate_ctc

    model = AutoModelForCTC.from_pretrained(str(model_dir))
    if getattr(model.config, CONFIG_KEY, None):
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(Path(model_dir).glob("model*.safetensors")):
            tensors.update(load_file(str(shard)))
        restore_intermediate_ctc(model, tensors)
    return model


def frame_lengths(model: nn.Module, num_samples: torch.Tensor) -> torch.Tensor:
    """Output frames of the model's convolutional front end for inputs of ``num_samples`` samples.

    Args:
        model: a CTC model of the wav2vec2 family (any wrapper with ``.module`` is unwrapped).
        num_samples: (B,) int64, audio samples per utterance (e.g. ``attention_mask.sum(-1)``).

    Returns:
        (B,) int64 frames per utterance: the logits frames that belong to each utterance.
    """
    while hasattr(model, "module"):  # DDP/DataParallel wrappers
        model = model.module
    return model._get_feat_extract_output_lengths(num_samples).to(torch.long)


def samples_per_frame(model: nn.Module) -> int:
    """Audio samples per output frame (the product of the conv strides): frame ``t`` starts at sample
    ``t * samples_per_frame(model)``."""
    while hasattr(model, "module"):
        model = model.module
    return math.prod(model.config.conv_stride)
