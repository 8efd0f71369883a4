"""The CTC model: a pretrained checkpoint of any CTC-capable speech encoder (local directory or hub id:
wav2vec2, HuBERT, WavLM, Data2VecAudio, wav2vec2-conformer, ...) or a small wav2vec2 from scratch.

Also the one home of the conv front end's arithmetic: :func:`frame_lengths` (output frames per utterance)
and :func:`samples_per_frame` (for timestamps). :func:`build_model` computes every kernel = stride
convolution as an exact matmul (:class:`PatchConv1d`), which the CPU runs much faster in training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
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

logger = logging.getLogger(__name__)

# Every ModelConfig field but these is a dropout/masking knob of the model config, passed on as is.
_NOT_KNOBS = {"name_or_path", "architecture", "freeze_feature_encoder"}
_REGULARISATION_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_KNOBS)


class CheckpointError(ValueError):
    """``model.name_or_path`` cannot be loaded (no such directory or hub id, no network) or does not fit."""


def _unreachable(src: str, exc: Exception) -> CheckpointError:
    where = "a local directory" if Path(src).exists() else "not a local directory, nor a reachable hub model"
    return CheckpointError(f"model.name_or_path: cannot load {src!r} ({where}): {exc}".replace("\n", " "))


def load_checkpoint_config(src: str) -> PretrainedConfig:
    """The model config of checkpoint ``src``; :class:`CheckpointError` when it cannot be reached.

    Offline, a typo, or a missing directory all surface from transformers/huggingface_hub as ``OSError``
    subclasses (``LocalEntryNotFoundError``, ``RepositoryNotFoundError``, ...); a dropped connection can also
    surface as a ``ConnectionError`` or an httpx transport error, which is why the net is wide.
    """
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
    use_patch_convs(model)
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


class PatchConv1d(nn.Conv1d):
    """An ``nn.Conv1d`` whose kernel equals its stride, computed as one matmul over non-overlapping patches.

    Same parameters, state-dict keys and outputs (to float rounding) as the convolution it replaces, so a
    model that uses it saves an ordinary checkpoint. Why: the demo model's first layer reads raw audio (one
    channel, ~50,000 samples per utterance, kernel = stride = 10), and on the CPU oneDNN's backward of that
    convolution took 60-130 ms of a ~550 ms training step; as a (B*n, C*k) x (C*k, out) matmul it is a few ms.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, L) float -> (B, out_channels, (L - k) // k + 1)."""
        k = self.kernel_size[0]
        if x.dim() != 3 or x.shape[-1] < k:
            return super().forward(x)  # let the convolution raise its own error
        batch, channels = x.shape[0], x.shape[1]
        n = x.shape[-1] // k
        # (B, C, n, k) -> (B, n, C*k): the patch layout that matches weight.reshape(out, C*k).
        patches = x[..., : n * k].reshape(batch, channels, n, k).transpose(1, 2)
        patches = patches.reshape(batch, n, channels * k)
        return F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias).transpose(1, 2)


def _is_patch_conv(conv: nn.Conv1d) -> bool:
    return (
        conv.kernel_size == conv.stride
        and conv.padding in (0, (0,))
        and conv.dilation == (1,)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_patch_convs(model: nn.Module) -> int:
    """Replace, in place, every plain ``nn.Conv1d`` of ``model`` whose kernel equals its stride (and has no
    padding, dilation or groups) by a :class:`PatchConv1d` holding the same parameters. Exact: outputs and
    gradients match the convolution's to float rounding, and the state dict is unchanged.

    Returns:
        how many convolutions were replaced (0 for e.g. wav2vec2-base, whose first layer has kernel 10,
        stride 5).
    """
    targets = [name for name, m in model.named_modules() if type(m) is nn.Conv1d and _is_patch_conv(m)]
    for name in targets:
        conv = model.get_submodule(name)
        patch = PatchConv1d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            stride=conv.stride[0],
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        patch.load_state_dict(conv.state_dict())
        patch.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            patch.bias.requires_grad_(conv.bias.requires_grad)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, patch)
    return len(targets)


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
