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
from dataclasses import dataclass, field, replace
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm
from transformers import Wav2Vec2Processor

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
    apply_blank_penalty,
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
from .modeling import frame_lengths, load_ctc_model, samples_per_frame
from .variants.timing import alignment_log_prior, apply_label_prior

logger = logging.getLogger(__name__)

TUNED_LM = "tuned.json"
# The (lm_weight, word_score) grid of --tune-lm: LM weights around KenLM's log10 scale, insertion bonuses
# around zero (a positive bonus offsets the LM's bias towards fewer, more frequent words).
TUNE_LM_WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0)
TUNE_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)


@dataclass
class InferenceResult:
    """Scores (None without references), the written files, and ``(id, hypothesis)`` per utterance."""

    wer: float | None
    cer: float | None
    num_utterances: int
    transcripts_path: Path
    summary_path: Path
    summary: dict[str, Any]
    transcripts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class InferenceOptions:
    """What the inference job decodes and how: the command line's options (each default is the CLI's).

    Attributes:
        split: the config's split to score (``train``, ``eval`` or ``test``).
        manifest: score this manifest instead of a config split.
        audio: transcribe these audio files and folders instead (no references, no scores).
        output_dir: where the outputs go (default: ``MODEL_DIR/inference_<split>``).
        batch_size: utterances per forward pass.
        num_workers: DataLoader workers decoding audio.
        device: ``cuda`` when available, else ``cpu``, unless given.
        decoding: decoder and its options (default: the config's ``decoding``, else greedy).
        tune_lm: grid-search ``lm_weight``/``word_score`` on the eval split first and save the best to
            ``lm/tuned.json`` beside the model, where later runs find them.
        tune_utterances: how many eval utterances (the first ones) ``tune_lm`` decodes per grid point.
        timestamps: write word timings (``words.json``, ``hypothesis.ctm``/``reference.ctm``).
        plot: alignment plots of this many utterances (into ``plots/``).
        label_prior_beta: force-align (timestamps, plots) on ``log p - beta * log prior`` with the label
            prior saved with the model (:mod:`asr_ctc.variants.timing`); 0 = the plain log-probs.
    """

    split: str = "test"
    manifest: str | None = None
    audio: list[str] | None = None
    output_dir: str | Path | None = None
    batch_size: int = 16
    num_workers: int = 0
    device: str | None = None
    decoding: DecodingConfig | None = None
    tune_lm: bool = False
    tune_utterances: int = 500
    timestamps: bool = False
    plot: int = 0
    label_prior_beta: float = 0.0


def run_inference(
    model_dir: str | Path,
    cfg: ExperimentConfig | None = None,
    options: InferenceOptions | None = None,
    **changes: Any,
) -> InferenceResult:
    """Decode and score one split (or transcribe audio files/folders); writes ``transcripts.tsv`` and
    ``summary.json`` (plus ``words.json``/``*.ctm`` with ``timestamps``, ``plots/`` with ``plot``) into the
    output directory (default: ``MODEL_DIR/inference_<split>``).

    Args:
        model_dir: a fine-tuned model directory, or a ``checkpoint-N`` inside one.
        cfg: the config naming the data (default: the run's saved ``run_config.yaml``).
        options: what to decode and how (:class:`InferenceOptions`); ``changes`` (its field names as
            keywords, e.g. ``split="test", timestamps=True``) replace single fields.

    Raises:
        ValueError: a bad option, model directory or data source, naming it.
    """
    opts = replace(options or InferenceOptions(), **changes)
    job = _prepare_job(Path(model_dir), cfg, opts)
    model, processor = _load_model(job)
    data = _open_data(job, processor)
    tuned = _tune(model, processor, job) if opts.tune_lm else None
    decoder, weights = _make_decoder(job, processor)
    decoded = _decode_all(job, model, processor, data, decoder)
    summary = _summary(job, data, decoded, weights, tuned)
    if opts.timestamps and (boundaries := _score_boundaries(job, data, decoded)) is not None:
        summary["boundaries"] = boundaries
    return _write_outputs(job, data, decoded, summary)


def _check_data_files(cfg: ExperimentConfig | None, opts: InferenceOptions) -> None:
    """The manifests the job will read exist, checked before any work, each error naming its key and the
    rule for relative paths (a run saved before its paths were stored resolved keeps them relative)."""
    if opts.audio:
        return
    if opts.manifest is not None:
        if not Path(opts.manifest).expanduser().is_file():
            raise ValueError(f"--manifest: file not found: {opts.manifest}")
    elif cfg is not None:
        source = getattr(cfg.data, opts.split, None) if opts.split in ("train", "eval", "test") else None
        _check_manifest(source, f"data.{opts.split}.manifest")
    if opts.tune_lm and cfg is not None:
        _check_manifest(cfg.data.eval, "data.eval.manifest (for --tune-lm)")


def _check_manifest(source: SourceConfig | None, key: str) -> None:
    if source is None or source.manifest is None or Path(source.manifest).expanduser().is_file():
        return
    rule = ""
    if not Path(source.manifest).expanduser().is_absolute():
        rule = (
            f" (a relative path in a config is relative to the working directory, here {Path.cwd()}: run "
            "from the directory the model was fine-tuned in, or pass --config or --manifest)"
        )
    raise ValueError(f"{key}: file not found: {source.manifest}{rule}")


@dataclass
class _Job:
    """What every step of one inference run reads: the resolved model, config, decoder options, output.

    ``name`` names the data (``audio``, the manifest's stem or the split), ``out`` the output directory.
    """

    model_dir: Path
    run_dir: Path
    cfg: ExperimentConfig | None
    data_cfg: DataConfig
    decoding: DecodingConfig
    device: str
    opts: InferenceOptions
    name: str
    out: Path
    align_prior: torch.Tensor | None = None


def _prepare_job(model_dir: Path, cfg: ExperimentConfig | None, opts: InferenceOptions) -> _Job:
    """Check the options and settle the config, the decoder options and the device (no model loaded)."""
    if not model_dir.is_dir():
        raise ValueError(f"--model: not a directory: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"--model {model_dir}: not a model directory (no config.json)")
    run_dir = find_run_dir(model_dir)
    if cfg is None:
        cfg = load_run_config(model_dir, None, [])
    _check_data_files(cfg, opts)
    decoding = opts.decoding or (cfg.decoding if cfg is not None else DecodingConfig())
    if opts.tune_lm and opts.tune_utterances < 1:  # checked before the model is loaded
        raise ValueError(f"tune_utterances: expected at least 1, got {opts.tune_utterances}")
    if opts.tune_lm and decoding.decoder != "lm":
        decoding = replace(decoding, decoder="lm")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data_cfg = cfg.data if cfg is not None else DataConfig()
    name = "audio" if opts.audio else Path(opts.manifest).stem if opts.manifest else opts.split
    out = Path(opts.output_dir) if opts.output_dir else model_dir / f"inference_{name}"
    align_prior = alignment_log_prior(model_dir, opts.label_prior_beta)
    return _Job(model_dir, run_dir, cfg, data_cfg, decoding, device, opts, name, out, align_prior)


def _load_model(job: _Job) -> tuple[Any, Wav2Vec2Processor]:
    """The CTC model (in eval mode, on the job's device) and its processor (the model's, else the run's)."""
    has_vocab = (job.model_dir / "vocab.json").is_file()
    processor = Wav2Vec2Processor.from_pretrained(str(job.model_dir if has_vocab else job.run_dir))
    model = load_ctc_model(job.model_dir).to(job.device).eval()
    return model, processor


@dataclass
class _Data:
    """The split (or audio files) being decoded."""

    dataset: SpeechDataset
    report: Any
    has_refs: bool
    manifest: str | None = None


def _open_data(job: _Job, processor: Wav2Vec2Processor) -> _Data:
    """The audio files, the manifest or the config's split, indexed and opened (nothing filtered out but
    unreadable audio and empty transcripts)."""
    opts = job.opts
    manifest = None
    if opts.audio:
        index = index_audio_files(opts.audio, job.data_cfg)
    else:
        source = _source(job.cfg, opts.split, opts.manifest)
        index = load_source_index(source, job.data_cfg, job.name)
        manifest = source.manifest
    dataset, report = open_split(index, processor, job.data_cfg, for_training=False)
    logger.info(report.summary())
    return _Data(dataset, report, has_refs=not opts.audio, manifest=manifest)


def _tune(model, processor, job: _Job) -> dict[str, Any]:
    """Grid-search (lm_weight, word_score) on the eval split; save the best to ``lm/tuned.json``."""
    cfg, run_dir, opts, max_utterances = job.cfg, job.run_dir, job.decoding, job.opts.tune_utterances
    batch_size, num_workers, device = job.opts.batch_size, job.opts.num_workers, job.device
    if cfg is None or cfg.data.eval is None:
        raise ValueError("--tune-lm: needs an eval split (data.eval) in the config")
    source = replace(cfg.data.eval, streaming=False)
    index = load_source_index(source, cfg.data, "eval")
    dataset, _ = open_split(index, processor, cfg.data, for_training=False)
    if len(dataset) > max_utterances:  # the first N: enough to rank a small grid
        dataset = dataset.head(max_utterances)
    batches, lengths, refs = [], [], []
    for idx, _, log_probs, n in _emissions(model, processor, dataset, batch_size, num_workers, device):
        batches.append(apply_blank_penalty(log_probs, processor.tokenizer.pad_token_id, opts.blank_penalty))
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


def _make_decoder(
    job: _Job, processor: Wav2Vec2Processor
) -> tuple[BeamSearchDecoder | None, dict[str, float]]:
    """The beam search decoder and its weights; ``(None, {})`` for greedy decoding."""
    opts = job.decoding
    if opts.decoder == "greedy":
        return None, {}
    weights = _lm_weights(job.run_dir, opts)
    decoder = _decoder(job.run_dir, processor, opts, **weights)
    logger.info("decoder %s: beam %d, %s", opts.decoder, opts.beam_size, weights)
    return decoder, weights


@dataclass
class _Decoded:
    """Per utterance (in dataset order): greedy and final transcripts and word timings; the loop's seconds."""

    greedy: list[str]
    hyps: list[str]
    timings: dict[str, list[Any]]
    total_seconds: float
    beam_seconds: float


def _decode_all(job: _Job, model, processor, data: _Data, decoder) -> _Decoded:
    """Every utterance decoded greedily (and by ``decoder``), aligned and plotted as the options ask."""
    opts, tokenizer, n = job.opts, processor.tokenizer, len(data.dataset)
    vocab = _vocab(model, tokenizer, job.data_cfg)
    decoded = _Decoded([""] * n, [""] * n, {"hypothesis": [None] * n, "reference": [None] * n}, 0.0, 0.0)
    start = time.perf_counter()
    for idx, batch, log_probs, lengths in _emissions(
        model, processor, data.dataset, opts.batch_size, opts.num_workers, job.device
    ):
        # One penalised copy serves greedy, beam search and the alignments (0: the scores themselves);
        # the plots show the model's own posteriors.
        posteriors = log_probs
        log_probs = apply_blank_penalty(log_probs, vocab.blank, job.decoding.blank_penalty)
        _decode_batch(decoded, idx, log_probs, lengths, tokenizer, decoder)
        # Batches come longest first: the plots are of the first utterances as given, wherever they fall.
        to_plot = [row for row, i in enumerate(idx) if i < opts.plot]
        if opts.timestamps or to_plot:
            # Label-prior CTC aligns on the scores it was trained on; the plots still show posteriors.
            scores = log_probs
            if job.align_prior is not None:
                scores = apply_label_prior(log_probs, job.align_prior, opts.label_prior_beta)
            aligned = _align_batch(decoded, idx, batch, scores, lengths, tokenizer, vocab, data.has_refs)
            for row in to_plot:
                if aligned[row] is None:
                    uid = data.dataset.ids[idx[row]]
                    logger.warning("no plot of %s: its hypothesis has no alignment", uid)
                    continue
                _plot(data.dataset, idx[row], posteriors[row], lengths[row], aligned[row], vocab, job)
    decoded.total_seconds = time.perf_counter() - start
    return decoded


def _decode_batch(decoded: _Decoded, idx, log_probs, lengths, tokenizer, decoder) -> None:
    """Greedy transcripts of a batch, and the beam search's when there is a decoder (timed)."""
    texts = greedy_decode(log_probs, lengths, tokenizer)
    for i, text in zip(idx, texts, strict=True):
        decoded.greedy[i] = text
    if decoder is None:
        for i, text in zip(idx, texts, strict=True):
            decoded.hyps[i] = text
        return
    beam_start = time.perf_counter()
    for i, text in zip(idx, decoder.decode(log_probs, lengths), strict=True):
        decoded.hyps[i] = text
    decoded.beam_seconds += time.perf_counter() - beam_start


@dataclass
class _Vocab:
    """The tokenizer's ids the decoding steps need, and the model's frame step in seconds."""

    blank: int
    delimiter: int
    id_to_token: dict[int, str]
    seconds_per_frame: float


def _vocab(model, tokenizer, data_cfg: DataConfig) -> _Vocab:
    return _Vocab(
        blank=tokenizer.pad_token_id,
        delimiter=tokenizer.convert_tokens_to_ids(tokenizer.word_delimiter_token),
        id_to_token=dict(enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))),
        seconds_per_frame=samples_per_frame(model) / data_cfg.sampling_rate,
    )


def _align_batch(decoded: _Decoded, idx, batch, log_probs, lengths, tokenizer, vocab: _Vocab, has_refs):
    """Word timings of the batch's hypotheses (and references), stored in ``decoded.timings``; returns the
    hypotheses' ``(frame path, timed words)`` per row (None where no alignment fits)."""
    hyp_ids = [tokenizer(decoded.hyps[i]).input_ids if decoded.hyps[i] else [] for i in idx]
    aligned = _timestamps(log_probs, lengths, hyp_ids, vocab)
    refs = None
    if has_refs:
        # The batch already holds the references' labels (-100 padded): no second audio decode.
        ref_ids = [row[row != IGNORE_INDEX].tolist() for row in batch["labels"]]
        refs = _timestamps(log_probs, lengths, ref_ids, vocab)
    for row, i in enumerate(idx):
        decoded.timings["hypothesis"][i] = aligned[row][1] if aligned[row] else None
        if refs is not None:
            decoded.timings["reference"][i] = refs[row][1] if refs[row] else None
    return aligned


def _summary(job: _Job, data: _Data, decoded: _Decoded, weights, tuned) -> dict[str, Any]:
    """``summary.json``'s content: the run, its timings, the data report and the scores."""
    report, opts = data.report, job.opts
    summary: dict[str, Any] = {
        "model": str(job.model_dir),
        "split": job.name,
        "num_utterances": len(data.dataset),
        "decoder": job.decoding.decoder,
        "blank_penalty": job.decoding.blank_penalty,
        # Wall time of the decoding loop (audio, model, greedy, and beam search with timestamps/plots if
        # asked), and the beam search's share of it.
        "decoding_seconds": {
            "total": round(decoded.total_seconds, 2),
            "beam_search": round(decoded.beam_seconds, 2),
        },
        "skipped": {reason: len(v) for reason, v in report.dropped.items()},
        "unknown_characters": report.unknown_chars,
        "data_report": report.summary(),
    }
    if data.has_refs:
        refs = data.dataset.texts
        g_wer, g_cer = wer_cer(refs, decoded.greedy)
        summary["greedy"] = {"wer": g_wer, "cer": g_cer}
        wer, cer = wer_cer(refs, decoded.hyps)
        if job.decoding.decoder != "greedy":
            summary[job.decoding.decoder] = {"wer": wer, "cer": cer, **weights}
        summary.update(wer=wer, cer=cer)
    if tuned is not None:
        summary["lm_tuning"] = tuned
    if opts.plot:
        summary["plots"] = str(job.out / "plots")
    if job.align_prior is not None:
        summary["alignment_label_prior_beta"] = job.opts.label_prior_beta
    return summary


def _score_boundaries(job: _Job, data: _Data, decoded: _Decoded) -> dict[str, Any] | None:
    """Word-boundary errors of both alignments against the manifest's true word times (its ``words``
    column, which the synthetic corpus writes), overall and per voice variant; None without truth."""
    from .boundaries import score_boundaries
    from .corpus.synthetic import read_word_times

    if not data.has_refs or data.manifest is None:
        return None
    columns = {k: getattr(job.data_cfg, k) for k in ("audio_column", "text_column", "id_column")}
    truth = read_word_times(data.manifest, **columns)
    if truth is None:
        return None
    known = [truth.get(uid) for uid in data.dataset.ids]
    true_words = [t[0] if t else None for t in known]
    groups = [t[1] if t and t[1] is not None else "-" for t in known]
    return {
        "truth": str(data.manifest),
        # The reference's alignment has the truth's words: scored word by word. The hypothesis is scored
        # on its correct words only (those a word-level edit alignment pairs as equal).
        "reference": score_boundaries(decoded.timings["reference"], true_words, "position", groups),
        "hypothesis": score_boundaries(decoded.timings["hypothesis"], true_words, "edit", groups),
    }


def _write_outputs(job: _Job, data: _Data, decoded: _Decoded, summary: dict[str, Any]) -> InferenceResult:
    """``transcripts.tsv``, the timings (if asked) and ``summary.json`` last, each written atomically."""
    out, ids = job.out, data.dataset.ids
    refs = data.dataset.texts if data.has_refs else None
    tsv_path, json_path = out / "transcripts.tsv", out / "summary.json"
    atomic_write_text(tsv_path, _transcripts_tsv(ids, refs, decoded.hyps, decoded.greedy))
    if job.opts.timestamps:
        _write_timestamps(out, ids, decoded.timings, data.has_refs)
    atomic_write_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False))
    transcripts = list(zip(ids, decoded.hyps, strict=True))
    return InferenceResult(
        summary.get("wer"), summary.get("cer"), len(data.dataset), tsv_path, json_path, summary, transcripts
    )


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


def _timestamps(log_probs, lengths, labels_per_utt, vocab: _Vocab):
    """Word timings of each utterance's token sequence (the hypothesis or the reference), by forced
    alignment; None for a sequence with no feasible alignment in its frames."""
    blank = vocab.blank
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
        words = word_spans(spans, vocab.delimiter)
        out[i] = (path[row, :n], timed_words(words, vocab.id_to_token, vocab.seconds_per_frame))
    return out


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


def _plot(dataset: SpeechDataset, i: int, log_probs, n_frames, aligned, vocab: _Vocab, job: _Job) -> None:
    """The alignment plot of utterance ``i``, over its audio as read (amplitude), not the model's
    normalised input."""
    from .plots import plot_alignment

    n = int(n_frames)
    uid = dataset.ids[i]
    names = [vocab.id_to_token[i] for i in range(len(vocab.id_to_token))]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uid)
    plot_alignment(
        job.out / "plots" / f"{safe}.png",
        dataset.load(dataset.table[i]),
        job.data_cfg.sampling_rate,
        log_probs[:n],
        aligned[0].tolist(),
        aligned[1],
        names,
        vocab.seconds_per_frame,
        title=uid,
        blank=vocab.blank,
    )
