"""Experiment configuration: plain YAML mapped onto dataclasses.

A config file has five top-level keys: ``model``, ``data``, ``loss``, ``training`` and ``output_dir``.
``training`` is handed to :class:`transformers.TrainingArguments` as is (every key is checked against its
fields), the others map onto the dataclasses below. Command-line overrides use dotted keys with YAML values:
``training.max_steps=50``, ``loss.impl=torch``, ``data.lowercase=false``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOSS_IMPLS = ("custom", "torch", "builtin", "reference")
LOSS_REDUCTIONS = ("mean", "sum", "token_mean")
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


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass
class ArchitectureConfig:
    """A small wav2vec2 built from scratch (no pretrained weights): the keys are ``Wav2Vec2Config`` fields.

    The defaults are the offline demo model (about 2M parameters): a 6-layer convolutional front end whose
    first layer strides by 10 (on a CPU the front end dominates the step time, and the standard 7-layer,
    stride-5 stack made each step 3.5x slower for no gain at this scale), then a 4-layer transformer.
    """

    conv_dim: list[int] = field(default_factory=lambda: [64, 128, 128, 128, 128, 128])
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2])
    conv_stride: list[int] = field(default_factory=lambda: [10, 2, 2, 2, 2, 2])
    feat_extract_norm: str = "layer"
    feat_extract_activation: str = "gelu"
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 768
    num_conv_pos_embeddings: int = 64
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
    """One split's data: a local manifest (CSV/TSV/JSONL) or a hub dataset (``hub_name``, config, split)."""

    manifest: str | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None
    # Files for a ``datasets`` builder (``hub_name: json`` / ``csv`` / ``audiofolder``), instead of the hub.
    data_files: str | list[str] | None = None
    max_samples: int | None = None
    # Stream a hub dataset instead of downloading it (a corpus bigger than the disk); see the README.
    streaming: bool = False


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


@dataclass
class LossConfig:
    """Which CTC loss the trainer uses, and how it is reduced.

    ``impl``: ``custom`` (asr_ctc.ctc_loss), ``torch`` (F.ctc_loss), ``builtin`` (the model's own loss) or
    ``reference`` (the slow parity port, for demonstration). ``reduction``: ``mean`` (torch's: each loss over
    its target length, averaged over utterances), ``sum``, or ``token_mean`` (summed losses over the number
    of target tokens in the whole optimiser step, across accumulation steps and processes).
    """

    impl: str = "custom"
    reduction: str = "mean"
    zero_infinity: bool = True


DECODERS = ("greedy", "beam", "lm")


@dataclass
class DecodingConfig:
    """How the inference job decodes (the in-training evaluation is always greedy: it is fast).

    ``decoder``: ``greedy`` (best class per frame), ``beam`` (beam search constrained to the lexicon of
    the training words) or ``lm`` (the same with the word n-gram LM that fine-tuning writes to ``lm/``).
    ``lm_weight``/``word_score``: null takes the values ``inference --tune-lm`` saved with the model, else
    1.0 / 0.0. ``lm_order``: the n-gram order fine-tuning builds.
    """

    decoder: str = "greedy"
    beam_size: int = 100
    beam_threshold: float = 25.0
    lm_weight: float | None = None
    word_score: float | None = None
    lm_order: int = 3

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            choices = ", ".join(DECODERS)
            raise ConfigError(f"decoding.decoder: expected one of {choices}, got {self.decoder!r}")
        if self.beam_size < 1:
            raise ConfigError(f"decoding.beam_size: expected >= 1, got {self.beam_size}")
        if self.lm_order < 1:
            raise ConfigError(f"decoding.lm_order: expected >= 1, got {self.lm_order}")


@dataclass
class ExperimentConfig:
    """A whole fine-tuning run."""

    output_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    training: dict[str, Any] = field(default_factory=dict)
    # Directory the config file was read from: relative manifest paths are resolved against it.
    base_dir: str = "."

    def resolve(self, path: str | None) -> Path | None:
        """Resolve a path from the config against the directory of the config file."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; valid keys{' under ' + prefix if prefix else ''}: "
            + ", ".join(n for n in names if n != "base_dir")
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in kwargs
        ]
        raise ConfigError(f"missing required key {(prefix + '.') if prefix else ''}{missing[0]}") from exc


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
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. training.max_steps=50")
        key, text = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else None)
    return raw


def _validate(cfg: ExperimentConfig, check_files: bool) -> None:
    if cfg.loss.impl not in LOSS_IMPLS:
        raise ConfigError(f"loss.impl: expected one of {', '.join(LOSS_IMPLS)}, got {cfg.loss.impl!r}")
    if cfg.loss.reduction not in LOSS_REDUCTIONS:
        raise ConfigError(
            f"loss.reduction: expected one of {', '.join(LOSS_REDUCTIONS)}, got {cfg.loss.reduction!r}"
        )
    if cfg.loss.impl == "builtin" and cfg.loss.reduction == "token_mean":
        raise ConfigError(
            "loss.reduction: token_mean needs loss.impl custom, torch or reference "
            "(the model's builtin loss only knows mean and sum)"
        )
    from transformers import TrainingArguments  # heavy import, only when a config is really checked

    valid = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    unknown = sorted(set(cfg.training) - valid)
    if unknown:
        raise ConfigError(
            f"unknown key training.{unknown[0]}: not a transformers.TrainingArguments field "
            f"(common ones: {', '.join(_COMMON_TRAINING_KEYS)})"
        )
    if "output_dir" in cfg.training:
        raise ConfigError("training.output_dir: set the top-level output_dir instead")
    for split in ("train", "eval", "test"):
        src = getattr(cfg.data, split)
        if src is None:
            continue
        if (src.manifest is None) == (src.hub_name is None):
            if split == "train" or src.manifest is not None:
                raise ConfigError(f"data.{split}: set exactly one of manifest or hub_name")
            continue
        if src.streaming and src.hub_name is None:
            raise ConfigError(f"data.{split}.streaming: only a hub_name source can be streamed")
        if src.manifest is not None and check_files:
            path = cfg.resolve(src.manifest)
            if not path.is_file():
                raise ConfigError(f"data.{split}.manifest: file not found: {path}")


def config_from_dict(
    raw: dict[str, Any], base_dir: str | Path = ".", check_files: bool = True
) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a raw mapping (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    cfg = _build(ExperimentConfig, {**raw, "base_dir": str(base_dir)}, "")
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
    with open(path, encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML: {exc}") from exc
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, base_dir=".", check_files=check_files)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain mapping (what gets saved next to a checkpoint)."""
    out = dataclasses.asdict(cfg)
    out.pop("base_dir", None)
    return out
