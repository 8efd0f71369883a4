"""The fine-tuning job: config -> data -> vocabulary -> model -> ``CTCTrainer`` -> checkpoint and report."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from transformers import EvalPrediction, TrainingArguments, Wav2Vec2Processor, set_seed

from .config import ConfigError, ExperimentConfig, to_dict
from .data.collator import IGNORE_INDEX, CTCDataCollator
from .data.dataset import open_split, open_streaming_split, streaming_texts
from .data.index import load_source_index
from .data.vocab import build_processor, build_vocab
from .decode import collapse, wer_cer
from .fileio import atomic_write_text
from .lm import LM_DIR, build_lm_dir
from .modeling import build_model
from .plots import plot_training_curves
from .trainer import CTCTrainer

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"

# TrainingArguments defaults that differ from transformers' for this project: no hub or wandb reporting
# (offline), and the eval loop keeps our greedy ids instead of logits.
_TRAINING_DEFAULTS: dict[str, Any] = {"report_to": "none"}


class OutputDirError(ValueError):
    """The output directory already holds a different run (or any run, without --resume/--overwrite)."""


@dataclass
class FinetuneResult:
    output_dir: Path
    metrics: dict[str, Any]
    is_main_process: bool = True


def check_output_dir(cfg: ExperimentConfig, resume: bool, overwrite: bool) -> str | None:
    """Refuse to mix runs in one directory; return the checkpoint to resume from, if any.

    A directory with a saved run config is "a run": resuming needs the same config (apart from the
    training length, which a resumed run may extend); starting over needs ``overwrite``.
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
        shutil.rmtree(out)
        return None
    if not resume:
        raise OutputDirError(
            f"output_dir {out} already holds a run; pass --resume to continue it or --overwrite to start over"
        )
    old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    new = to_dict(cfg)
    for tree in (old, new):
        for key in ("max_steps", "num_train_epochs"):
            tree.get("training", {}).pop(key, None)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise OutputDirError(
            f"--resume: output_dir {out} holds a run with a different config "
            f"(differs in: {', '.join(diff)}); use another output_dir or --overwrite"
        )
    last = latest_complete_checkpoint(out)
    if last is None:
        raise OutputDirError(f"--resume: {out} has no complete checkpoint-* directory yet")
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
    if src and Path(src, "vocab.json").is_file():
        return Wav2Vec2Processor.from_pretrained(src)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads its vocab file once, at construction
        return build_processor(build_vocab(train_texts()), tmp, cfg.data.sampling_rate)


def make_compute_metrics(processor: Wav2Vec2Processor):
    """WER/CER of greedy predictions whose padding frames were set to -100 by ``prediction_step``."""
    tokenizer = processor.tokenizer
    blank = tokenizer.pad_token_id

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        hyps, refs = [], []
        for frame_ids, label_ids in zip(pred.predictions, pred.label_ids, strict=True):
            frame_ids = [int(i) for i in np.asarray(frame_ids) if i != IGNORE_INDEX]
            hyps.append(tokenizer.decode(collapse(frame_ids, blank), group_tokens=False))
            # Targets are not collapsed: "ll" in a reference is two letters.
            refs.append(
                tokenizer.decode([int(i) for i in label_ids if i != IGNORE_INDEX], group_tokens=False)
            )
        wer, cer = wer_cer(refs, hyps)
        return {"wer": wer, "cer": cer}

    return compute_metrics


def run_finetune(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune as ``cfg`` says; returns the output directory and the final metrics."""
    out = Path(cfg.output_dir)
    training = {**_TRAINING_DEFAULTS, **cfg.training}
    try:
        args = TrainingArguments(output_dir=str(out), **training)
    except (TypeError, ValueError) as exc:  # transformers' own consistency checks on the values
        raise ConfigError(f"training: {exc}") from exc
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
    train_index = None if streaming else load_source_index(data.train, data, "train", guard=guard)
    processor = _processor_for(
        cfg, lambda: list(streaming_texts(data.train, data)) if streaming else train_index.texts()
    )
    tokenizer = processor.tokenizer
    model = build_model(cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    frames = model._get_feat_extract_output_lengths

    report = None
    if streaming:
        train_ds = open_streaming_split(data.train, processor, data, frames)
    else:
        train_ds, report = open_split(train_index, processor, data, frames, guard=guard)
        logger.info(report.summary())
    eval_ds = None
    if data.eval is not None:
        if data.eval.streaming:
            eval_ds = open_streaming_split(data.eval, processor, data, frames)
        else:
            eval_index = load_source_index(data.eval, data, "eval", guard=guard)
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
        ctc_impl=cfg.loss.impl,
        ctc_reduction=cfg.loss.reduction,
        ctc_zero_infinity=cfg.loss.zero_infinity,
    )
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        atomic_write_text(out / RUN_CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))
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
        write_lm(cfg, out, tokenizer, train_ds.texts if not streaming else streaming_texts(data.train, data))
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
    source = cfg.data.train.manifest or cfg.data.train.hub_name
    lm_dir = build_lm_dir(list(texts), out / LM_DIR, vocab, cfg.decoding.lm_order, delimiter, source)
    logger.info(
        "wrote a %d-gram LM and lexicon of the training transcripts to %s", cfg.decoding.lm_order, lm_dir
    )
    return lm_dir
