"""Experiment configuration: plain YAML mapped onto dataclasses.

Top-level keys of a config file: ``model``, ``data``, ``loss``, ``decoding``, ``training``, ``output_dir``.
``training`` is handed to :class:`transformers.TrainingArguments` (every key and value is checked against
its fields and their types first), the others map onto the dataclasses below. Command-line overrides use
dotted keys with YAML values: ``training.max_steps=50``, ``loss.impl=torch``, ``data.lowercase=false``.

Values are read the way people write them, not by YAML 1.1's rules: ``3e-4`` and ``1e5`` are numbers (YAML
1.1 wants ``3.0e-4``), only ``true``/``false`` are booleans (``no``, ``off``, ``on``, ``yes`` stay words, so
``training.eval_strategy=no`` means the strategy "no"), and an unquoted scalar is given the type of the field
it fills: ``data.hub_config=2017`` is the string "2017", ``training.learning_rate=3e-4`` the float 0.0003.
Paths in a config are relative to the working directory, like every other command-line path.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_COMMON_TRAINING_KEYS = (
    "max_steps",
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "eval_strategy",
    "warmup_steps",
    "use_cpu",
)


# The resolved config a fine-tuning run saves in its output directory (inference reads it back).
RUN_CONFIG = "run_config.yaml"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


# -- reading YAML -------------------------------------------------------------------------------------------


class _Plain(str):
    """An unquoted YAML scalar that is neither null nor true/false, kept as written until the schema says
    which type the field it fills has (:func:`_coerce`)."""


# YAML 1.2 core-schema numbers: a float needs no dot (3e-4, 1e5), and a leading zero is not octal.
_INT_RE = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.1's implicit typing removed: only ``true``/``false`` (any case
    spelling YAML 1.2 allows) are booleans, null stays null, and every other unquoted scalar becomes a
    :class:`_Plain` string that the schema types later."""


_RETYPED = {_BOOL_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _RETYPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return _Plain(value) if node.style is None and node.tag == _STR_TAG else value


_ConfigLoader.add_constructor(_STR_TAG, _construct_str)


def _infer(text: str) -> Any:
    """The YAML 1.2 core-schema value of an unquoted scalar: int, float, or the text itself."""
    if _INT_RE.fullmatch(text):
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    if _FLOAT_RE.fullmatch(text):
        low = text.lower()
        if low.lstrip("+-") in (".inf", ".nan"):
            return float(low.replace(".", ""))  # Python spells them inf, -inf, nan
        return float(text)
    return str(text)


def _plain_data(value: Any) -> Any:
    """``value`` with every :class:`_Plain` typed by YAML 1.2 rules (for fields of type Any or dict)."""
    if isinstance(value, _Plain):
        return _infer(value)
    if isinstance(value, dict):
        return {str(k) if isinstance(k, str) else k: _plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_data(v) for v in value]
    return value


def _load_raw(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(text: str) -> Any:
    """Parse YAML text with the config rules above (3e-4 is a number, ``no`` is a word); every value comes
    back as an ordinary Python type."""
    return _plain_data(_load_raw(text))


@dataclass
class ArchitectureConfig:
    """A small wav2vec2 built from scratch (no pretrained weights): the keys are ``Wav2Vec2Config`` fields.

    The defaults are the offline demo model (about 2.05M parameters), shaped for a CPU, where the front end
    at the audio rate dominated the step: a 6-layer convolutional front end whose first layer strides by 10
    and is narrow (32 channels, with wav2vec2-base's single GroupNorm instead of a LayerNorm per layer; it
    normalises over the padded input, so padding changes outputs slightly: the README's GroupNorm caveat), a
    stride of 480 samples (30 ms frames: the corpus speaks about 18 characters per second, so CTC keeps
    about 1.8x the frames it needs), then a 4-layer transformer. A training step costs less than half of
    the previous demo model's (20 ms frames, a 64-channel first layer, a LayerNorm in every conv layer),
    which was itself 3.5x cheaper than the standard 7-layer, stride-5 stack; ``docs/demo-recipe.md``'s lever
    table has the measurements.
    """

    conv_dim: list[int] = field(default_factory=lambda: [32, 64, 128, 128, 128, 128])
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2])
    conv_stride: list[int] = field(default_factory=lambda: [10, 3, 2, 2, 2, 2])
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 768
    # 32 frames of 30 ms (~1 s) of relative-position context, against 64 x 20 ms before: the grouped
    # convolution's backward was ~10% of a step, and halving its kernel made the step ~7% faster.
    num_conv_pos_embeddings: int = 32
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = True


@dataclass
class ModelConfig:
    """Which model to fine-tune.

    ``name_or_path`` is a local checkpoint directory or a hub id (e.g. ``facebook/wav2vec2-base``); leave it
    empty to build ``architecture`` from scratch. The dropout and masking knobs override the checkpoint's.
    """

    name_or_path: str | None = None
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    freeze_feature_encoder: bool = False
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.0
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.0
    layerdrop: float = 0.0
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10


@dataclass
class SourceConfig:
    """One split's data: a local manifest (CSV/TSV/JSONL), a hub dataset (``hub_name``, config, split) or
    WebDataset tar ``shards``."""

    manifest: str | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None
    # Files for a ``datasets`` builder (``hub_name: json`` / ``csv`` / ``audiofolder``), instead of the hub.
    data_files: str | list[str] | None = None
    max_samples: int | None = None
    # Stream a hub dataset instead of downloading it (a corpus bigger than the disk); docs/data-at-scale.md.
    streaming: bool = False

    # -- sources beyond one manifest (asr_ctc.data.sources; docs/your-corpus.md) --------------------------
    shards: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "WebDataset tar shards: a glob (data/shards/shard-*.tar), a brace range "
            "(shard-{000000..000099}.tar) or a list of either; each utterance is "
            "<key>.wav|flac|mp3|ogg|opus, <key>.txt and optionally <key>.json. Indexed like a manifest; "
            "with streaming: true, read in order without an index"
        },
    )
    audio_root: str | None = field(
        default=None,
        metadata={
            "help": "the folder relative audio paths of a manifest resolve against (default: the manifest's "
            "own folder); e.g. Common Voice's clips/"
        },
    )
    shuffle_buffer: int = field(
        default=1000,
        metadata={
            "help": "streamed sources: examples in the shuffle buffer (the shard order is shuffled too)"
        },
    )


@dataclass
class DataConfig:
    """Where the audio and transcripts come from and how they are cleaned."""

    train: SourceConfig = field(default_factory=SourceConfig)
    eval: SourceConfig | None = None
    test: SourceConfig | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    id_column: str = "id"
    sampling_rate: int = 16000
    min_duration_s: float = 0.2
    max_duration_s: float = 20.0
    lowercase: bool = True
    # Where split indexes are cached (default: $ASR_CTC_CACHE/index, else ~/.cache/asr_ctc/index).
    cache_dir: str | None = None
    # Processes that build an index (default: up to 8 for splits of 20,000 rows or more, else 1).
    preprocessing_num_workers: int | None = None
    # Characters removed from transcripts before building the vocabulary (punctuation, typically).
    chars_to_drop: str = ',?.!-;:"“”%‘’�()[]{}'


LOSS_IMPLS = ("custom", "torch", "builtin", "reference")
LOSS_REDUCTIONS = ("mean", "sum", "token_mean")


@dataclass
class LossConfig:
    """Which CTC loss the trainer uses, and how it is reduced; checked when it is built (a bad choice raises
    ``ValueError`` naming the field)."""

    impl: str = field(
        default="custom",
        metadata={
            "help": "custom (asr_ctc.ctc_loss), torch (F.ctc_loss), builtin (the model's own loss) or "
            "reference (the slow parity port, for demonstration)",
            "choices": LOSS_IMPLS,
        },
    )
    reduction: str = field(
        default="mean",
        metadata={
            "help": "mean (torch's: each loss over its target length, averaged over utterances), sum, or "
            "token_mean (summed losses over the number of target tokens in the whole optimiser step, "
            "across accumulation steps and processes)",
            "choices": LOSS_REDUCTIONS,
        },
    )
    zero_infinity: bool = field(
        default=True,
        metadata={"help": "zero the loss and gradient of utterances that have no valid alignment"},
    )
    # The loss variants (asr_ctc.variants, docs/loss-variants.md): one key each, 0 gives plain CTC exactly.
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "epsilon: add epsilon x the frame-wise KL(uniform || posteriors), summed over real "
            "frames (label smoothing for CTC, as in neural_sp and bonito)",
            "range": (0.0, None),
        },
    )
    focal_gamma: float = field(
        default=0.0,
        metadata={
            "help": "gamma of focal CTC (Feng et al. 2019): each utterance's loss L becomes "
            "(1 - exp(-L))^gamma L",
            "range": (0.0, None),
        },
    )
    max_entropy: float = field(
        default=0.0,
        metadata={
            "help": "beta of maximum-entropy CTC (Liu et al., NeurIPS 2018): subtract beta x the entropy of "
            "the alignment posterior (needs impl custom)",
            "range": (0.0, None),
            "lattice": True,
        },
    )
    wildcard_weight: float = field(
        default=0.0,
        metadata={
            "help": "W-CTC (Cai et al., ICLR 2022): a wildcard before and after each transcript, for "
            "transcripts missing their first or last words; each frame it absorbs scores weight x 1 "
            "(1 = the paper's; needs impl custom)",
            "range": (0.0, 1.0),
            "lattice": True,
        },
    )
    star_weight: float = field(
        default=0.0,
        metadata={
            "help": "a star token in every gap of the transcript, for missing words anywhere (STC, Pratap et "
            "al. 2022; OTC, Gao et al. 2023): each frame it absorbs scores weight x P(non-blank), a "
            "penalty of -log(weight) (needs impl custom)",
            "range": (0.0, 1.0),
            "lattice": True,
        },
    )
    variants: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "your own variants, registered with asr_ctc.variants.register_variant: name -> value "
            "(0 = off)"
        },
    )
    # -- timing variants (asr_ctc.variants.timing, docs/timestamps-training.md): 0 = plain CTC exactly --
    label_prior_beta: float = field(
        default=0.0,
        metadata={
            "help": "label-prior CTC (Huang et al. 2024): train on log p_t(k) - beta * log prior(k), the "
            "prior a running average of the model's frame posteriors; 0 = off (needs impl custom)"
        },
    )
    label_prior_warmup_steps: int = field(
        default=0,
        metadata={"help": "optimiser steps of plain CTC before the label prior is used (collected anyway)"},
    )
    label_prior_momentum: float = field(
        default=0.9,
        metadata={"help": "weight of the old prior in each step's update of the running average, in [0, 1)"},
    )
    delay_penalty: float = field(
        default=0.0,
        metadata={
            "help": "delay-penalised CTC (Yao et al. 2023, k2): each token onset at frame t adds "
            "-lambda * (t - T // 2) to the path score; 0 = off (needs impl custom)"
        },
    )
    # -- encoder-level variants (asr_ctc.variants.encoder): each 0 / empty gives plain CTC exactly --------
    intermediate_layers: list[int] = field(
        default_factory=list,
        metadata={
            "help": "intermediate CTC (Lee & Watanabe 2021): 1-based encoder layers whose outputs also get a "
            "CTC loss through the shared head, e.g. [2]; each in [1, num_hidden_layers)"
        },
    )
    intermediate_weight: float = field(
        default=0.0,
        metadata={
            "help": "lambda in (1 - lambda) L_final + lambda mean_k L_k; 0 is plain CTC",
            "range": (0.0, 1.0),
        },
    )
    self_conditioning: bool = field(
        default=False,
        metadata={
            "help": "self-conditioned CTC (Nozaki & Komatsu 2021): add a projection of each intermediate "
            "layer's posteriors to its output (needs intermediate_layers; saved with the model)"
        },
    )
    consistency_weight: float = field(
        default=0.0,
        metadata={
            "help": "CR-CTC (Yao et al. 2025): two time-masked views of each batch, CTC on both plus this "
            "weight times their symmetric stop-gradient KL (paper: 0.2, with larger time masks); 0 is plain "
            "CTC; needs model.mask_time_prob > 0",
            "range": (0.0, None),
        },
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name}: expected one of {', '.join(choices)}, got {value!r}")
        if not isinstance(self.zero_infinity, bool):
            raise ValueError(f"zero_infinity: expected bool, got {self.zero_infinity!r}")
        self._check_variants()
        if (self.intermediate_weight > 0 or self.self_conditioning) and not self.intermediate_layers:
            raise ValueError(
                "intermediate_layers: intermediate_weight > 0 and self_conditioning need at least one layer"
            )
        if self.impl == "builtin" and self.intermediate_layers:
            raise ValueError(
                "impl: builtin computes its loss inside the model; intermediate_layers need impl custom, "
                "torch or reference"
            )
        if self.impl == "builtin" and self.reduction == "token_mean":
            raise ValueError(
                "reduction: token_mean needs impl custom, torch or reference "
                "(the model's builtin loss only knows mean and sum)"
            )
        self._check_timing()

    def _check_timing(self) -> None:
        """The label-prior and delay-penalty knobs (see their help)."""
        for name in ("label_prior_beta", "delay_penalty"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        steps = self.label_prior_warmup_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"label_prior_warmup_steps: expected an int >= 0, got {steps!r}")
        momentum = self.label_prior_momentum
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"label_prior_momentum: expected a number in [0, 1), got {momentum!r}")
        if self.delay_penalty > 0:
            lattice = [key for key in ("max_entropy", "wildcard_weight", "star_weight") if getattr(self, key)]
            if lattice:
                raise ValueError(
                    f"delay_penalty: runs its own lattice and cannot be combined with {', '.join(lattice)}"
                )
        if self.impl == "custom":
            return
        if self.label_prior_beta > 0:
            why = {
                # The honest choice: torch's loss would train silently on a wrong gradient.
                "torch": "torch.nn.functional.ctc_loss's backward assumes normalised log-probs (it returns "
                "exp(log_probs) - posteriors, pytorch#122243, #52241), so its gradient on prior-scaled "
                "scores is wrong",
                "builtin": "the model's builtin loss only sees its own log-softmax",
                "reference": "the reference port renormalises its input with a softmax",
            }[self.impl]
            raise ValueError(
                f"impl: {self.impl} cannot train with label_prior_beta > 0: {why}; use impl custom "
                "(asr_ctc.ctc_loss, exact for any scores)"
            )
        if self.delay_penalty > 0:
            raise ValueError(
                f"impl: delay_penalty > 0 runs its own lattice (asr_ctc.variants.timing), not impl "
                f"{self.impl}; use impl custom"
            )

    def _check_variants(self) -> None:
        on = []
        for f in dataclasses.fields(self):
            if "range" not in f.metadata:
                continue
            value, (low, high) = getattr(self, f.name), f.metadata["range"]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < low or (high is not None and value > high):
                expected = f"a number in [{low}, {high}]" if high is not None else f"a finite number >= {low}"
                raise ValueError(f"{f.name}: expected {expected}, got {value!r}")
            if value and f.metadata.get("lattice") and self.impl != "custom":
                raise ValueError(
                    f"{f.name}: needs impl custom (the variants' lattice), got impl {self.impl!r}"
                )
            if value:
                on.append(f.name)
        if not isinstance(self.variants, dict):
            raise ValueError(f"variants: expected a mapping of name -> number, got {self.variants!r}")
        # The names are checked when the loss is computed (asr_ctc.variants.per_utterance_loss), not here:
        # inference reads a run's config in a process that never imported the user's variant module.
        for name, value in self.variants.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"variants: expected variant names, got {name!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"variants: {name}: expected a finite number, got {value!r}")
            if value:
                on.append(f"variants.{name}")
        if on and self.impl == "builtin":
            raise ValueError(
                f"impl: builtin computes plain CTC inside the model; {', '.join(on)} need impl custom "
                "(or torch/reference for label_smoothing, focal_gamma and variants)"
            )


DECODERS = ("greedy", "beam", "lm")


@dataclass
class DecodingConfig:
    """How the inference job decodes (the in-training evaluation is always greedy: it is fast).

    ``decoder``: ``greedy`` (best class per frame), ``beam`` (beam search constrained to the lexicon of
    the training words) or ``lm`` (the same with the word n-gram LM that fine-tuning writes to ``lm/``).
    ``lm_weight``/``word_score``: null takes the values ``inference --tune-lm`` saved with the model, else
    1.0 / 0.0. ``lm_order``: the n-gram order fine-tuning builds. ``blank_penalty``: subtracted from the
    blank's log-probability at every frame before greedy or beam decoding and before the forced alignment
    of ``--timestamps`` (0: plain CTC; see docs/timestamps.md).
    """

    decoder: str = "greedy"
    beam_size: int = 100
    beam_threshold: float = 25.0
    lm_weight: float | None = None
    word_score: float | None = None
    lm_order: int = 3
    blank_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            choices = ", ".join(DECODERS)
            raise ConfigError(f"decoding.decoder: expected one of {choices}, got {self.decoder!r}")
        if self.beam_size < 1:
            raise ConfigError(f"decoding.beam_size: expected >= 1, got {self.beam_size}")
        if self.lm_order < 1:
            raise ConfigError(f"decoding.lm_order: expected >= 1, got {self.lm_order}")
        if not math.isfinite(self.blank_penalty):
            raise ConfigError(f"decoding.blank_penalty: expected a finite number, got {self.blank_penalty}")


@dataclass
class ExperimentConfig:
    """A whole fine-tuning run."""

    output_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    training: dict[str, Any] = field(default_factory=dict)



# -- checking values against the schema ---------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(e.value) for e in tp)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_args(tp):  # list[str], dict[str, Any]
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _got(value: Any) -> str:
    value = _plain_data(value)  # name what the user wrote: "got float 1.5", not "got str '1.5'"
    if isinstance(value, str):
        return f"str {str(value)!r}"
    return f"{type(value).__name__} {value!r}"


def _coerce(value: Any, tp: Any, key: str, int_to_float: bool = True) -> Any:
    """Check (and gently convert) one YAML value against a field type.

    A :class:`_Plain` (unquoted) scalar takes the field's type: text for ``str``, a number for ``int`` or
    ``float`` when it spells one. A quoted string stays a string. ``int_to_float`` turns ints into floats
    for float fields (the project's dataclasses); ``TrainingArguments`` values keep the number as written.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        # transformers types its enum options "Enum | str" for convenience; only the enum values are valid.
        enums = [a for a in members if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and set(members) == {enums[0], str}:
            return _coerce(value, enums[0], key, int_to_float)
        for arg in members:
            try:
                return _coerce(value, arg, key, int_to_float)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_got(value)}")
        return _build(tp, value, key)
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_got(value)}")
        return [_coerce(v, item_tp, f"{key}[{i}]", int_to_float) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_got(value)}")
        return _plain_data(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        plain = _infer(value) if isinstance(value, _Plain) else value
        if plain in allowed and type(plain) in {type(a) for a in allowed}:
            return plain
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value.value
        if isinstance(value, str) and value in {e.value for e in tp}:
            return str(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, _Plain) and _INT_RE.fullmatch(value):
            return _infer(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, _Plain) and _FLOAT_RE.fullmatch(value):
            value = _infer(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if int_to_float else value
    elif tp is str:
        if isinstance(value, str):
            return str(value)
    elif tp is Any:
        return _plain_data(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(raw) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; valid keys{' under ' + prefix if prefix else ''}: "
            + ", ".join(names)
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        kwargs[str(name)] = _coerce(value, hints[name], key)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in kwargs
    ]
    if missing:
        raise ConfigError(f"missing required key {(prefix + '.') if prefix else ''}{missing[0]}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a dataclass's own __post_init__ check, whose message starts with the field
        raise ConfigError(f"{prefix}.{exc}" if prefix else str(exc)) from exc


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping; values are YAML, read by the same rules
    as the config file."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. training.max_steps=50")
        key, text = item.split("=", 1)
        try:
            value = _load_raw(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from exc
        _set_dotted(raw, key.strip(), value)
    return raw


def _check_training(training: dict[str, Any]) -> dict[str, Any]:
    """Check every ``training`` key and value against :class:`transformers.TrainingArguments`' fields."""
    from transformers import TrainingArguments  # heavy import, only when a config is really checked

    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    unknown = sorted(str(k) for k in set(training) - fields)
    if unknown:
        raise ConfigError(
            f"unknown key training.{unknown[0]}: not a transformers.TrainingArguments field "
            f"(common ones: {', '.join(_COMMON_TRAINING_KEYS)})"
        )
    if "output_dir" in training:
        raise ConfigError("training.output_dir: set the top-level output_dir instead")
    hints = typing.get_type_hints(TrainingArguments)
    return {str(k): _coerce(v, hints[k], f"training.{k}", int_to_float=False) for k, v in training.items()}


def _validate(cfg: ExperimentConfig, check_files: bool) -> None:
    if cfg.loss.consistency_weight > 0 and cfg.model.mask_time_prob <= 0:
        # CR-CTC's two views differ only by their time masks: without masking its KL is identically 0.
        raise ConfigError("loss.consistency_weight: needs model.mask_time_prob > 0 (the two views' masks)")
    for split in ("train", "eval", "test"):
        src = getattr(cfg.data, split)
        if src is None:
            continue
        given = [k for k in ("manifest", "hub_name", "shards") if getattr(src, k) is not None]
        if len(given) != 1:
            if split == "train" or given:
                raise ConfigError(
                    f"data.{split}: set exactly one of manifest, hub_name or shards"
                    + (f" (got {', '.join(given)})" if given else "")
                )
            continue
        if src.streaming and src.manifest is not None:
            raise ConfigError(f"data.{split}.streaming: only a hub_name or shards source can be streamed")
        if src.audio_root is not None and src.manifest is None:
            raise ConfigError(f"data.{split}.audio_root: only a manifest has relative audio paths to resolve")
        if src.shuffle_buffer < 1:
            raise ConfigError(f"data.{split}.shuffle_buffer: expected >= 1, got {src.shuffle_buffer}")
        if src.manifest is not None and check_files:
            path = Path(src.manifest).expanduser()
            if path.is_dir():
                raise ConfigError(
                    f"data.{split}.manifest: {path} is a directory; expected a .tsv, .csv or .jsonl file "
                    "(asr-ctc-prepare writes one from a corpus folder)"
                )
            if not path.is_file():
                raise ConfigError(f"data.{split}.manifest: file not found: {path}")


# Where report_to integrations come from, for the ones this project offers as extras.
_REPORTING_PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "asr-ctc[tensorboard]")}


def check_reporting(training: dict[str, Any]) -> None:
    """Fail early, with a ConfigError, when ``training.report_to`` names a logger whose package is missing
    (the Trainer would only fail once the model and data are loaded)."""
    report_to = training.get("report_to", "none")
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        modules, extra = _REPORTING_PACKAGES.get(name, ((name,), None))
        if name in ("none", "all"):
            continue
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            how = f"pip install '{extra}'" if extra else f"pip install {modules[0]}"
            raise ConfigError(
                f"training.report_to: {name} needs the {modules[0]} package, which is not installed ({how})"
            )


def config_from_dict(raw: dict[str, Any], check_files: bool = True) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a raw mapping (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    # training is checked against TrainingArguments' own field types, with its unquoted values still raw.
    training = raw.pop("training", None) or {}
    if not isinstance(training, dict):
        raise ConfigError(f"training: expected a mapping, got {_got(training)}")
    cfg = _build(ExperimentConfig, raw, "")
    cfg.training = _check_training(training)
    _validate(cfg, check_files)
    return cfg


def load_config(
    path: str | Path, overrides: list[str] | None = None, check_files: bool = True
) -> ExperimentConfig:
    """Read a YAML config, apply ``key=value`` overrides, and validate it.

    Relative paths inside the config (manifests, output_dir) are relative to the working directory the
    command runs from, like every other command-line path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        raw = _load_raw(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from exc
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, check_files=check_files)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain mapping (what gets saved next to a checkpoint)."""
    return dataclasses.asdict(cfg)


def with_resolved_paths(tree: dict[str, Any]) -> dict[str, Any]:
    """A config mapping (:func:`to_dict`'s form) with each split's ``manifest`` made absolute, resolved
    against the working directory: what a run saves, so that its ``run_config.yaml`` names the same files
    from any working directory (``inference --split``)."""
    data = dict(tree.get("data") or {})
    for split in ("train", "eval", "test"):
        source = data.get(split)
        if isinstance(source, dict) and source.get("manifest"):
            data[split] = {**source, "manifest": str(Path(source["manifest"]).expanduser().resolve())}
    return {**tree, "data": data}
