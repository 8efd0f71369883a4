"""Inference: decode a test set (or plain audio files) and score it, with optional LM, timestamps and plots.

Memory stays bounded whatever the test set's size: the split's index is memory-mapped, audio is decoded
a batch at a time (batches sorted by length, from the index, to keep padding small), and only strings are
kept per utterance. Decoding helpers live in :mod:`asr_ctc.decode`; this module only drives them.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, replace
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm
from transformers import AutoModelForCTC, Wav2Vec2Processor

from .config import (
    RUN_CONFIG,
    DataConfig,
    DecodingConfig,
    ExperimentConfig,
    SourceConfig,
    apply_overrides,
    config_from_dict,
)
from .data.collator import IGNORE_INDEX, CTCDataCollator
from .data.dataset import SpeechDataset, open_split
from .data.index import index_audio_files, load_source_index, min_ctc_frames
from .decode import (
    BeamSearchDecoder,
    error_counts,
    greedy_decode,
    timed_words,
    to_ctm,
    token_spans,
    tune_lm_weights,
    wer_cer,
    word_spans,
)
from .fileio import atomic_write_text
from .lm import LM_DIR
from .modeling import frame_lengths, samples_per_frame

logger = logging.getLogger(__name__)

TUNED_LM = "tuned.json"
# The (lm_weight, word_score) grid of --tune-lm: LM weights around KenLM's log10 scale, insertion bonuses
# around zero (a positive bonus offsets the LM's bias towards fewer, more frequent words).
TUNE_LM_WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0)
TUNE_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)


@dataclass
class InferenceResult:
    wer: float | None
    cer: float | None
    num_utterances: int
    transcripts_path: Path
    summary_path: Path
    summary: dict[str, Any]


def find_run_dir(model_dir: Path) -> Path:
    """The directory with the run's files (``run_config.yaml``, ``lm/``): the model's own, or for a
    ``checkpoint-N`` inside a run, its parent."""
    if (model_dir / RUN_CONFIG).is_file() or not (model_dir.parent / RUN_CONFIG).is_file():
        return model_dir
    return model_dir.parent


def load_run_config(model_dir: Path, config: str | None, overrides: list[str]) -> ExperimentConfig | None:
    """The config to take the data section from: ``config`` if given, else the one saved with the run;
    ``overrides`` apply to whichever it is (an override with no config to apply to is an error)."""
    from .config import load_config

    if config is not None:
        return load_config(config, overrides)
    saved = find_run_dir(model_dir) / RUN_CONFIG
    if not saved.is_file():
        if overrides:
            raise ValueError(
                f"overrides {' '.join(overrides)}: {model_dir} has no {RUN_CONFIG} to apply them to; "
                "pass --config"
            )
        return None
    raw = apply_overrides(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}, overrides)
    return config_from_dict(raw, check_files=False)


def _source(cfg: ExperimentConfig | None, split: str, manifest: str | None) -> SourceConfig:
    if manifest is not None:
        return SourceConfig(manifest=manifest)
    if cfg is None:
        raise ValueError("--manifest, --audio or --config: the model has no run_config.yaml naming a split")
    source = getattr(cfg.data, split, None) if split in ("train", "eval", "test") else None
    if source is None:
        raise ValueError(f"--split: the config has no data.{split} source (expected train, eval or test)")
    if source.streaming:
        return replace(source, streaming=False)  # inference reads an index; streamed sets go via --manifest
    return source


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length (longest first, so an out-of-memory error comes at once)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def _decoder(run_dir: Path, processor: Wav2Vec2Processor, opts: DecodingConfig, **weights: float):
    lm_dir = run_dir / LM_DIR
    if not (lm_dir / "lexicon.txt").is_file():
        raise ValueError(
            f"--decoder {opts.decoder}: {lm_dir} has no lexicon.txt (fine-tuning writes it; or run "
            f"asr-ctc-build-lm --model {run_dir})"
        )
    tokenizer = processor.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return BeamSearchDecoder(
        tokens,
        blank_id=tokenizer.pad_token_id,
        word_delimiter=tokenizer.word_delimiter_token,
        lexicon_path=lm_dir / "lexicon.txt",
        lm_path=lm_dir / "lm.arpa" if opts.decoder == "lm" else None,
        beam_size=opts.beam_size,
        beam_threshold=opts.beam_threshold,
        **weights,
    )


def _lm_weights(run_dir: Path, opts: DecodingConfig) -> dict[str, float]:
    """Explicit weights, else those --tune-lm saved, else 1.0 / 0.0."""
    tuned_path = run_dir / LM_DIR / TUNED_LM
    tuned = json.loads(tuned_path.read_text()) if tuned_path.is_file() else {}
    lm_weight = opts.lm_weight if opts.lm_weight is not None else tuned.get("lm_weight", 1.0)
    word_score = opts.word_score if opts.word_score is not None else tuned.get("word_score", 0.0)
    if opts.decoder == "beam":  # no LM: only the insertion bonus matters
        lm_weight = 0.0
    return {"lm_weight": float(lm_weight), "word_score": float(word_score)}


@torch.no_grad()
def _emissions(model, processor, dataset: SpeechDataset, batch_size: int, num_workers: int, device: str):
    """Yield (dataset indices, batch, (B, T, C) float32 log-probs on the CPU, (B,) frame lengths)."""
    batches = length_sorted_batches(dataset.lengths, batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=CTCDataCollator(processor), num_workers=num_workers
    )
    for idx, batch in zip(batches, tqdm(loader, desc="decoding", unit="batch"), strict=True):
        mask = batch["attention_mask"].to(device)
        logits = model(input_values=batch["input_values"].to(device), attention_mask=mask).logits
        lengths = frame_lengths(model, mask.sum(-1)).cpu()
        yield idx, batch, logits.float().log_softmax(-1).cpu(), lengths


def _timestamps(log_probs, lengths, labels_per_utt, blank, delimiter, id_to_token, spf):
    """Word timings of each utterance's token sequence (the hypothesis or the reference), by forced
    alignment; None for a sequence with no feasible alignment in its frames."""
    out: list[Any] = [None] * len(labels_per_utt)
    feasible = [i for i, y in enumerate(labels_per_utt) if min_ctc_frames(y) <= int(lengths[i])]
    if not feasible:
        return out
    width = max(1, max(len(labels_per_utt[i]) for i in feasible))
    targets = torch.full((len(feasible), width), blank, dtype=torch.long)
    for row, i in enumerate(feasible):
        targets[row, : len(labels_per_utt[i])] = torch.tensor(labels_per_utt[i], dtype=torch.long)
    target_lengths = torch.tensor([len(labels_per_utt[i]) for i in feasible])
    from .align import forced_align

    path, scores = forced_align(
        log_probs[feasible].transpose(0, 1), targets, lengths[feasible], target_lengths, blank=blank
    )
    for row, i in enumerate(feasible):
        n = int(lengths[i])
        spans = token_spans(path[row, :n].tolist(), blank, scores[row, :n].tolist())
        out[i] = (path[row, :n], timed_words(word_spans(spans, delimiter), id_to_token, spf))
    return out


def run_inference(
    model_dir: str | Path,
    cfg: ExperimentConfig | None = None,
    split: str = "test",
    manifest: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
    *,
    audio: list[str] | None = None,
    decoding: DecodingConfig | None = None,
    tune_lm: bool = False,
    tune_utterances: int = 500,
    timestamps: bool = False,
    plot: int = 0,
    num_workers: int = 0,
) -> InferenceResult:
    """Decode and score one split (or transcribe ``audio`` files/folders); writes ``transcripts.tsv`` and
    ``summary.json`` (plus ``words.json``/``*.ctm`` with ``timestamps``, ``plots/`` with ``plot``) into
    ``output_dir`` (default: ``MODEL_DIR/inference_<split>``).

    Args:
        model_dir: a fine-tuned model directory, or a ``checkpoint-N`` inside one.
        cfg: the config naming the data (default: the run's saved ``run_config.yaml``).
        decoding: decoder and its options (default: ``cfg.decoding``, else greedy).
        tune_lm: grid-search ``lm_weight``/``word_score`` on the eval split first and save the best to
            ``lm/tuned.json`` beside the model, where later runs find them.
        tune_utterances: how many eval utterances (the first ones) ``tune_lm`` decodes per grid point.
        device: ``cuda`` when available, else ``cpu``, unless given.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"--model: not a directory: {model_dir}")
    run_dir = find_run_dir(model_dir)
    if cfg is None:
        cfg = load_run_config(model_dir, None, [])
    opts = decoding or (cfg.decoding if cfg is not None else DecodingConfig())
    if tune_lm and tune_utterances < 1:  # checked before the model is loaded
        raise ValueError(f"tune_utterances: expected at least 1, got {tune_utterances}")
    if tune_lm and opts.decoder != "lm":
        opts = replace(opts, decoder="lm")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data_cfg = cfg.data if cfg is not None else DataConfig()
    processor = Wav2Vec2Processor.from_pretrained(
        str(model_dir if (model_dir / "vocab.json").is_file() else run_dir)
    )
    model = AutoModelForCTC.from_pretrained(str(model_dir)).to(device).eval()
    tokenizer = processor.tokenizer
    blank = tokenizer.pad_token_id

    if audio:
        index, name = index_audio_files(audio, data_cfg), "audio"
    else:
        source = _source(cfg, split, manifest)
        name = Path(manifest).stem if manifest else split
        index = load_source_index(source, data_cfg, name)
    dataset, report = open_split(index, processor, data_cfg, for_training=False)
    logger.info(report.summary())
    has_refs = not audio

    tuned = None
    if tune_lm:
        tuned = _tune(model, processor, cfg, run_dir, opts, batch_size, num_workers, device, tune_utterances)
    decoder, weights = None, {}
    if opts.decoder != "greedy":
        weights = _lm_weights(run_dir, opts)
        decoder = _decoder(run_dir, processor, opts, **weights)
        logger.info("decoder %s: beam %d, %s", opts.decoder, opts.beam_size, weights)

    out = Path(output_dir) if output_dir else model_dir / f"inference_{name}"
    n = len(dataset)
    greedy: list[str] = [""] * n
    hyps: list[str] = [""] * n
    timings: dict[str, list[Any]] = {"hypothesis": [None] * n, "reference": [None] * n}
    spf = samples_per_frame(model) / data_cfg.sampling_rate
    id_to_token = dict(enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))))
    delimiter = tokenizer.convert_tokens_to_ids(tokenizer.word_delimiter_token)
    plotted = 0
    beam_seconds = 0.0
    start = time.perf_counter()
    for idx, batch, log_probs, lengths in _emissions(
        model, processor, dataset, batch_size, num_workers, device
    ):
        texts = greedy_decode(log_probs, lengths, tokenizer)
        for i, text in zip(idx, texts, strict=True):
            greedy[i] = text
        if decoder is not None:
            beam_start = time.perf_counter()
            for i, text in zip(idx, decoder.decode(log_probs, lengths), strict=True):
                hyps[i] = text
            beam_seconds += time.perf_counter() - beam_start
        else:
            for i, text in zip(idx, texts, strict=True):
                hyps[i] = text
        if timestamps or plotted < plot:
            hyp_ids = [tokenizer(hyps[i]).input_ids if hyps[i] else [] for i in idx]
            aligned = _timestamps(log_probs, lengths, hyp_ids, blank, delimiter, id_to_token, spf)
            refs = None
            if has_refs:
                # The batch already holds the references' labels (-100 padded): no second audio decode.
                refs = _timestamps(
                    log_probs,
                    lengths,
                    [row[row != IGNORE_INDEX].tolist() for row in batch["labels"]],
                    blank,
                    delimiter,
                    id_to_token,
                    spf,
                )
            for row, i in enumerate(idx):
                timings["hypothesis"][i] = aligned[row][1] if aligned[row] else None
                if refs is not None:
                    timings["reference"][i] = refs[row][1] if refs[row] else None
                if plotted < plot and aligned[row] is not None:
                    _plot(
                        batch,
                        row,
                        log_probs[row],
                        lengths[row],
                        aligned[row],
                        dataset.ids[i],
                        id_to_token,
                        spf,
                        data_cfg.sampling_rate,
                        out,
                        blank,
                    )
                    plotted += 1
    total_seconds = time.perf_counter() - start

    ids, refs_text = dataset.ids, dataset.texts
    summary: dict[str, Any] = {
        "model": str(model_dir),
        "split": name,
        "num_utterances": n,
        "decoder": opts.decoder,
        # Wall time of the decoding loop (audio, model, greedy, and beam search with timestamps/plots if
        # asked), and the beam search's share of it.
        "decoding_seconds": {"total": round(total_seconds, 2), "beam_search": round(beam_seconds, 2)},
        "skipped": {reason: len(v) for reason, v in report.dropped.items()},
        "unknown_characters": report.unknown_chars,
        "data_report": report.summary(),
    }
    wer = cer = None
    if has_refs:
        g_wer, g_cer = wer_cer(refs_text, greedy)
        summary["greedy"] = {"wer": g_wer, "cer": g_cer}
        wer, cer = wer_cer(refs_text, hyps)
        if decoder is not None:
            summary[opts.decoder] = {"wer": wer, "cer": cer, **weights}
        summary.update(wer=wer, cer=cer)
    if tuned is not None:
        summary["lm_tuning"] = tuned
    if plot:
        summary["plots"] = str(out / "plots")
    tsv_path, json_path = out / "transcripts.tsv", out / "summary.json"
    atomic_write_text(tsv_path, _transcripts_tsv(ids, refs_text if has_refs else None, hyps, greedy))
    if timestamps:
        _write_timestamps(out, ids, timings, has_refs)
    atomic_write_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False))
    return InferenceResult(wer, cer, n, tsv_path, json_path, summary)


def _transcripts_tsv(ids: list[str], refs: list[str] | None, hyps: list[str], greedy: list[str]) -> str:
    buf = StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
    if refs is None:
        writer.writerow(["id", "hypothesis"])
        writer.writerows(zip(ids, hyps, strict=True))
        return buf.getvalue()
    writer.writerow(["id", "reference", "hypothesis", "errors", "ref_words", "greedy"])
    for uid, ref, hyp, g in zip(ids, refs, hyps, greedy, strict=True):
        c = error_counts(ref, hyp)
        errors = c["substitutions"] + c["deletions"] + c["insertions"]
        writer.writerow([uid, ref, hyp, errors, c["ref_words"], g])
    return buf.getvalue()


def _write_timestamps(out: Path, ids: list[str], timings: dict[str, list[Any]], has_refs: bool) -> None:
    """``words.json`` (per utterance: hypothesis and reference word timings) and one CTM per side."""
    kinds = ("hypothesis", "reference") if has_refs else ("hypothesis",)
    records = []
    for k, uid in enumerate(ids):
        rec: dict[str, Any] = {"id": uid}
        for kind in kinds:
            words = timings[kind][k]
            rec[kind] = (
                None
                if words is None
                else [
                    {
                        "word": w.word,
                        "start": round(w.start, 3),
                        "end": round(w.end, 3),
                        "confidence": None if w.confidence is None else round(w.confidence, 4),
                    }
                    for w in words
                ]
            )
        records.append(rec)
    atomic_write_text(out / "words.json", json.dumps(records, indent=1, ensure_ascii=False))
    for kind in kinds:
        lines = "".join(to_ctm(uid, timings[kind][k]) for k, uid in enumerate(ids) if timings[kind][k])
        atomic_write_text(out / f"{kind}.ctm", lines)


def _plot(batch, row, log_probs, n_frames, aligned, uid, id_to_token, spf, sr, out, blank) -> None:
    from .plots import plot_alignment

    n = int(n_frames)
    samples = int(batch["attention_mask"][row].sum())
    names = [id_to_token[i] for i in range(len(id_to_token))]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uid)
    plot_alignment(
        out / "plots" / f"{safe}.png",
        batch["input_values"][row, :samples].numpy(),
        sr,
        log_probs[:n],
        aligned[0].tolist(),
        aligned[1],
        names,
        spf,
        title=uid,
        blank=blank,
    )


def _tune(model, processor, cfg, run_dir, opts, batch_size, num_workers, device, max_utterances):
    """Grid-search (lm_weight, word_score) on the eval split; save the best to ``lm/tuned.json``."""
    if cfg is None or cfg.data.eval is None:
        raise ValueError("--tune-lm: needs an eval split (data.eval) in the config")
    source = replace(cfg.data.eval, streaming=False)
    index = load_source_index(source, cfg.data, "eval")
    dataset, _ = open_split(index, processor, cfg.data, for_training=False)
    if len(dataset) > max_utterances:  # the first N: enough to rank a small grid
        dataset = dataset.head(max_utterances)
    batches, lengths, refs = [], [], []
    for idx, _, log_probs, n in _emissions(model, processor, dataset, batch_size, num_workers, device):
        batches.append(log_probs)
        lengths.append(n)
        refs.extend(dataset.texts[i] for i in idx)
    decoder = _decoder(run_dir, processor, opts)  # the trie and the LM are built once, then reweighted

    def decode(lm_weight, word_score, log_probs, n):
        decoder.set_weights(lm_weight, word_score)
        return decoder.decode(log_probs, n)

    start = time.perf_counter()
    lm_weight, word_score, table = tune_lm_weights(
        decode, batches, lengths, refs, TUNE_LM_WEIGHTS, TUNE_WORD_SCORES
    )
    best = {
        "lm_weight": lm_weight,
        "word_score": word_score,
        "dev_utterances": len(dataset),
        "beam_size": opts.beam_size,
        "seconds": round(time.perf_counter() - start, 1),
        "grid": table,
    }
    atomic_write_text(run_dir / LM_DIR / TUNED_LM, json.dumps(best, indent=1))
    logger.info(
        "tuned on %d dev utterances: lm_weight %s, word_score %s", len(dataset), lm_weight, word_score
    )
    return best
