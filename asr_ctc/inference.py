"""Inference: decode a test set with a fine-tuned model and score it (WER, CER, per-utterance output)."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from .config import DataConfig, ExperimentConfig, SourceConfig, config_from_dict
from .data.collator import CTCDataCollator
from .data.dataset import SpeechDataset, load_rows, prepare_split
from .decode import collapse, error_counts, greedy_ids, wer_cer
from .io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class InferenceResult:
    wer: float
    cer: float
    num_utterances: int
    transcripts_path: Path
    summary_path: Path
    summary: dict[str, Any]


def resolve_source(
    model_dir: Path, cfg: ExperimentConfig | None, split: str, manifest: str | None
) -> tuple[SourceConfig, DataConfig, Any]:
    """Which data to score: an explicit manifest, else ``split`` of the given config, else of the config
    the model was trained with (saved beside it as run_config.yaml)."""
    if cfg is None:
        saved = model_dir / "run_config.yaml"
        if saved.is_file():
            raw = yaml.safe_load(saved.read_text(encoding="utf-8"))
            cfg = config_from_dict(raw, check_files=False)
    data_cfg = cfg.data if cfg is not None else DataConfig()
    resolve = cfg.resolve if cfg is not None else (lambda p: Path(p))
    if manifest is not None:
        return SourceConfig(manifest=manifest), data_cfg, resolve
    if cfg is None:
        raise ValueError(
            f"--manifest or --config: {model_dir} has no run_config.yaml to find the {split} split in"
        )
    source = getattr(cfg.data, split, None) if split in ("train", "eval", "test") else None
    if source is None:
        raise ValueError(f"--split: the config has no data.{split} source (expected train, eval or test)")
    return source, data_cfg, resolve


@torch.no_grad()
def transcribe(
    model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, dataset: SpeechDataset, batch_size: int = 16
) -> list[str]:
    """Batched greedy CTC decoding; each utterance's logits are cut to its own frame count."""
    model.eval()
    collator = CTCDataCollator(processor)
    tokenizer = processor.tokenizer
    blank = tokenizer.pad_token_id
    device = next(model.parameters()).device
    # Sorting by length keeps padding (wasted compute) small; results are put back in dataset order.
    order = sorted(range(len(dataset)), key=lambda i: len(dataset.input_values[i]))
    hyps: list[str] = [""] * len(dataset)
    for start in tqdm(range(0, len(order), batch_size), desc="decoding", unit="batch"):
        idx = order[start : start + batch_size]
        batch = collator([dataset[i] for i in idx])
        mask = batch["attention_mask"].to(device)
        logits = model(input_values=batch["input_values"].to(device), attention_mask=mask).logits
        lengths = model._get_feat_extract_output_lengths(mask.sum(-1))
        for i, frame_ids in zip(idx, greedy_ids(logits, lengths), strict=True):
            hyps[i] = tokenizer.decode(collapse(frame_ids, blank), group_tokens=False)
    return hyps


def _transcripts_tsv(ids: list[str], refs: list[str], hyps: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "reference", "hypothesis", "errors", "ref_words"])
    for uid, ref, hyp in zip(ids, refs, hyps, strict=True):
        c = error_counts(ref, hyp)
        writer.writerow(
            [uid, ref, hyp, c["substitutions"] + c["deletions"] + c["insertions"], c["ref_words"]]
        )
    return buf.getvalue()


def run_inference(
    model_dir: str | Path,
    cfg: ExperimentConfig | None = None,
    split: str = "test",
    manifest: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> InferenceResult:
    """Decode and score one split; writes ``transcripts.tsv`` and ``summary.json`` into ``output_dir``
    (default: ``MODEL_DIR/inference_<split>``)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"--model: not a directory: {model_dir}")
    source, data_cfg, resolve = resolve_source(model_dir, cfg, split, manifest)
    processor = Wav2Vec2Processor.from_pretrained(str(model_dir))
    model = Wav2Vec2ForCTC.from_pretrained(str(model_dir)).to(device)
    rows = load_rows(source, data_cfg, resolve)
    name = Path(manifest).stem if manifest else split
    dataset, report = prepare_split(rows, processor, data_cfg, name, for_training=False)
    logger.warning(report.summary())
    hyps = transcribe(model, processor, dataset, batch_size)
    wer, cer = wer_cer(dataset.texts, hyps)
    out = Path(output_dir) if output_dir else model_dir / f"inference_{name}"
    summary = {
        "model": str(model_dir),
        "split": name,
        "num_utterances": len(dataset),
        "wer": wer,
        "cer": cer,
        "skipped": {reason: len(v) for reason, v in report.dropped.items()},
        "unknown_characters": report.unknown_chars,
        "data_report": report.summary(),
    }
    tsv_path, json_path = out / "transcripts.tsv", out / "summary.json"
    atomic_write_text(tsv_path, _transcripts_tsv(dataset.ids, dataset.texts, hyps))
    atomic_write_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False))
    return InferenceResult(wer, cer, len(dataset), tsv_path, json_path, summary)
