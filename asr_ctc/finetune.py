"""The fine-tuning job: config -> data -> vocabulary -> model -> ``CTCTrainer`` -> checkpoint, report, LM."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback, TrainingArguments, Wav2Vec2Processor, set_seed

from .config import (
    RUN_CONFIG,
    ConfigError,
    ExperimentConfig,
    check_reporting,
    load_yaml,
    to_dict,
    with_resolved_paths,
)
from .data.collator import CTCDataCollator
from .data.dataset import open_split, open_streaming_split, streaming_texts
from .data.index import load_source_index
from .data.sources import open_source
from .data.vocab import build_processor, build_vocab
from .fileio import atomic_write_text
from .lm import LM_DIR, build_lm_dir
from .metrics import argmax_logits, make_compute_metrics
from .modeling import build_model, frame_lengths, load_checkpoint_config, load_checkpoint_processor
from .plots import plot_training_curves
from .trainer import CTCTrainer
from .variants.encoder import attach_intermediate_ctc

logger = logging.getLogger(__name__)


# TrainingArguments defaults that differ from transformers' for this project: no reporting to external
# loggers unless asked (offline by default). (The memory-light evaluation, ids instead of logits, is the
# preprocess_logits_for_metrics that run_finetune passes, not a TrainingArguments default.)
_TRAINING_DEFAULTS: dict[str, Any] = {"report_to": "none"}

# TrainingArguments keys that do not change the optimisation trajectory: a resumed run may change them.
# Everything else (learning rate, schedule, batch sizes, seed, accumulation, weight decay, precision,
# optimiser, ...) must match, and so must every other section that changes the math (model, loss, and the
# training data with its filters and text normalisation).
_RESUME_FREE_TRAINING_KEYS = frozenset(
    {
        "max_steps",
        "num_train_epochs",
        "run_name",
        "project",
        "disable_tqdm",
        "report_to",
        "per_device_eval_batch_size",
        "prediction_loss_only",
        "batch_eval_metrics",
        "bf16_full_eval",
        "fp16_full_eval",
        "metric_for_best_model",
        "greater_is_better",
        "load_best_model_at_end",
        "skip_memory_metrics",
        "do_train",
        "do_eval",
        "do_predict",
        "resume_from_checkpoint",
        "restore_callback_states_from_checkpoint",
        "enable_jit_checkpoint",
        "push_to_hub",
        "ddp_timeout",
        "local_rank",
        "torch_empty_cache_steps",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
    }
)
_RESUME_FREE_TRAINING_PREFIXES = ("logging_", "log_", "eval_", "save_", "hub_", "include_", "trackio_")
# The data that is not the training data does not change the math either.
_RESUME_FREE_DATA_KEYS = ("eval", "test")


class OutputDirError(ValueError):
    """The output directory already holds a different run (or any run, without --resume/--overwrite)."""


@dataclass
class FinetuneResult:
    output_dir: Path
    metrics: dict[str, Any]
    is_main_process: bool = True


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: tree}


def _training_defaults() -> dict[str, Any]:
    fields = dataclasses.fields(TrainingArguments)
    defaults = {f.name: f.default for f in fields if f.init and f.default is not dataclasses.MISSING}
    return {**defaults, **_TRAINING_DEFAULTS}


def _math_view(tree: dict[str, Any]) -> dict[str, Any]:
    """The parts of a saved/new config (``to_dict`` form) that change what training computes, flattened."""
    data = {k: v for k, v in (tree.get("data") or {}).items() if k not in _RESUME_FREE_DATA_KEYS}
    train = dict(data.get("train") or {})
    if train.get("manifest"):  # the same file, however its path is spelt
        train["manifest"] = os.path.abspath(os.path.expanduser(train["manifest"]))
    data["train"] = train
    training = {**_training_defaults(), **(tree.get("training") or {})}
    training = {
        k: v
        for k, v in training.items()
        if k not in _RESUME_FREE_TRAINING_KEYS and not k.startswith(_RESUME_FREE_TRAINING_PREFIXES)
    }
    view: dict[str, Any] = {}
    for name, section in (("model", tree.get("model")), ("data", data), ("loss", tree.get("loss"))):
        view.update(_flatten(section or {}, name))
    view.update({f"training.{k}": v for k, v in training.items()})
    return view


def resume_differences(saved: dict[str, Any], cfg: ExperimentConfig) -> list[str]:
    """What differs between a saved run config and ``cfg`` in the keys that change the training math, as
    ``key: old -> new`` lines (empty when the run can be resumed with ``cfg``)."""
    old, new = _math_view(saved), _math_view(to_dict(cfg))
    # A key the saved run's version did not have yet (a knob added since) ran at its default: a run saved
    # before loss.focal_gamma existed trained with focal_gamma 0, so resuming it with the default is exact.
    defaults = _math_view(to_dict(ExperimentConfig(output_dir=cfg.output_dir)))
    old = {**{k: v for k, v in defaults.items() if k not in old and k in new}, **old}
    return [
        f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k, "(unset)") != new.get(k, "(unset)")
    ]


def _delete_run(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
    logger.warning(
        "--overwrite: deleting %s and everything in it (%d files%s)",
        out,
        len(files),
        f"; checkpoints {', '.join(checkpoints)}" if checkpoints else "",
    )
    shutil.rmtree(out)


def _finished(out: Path) -> bool:
    """The run ran to its end (it may have saved no checkpoint: save_strategy no)."""
    return (out / "train_metrics.json").exists()


def check_output_dir(cfg: ExperimentConfig, resume: bool, overwrite: bool) -> str | None:
    """Refuse to mix runs in one directory; return the checkpoint to resume from, if any.

    A directory with a saved run config is "a run". Resuming it needs the same config in everything that
    changes the math (see :func:`resume_differences`); starting over needs ``overwrite``. A run that
    stopped before its first checkpoint (a crash, a kill) has nothing to resume and nothing to lose: the
    same command (with or without ``resume``) starts it again from step 0.
    """
    out = Path(cfg.output_dir)
    saved = out / RUN_CONFIG
    if resume and overwrite:
        raise OutputDirError("--resume and --overwrite: choose one")
    if not saved.exists():
        if resume:
            raise OutputDirError(f"--resume: {out} holds no run to resume (no {RUN_CONFIG})")
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise OutputDirError(
                f"output_dir {out} is not empty and holds no asr-ctc run; "
                "choose another directory or pass --overwrite"
            )
        return None
    if overwrite:
        _delete_run(out)
        return None
    diffs = resume_differences(load_yaml(saved.read_text(encoding="utf-8")) or {}, cfg)
    listing = "; ".join(diffs)
    last = latest_complete_checkpoint(out)
    if last is None and not _finished(out):
        if diffs:
            raise OutputDirError(
                f"output_dir {out} holds a run that stopped before its first checkpoint, with a different "
                f"config (differs in: {listing}); pass --overwrite to replace it (it has no checkpoint to "
                "lose) or use another output_dir"
            )
        logger.warning(
            "%s holds a run with this config that stopped before its first checkpoint: starting it again "
            "from step 0",
            out,
        )
        return None
    if not resume:
        raise OutputDirError(
            f"output_dir {out} already holds a run; pass --resume to continue it or --overwrite to start over"
        )
    if diffs:
        raise OutputDirError(
            f"--resume: output_dir {out} holds a run with a different config in what changes training "
            f"(differs in: {listing}); use the run's values, another output_dir, or --overwrite"
        )
    if last is None:
        raise OutputDirError(
            f"--resume: {out} holds a finished run that saved no checkpoint (save_strategy no); "
            "nothing to resume"
        )
    return last


def latest_complete_checkpoint(out: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written.

    The Trainer writes a checkpoint in place, trainer_state.json last; a process killed while saving leaves
    a directory without it (or with a truncated one), which must not be resumed from.
    """
    steps = []
    for path in out.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", path)
            continue
        return str(path)
    return None


def _processor_for(cfg: ExperimentConfig, train_texts: Callable[[], Iterable[str]]) -> Wav2Vec2Processor:
    """A checkpoint that ships a tokenizer keeps it (so its CTC head stays meaningful); otherwise the
    vocabulary is built from the training transcripts (``train_texts()``, read only then)."""
    src = cfg.model.name_or_path
    if src:
        processor = load_checkpoint_processor(src)
        if processor is not None:
            logger.info("using the tokenizer and feature extractor of %s", src)
            return processor
        logger.info("%s ships no tokenizer: building the vocabulary from the training transcripts", src)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads its vocab file once, at construction
        return build_processor(build_vocab(train_texts()), tmp, cfg.data.sampling_rate)


def run_finetune(
    cfg: ExperimentConfig,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> FinetuneResult:
    """Fine-tune as ``cfg`` says; returns the output directory and the final metrics.

    ``callbacks`` are added to the Trainer's own (``transformers.TrainerCallback``: e.g. a step timer, as in
    ``benchmarks/bench_step_time.py``).
    """
    out = Path(cfg.output_dir)
    training = {**_TRAINING_DEFAULTS, **cfg.training}
    check_reporting(training)
    try:
        args = TrainingArguments(output_dir=str(out), **training)
    except (TypeError, ValueError) as exc:  # transformers' own consistency checks on the values
        raise ConfigError(f"training: {exc}") from exc
    # The model the config names must be reachable before the output directory is judged: a rerun of a
    # failed run then reports the config's own error first, not "already holds a run".
    if cfg.model.name_or_path:
        load_checkpoint_config(cfg.model.name_or_path)
    # Only the main process checks (and, with --overwrite, clears) the directory; the others wait for it,
    # then only look up the checkpoint to resume from.
    with args.main_process_first(desc="output directory check"):
        if args.process_index == 0:
            resume_from = check_output_dir(cfg, resume, overwrite)
        else:
            resume_from = latest_complete_checkpoint(out) if resume else None
    set_seed(args.seed)

    def guard():  # the main process builds each index first; the others then memory-map it
        return args.main_process_first(desc="data index")

    data = cfg.data
    streaming = data.train.streaming
    data_seed = args.data_seed if args.data_seed is not None else args.seed
    # Each split's source is opened once; the index, the vocabulary and the dataset all read through it.
    train_src = open_source(data.train, data, "train")
    train_index = None if streaming else load_source_index(train_src, guard=guard)
    processor = _processor_for(
        cfg, lambda: list(streaming_texts(train_src, data)) if streaming else train_index.texts()
    )
    tokenizer = processor.tokenizer
    model = build_model(cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if cfg.loss.intermediate_layers:
        try:
            attach_intermediate_ctc(model, cfg.loss.intermediate_layers, cfg.loss.self_conditioning)
        except ValueError as exc:  # a layer index the model does not have
            raise ConfigError(str(exc)) from exc
    frames = functools.partial(frame_lengths, model)

    report = None
    if streaming:
        train_ds = open_streaming_split(train_src, processor, data, frames, seed=data_seed)
    else:
        train_ds, report = open_split(train_index, processor, data, frames, guard=guard)
        logger.info(report.summary())
    eval_ds = None
    if data.eval is not None:
        eval_src = open_source(data.eval, data, "eval")
        if data.eval.streaming:
            eval_ds = open_streaming_split(eval_src, processor, data, frames, name="eval")
        else:
            eval_index = load_source_index(eval_src, guard=guard)
            eval_ds, eval_report = open_split(eval_index, processor, data, frames, guard=guard)
            logger.info(eval_report.summary())

    trainer = CTCTrainer(
        model=model,
        args=args,
        data_collator=CTCDataCollator(processor),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor) if eval_ds is not None else None,
        # Only the (B, T) frame ids are accumulated over the evaluation set, not (B, T, C) logits.
        preprocess_logits_for_metrics=argmax_logits,
        loss_config=cfg.loss,
        callbacks=list(callbacks),
    )
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        saved = with_resolved_paths(to_dict(cfg))  # absolute manifests: inference works from anywhere
        atomic_write_text(out / RUN_CONFIG, yaml.safe_dump(saved, sort_keys=False))
    train_out = trainer.train(resume_from_checkpoint=resume_from)
    metrics: dict[str, Any] = dict(train_out.metrics)
    if eval_ds is not None:
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        done = [e for e in last if "eval_wer" in e and e.get("step") == trainer.state.global_step]
        # The Trainer may just have evaluated at the final step; do not pay for the same pass twice.
        metrics.update(done[-1] if done else trainer.evaluate())
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        metrics["data"] = {
            "train": report.summary() if report else "streamed",
            "skipped_unreadable_during_training": getattr(train_ds, "skipped", 0),
        }
        atomic_write_text(out / "train_metrics.json", json.dumps(metrics, indent=2, default=float))
        atomic_write_text(out / "log_history.json", json.dumps(trainer.state.log_history, indent=1))
        plot_training_curves(
            trainer.state.log_history,
            out / "training_curves.png",
            title=f"{out.name}: loss.impl={cfg.loss.impl}",
        )
        write_lm(cfg, out, tokenizer, train_ds.texts if not streaming else streaming_texts(train_src, data))
    if args.push_to_hub:  # after lm/ is written, so the LM and the processor go up with the model
        trainer.push_to_hub()
    return FinetuneResult(out, metrics, trainer.is_world_process_zero())


def write_lm(cfg: ExperimentConfig, out: Path, tokenizer: Any, texts: Iterable[str]) -> Path | None:
    """The word n-gram LM and the lexicon of the training transcripts, in ``out/lm`` (for ``inference
    --decoder lm``); skipped for a tokenizer with no word delimiter (no words to spell)."""
    delimiter = getattr(tokenizer, "word_delimiter_token", None)
    vocab = tokenizer.get_vocab()
    if delimiter not in vocab:
        logger.info("no %s/: the tokenizer has no word delimiter", LM_DIR)
        return None
    train = cfg.data.train
    source = train.manifest or train.hub_name or str(train.shards)
    lm_dir = build_lm_dir(list(texts), out / LM_DIR, vocab, cfg.decoding.lm_order, delimiter, source)
    logger.info(
        "wrote a %d-gram LM and lexicon of the training transcripts to %s", cfg.decoding.lm_order, lm_dir
    )
    return lm_dir
