"""Console entry points (``asr-ctc-*``); the scripts in ``scripts/`` call these."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .config import DECODERS, ConfigError, DecodingConfig


def _setup_logging() -> None:
    """Warnings from every library; this project's routine progress (INFO) too."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asr_ctc").setLevel(logging.INFO)


def _library_progress_bars_off() -> None:
    """No progress bars from datasets (saving, indexing, encoding an Arrow table) or transformers
    (loading weights): a job shows one bar per long step of its own (training, decoding)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _fail(exc: Exception | str) -> int:
    """One ``error:`` line (a multi-line message stays one error), exit status 2."""
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _is_hub_error(exc: BaseException) -> bool:
    """A hub model or dataset that cannot be reached or found: offline, a typo, a private repo.

    ``datasets`` raises ``ConnectionError`` (an ``OSError``) and ``DatasetNotFoundError``; huggingface_hub
    raises ``OSError`` subclasses (``LocalEntryNotFoundError``, ``RepositoryNotFoundError``,
    ``OfflineModeIsEnabled``) and, under it, httpx transport errors that are not ``OSError``s.
    """
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    root = type(exc).__module__.split(".")[0]
    return root in ("huggingface_hub", "httpx", "httpcore", "requests") or type(exc).__name__ in (
        "DatasetNotFoundError",
        "DataFilesNotFoundError",
    )


def make_corpus_main(argv: list[str] | None = None) -> int:
    """``asr-ctc-make-corpus``: synthesize the offline speech corpus with eSpeak NG."""
    parser = argparse.ArgumentParser(
        prog="make-corpus", description="Synthesize the offline speech corpus with eSpeak NG."
    )
    parser.add_argument("--out-dir", default="data/synthetic", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--num-utterances", type=int, default=14250, help="all splits together (default: %(default)s)"
    )
    share = "per 14,250 of --num-utterances, at least 1"
    parser.add_argument("--num-dev", type=int, help=f"dev utterances (default: 500 {share})")
    parser.add_argument("--num-test", type=int, help=f"test utterances (default: 1000 {share})")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="regenerate even if out-dir has this corpus")
    args = parser.parse_args(argv)
    from .corpus.synthetic import make_synthetic_corpus, split_sizes

    try:
        num_dev, num_test = split_sizes(args.num_utterances, args.num_dev, args.num_test)
    except ValueError as exc:
        parser.error(str(exc))
    _setup_logging()

    start = time.perf_counter()
    summary = make_synthetic_corpus(
        args.out_dir,
        num_utterances=args.num_utterances,
        seed=args.seed,
        # The splits are rounded fractions of the distinct sentences: these fractions give the counts.
        dev_fraction=num_dev / args.num_utterances,
        test_fraction=num_test / args.num_utterances,
        num_workers=args.workers,
        force=args.force,
    )
    elapsed = time.perf_counter() - start
    total, held_out = summary["total"], ", ".join(summary["test_variants"])
    print(
        f"corpus in {args.out_dir} ({elapsed:.1f} s): {total['utterances']} utterances, "
        f"{total['hours']:.2f} h; held-out test voice variants: {held_out}"
    )
    for split, info in summary["splits"].items():
        print(
            f"  {split:5s} {info['utterances']:6d} utterances {info['hours']:7.3f} h  "
            f"mean {info['mean_seconds']:.2f} s  {len(info['voices'])} voices"
        )
    return 0


def _leave_process_group() -> None:
    """Under torchrun or ``accelerate launch``: wait for every rank, then tear the process group down.

    The ranks finish at different times (rank 0 alone writes the LM, the curves and the metrics), and the
    transformers Trainer never destroys the group it initialised, so without this each rank tears gloo
    down at interpreter exit while its peers may still be connected. That is the suspected (not
    reproduced) cause of a rare SIGABRT of one rank after a good run in the 2-process tests. No-op in a
    single process.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def finetune_main(argv: list[str] | None = None) -> int:
    """``asr-ctc-finetune --config configs/X.yaml [key=value ...] [--resume | --overwrite]``."""
    parser = argparse.ArgumentParser(prog="finetune", description="Fine-tune a wav2vec2 CTC model.")
    parser.add_argument("--config", required=True, help="YAML experiment config")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in output_dir"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run in output_dir first")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. training.max_steps=50 loss.impl=torch",
    )
    args = parser.parse_args(argv)
    _setup_logging()
    if argv is None:  # the command line: train with mimalloc, whose RSS plateaus (asr_ctc.memory)
        from .memory import reexec_with_allocator

        try:
            reexec_with_allocator()
        except ValueError as exc:
            return _fail(exc)
    _library_progress_bars_off()
    from .config import load_config
    from .data.dataset import EmptyDatasetError
    from .data.manifest import ManifestError
    from .data.sources import DataSourceError
    from .finetune import OutputDirError, run_finetune
    from .modeling import CheckpointError

    try:
        cfg = load_config(args.config, args.overrides)
        result = run_finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    except (
        ConfigError, OutputDirError, EmptyDatasetError, ManifestError, CheckpointError, DataSourceError
    ) as exc:
        return _fail(exc)
    except Exception as exc:
        if _is_hub_error(exc):
            return _fail(f"cannot reach the HuggingFace hub for a model or dataset in the config: {exc}")
        raise
    _leave_process_group()
    if not result.is_main_process:
        return 0
    m = result.metrics
    line = f"finished: {result.output_dir}"
    if "eval_wer" in m:
        line += f"  eval WER {100 * m['eval_wer']:.2f}%  CER {100 * m['eval_cer']:.2f}%"
    print(line)
    return 0


# How many transcripts `inference --audio` prints (all of them are in transcripts.tsv).
_SHOWN_TRANSCRIPTS = 10


def inference_main(argv: list[str] | None = None) -> int:
    """``asr-ctc-inference --model DIR [--split test | --manifest FILE | --audio PATH ...] [options]``."""
    parser = argparse.ArgumentParser(prog="inference", description="Decode a test set and report WER/CER.")
    parser.add_argument("--model", required=True, help="fine-tuned model directory (or a checkpoint-* in it)")
    parser.add_argument(
        "--config",
        help="experiment config whose data section names the split "
        "(default: the run_config.yaml saved with the model)",
    )
    parser.add_argument("--split", default="test", choices=["train", "eval", "test"])
    parser.add_argument("--manifest", help="score this manifest instead of a config split")
    parser.add_argument(
        "--audio", nargs="+", metavar="PATH", help="transcribe these audio files and folders (no scoring)"
    )
    parser.add_argument(
        "--output-dir", help="where transcripts.tsv and summary.json go (default: MODEL/inference_SPLIT)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding audio")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--decoder", choices=DECODERS, help="greedy, beam (lexicon) or lm (lexicon + n-gram LM)"
    )
    parser.add_argument("--beam-size", type=int, help="beam search width (default: config, 100)")
    parser.add_argument("--lm-weight", type=float, help="LM weight (default: tuned, else 1.0)")
    parser.add_argument("--word-score", type=float, help="word insertion bonus (default: tuned, else 0.0)")
    parser.add_argument(
        "--blank-penalty",
        type=float,
        help="subtract from the blank's log-prob before decoding and alignment (default: config, 0.0)",
    )
    parser.add_argument(
        "--tune-lm", action="store_true", help="grid-search --lm-weight/--word-score on the eval split first"
    )
    parser.add_argument(
        "--tune-utterances",
        type=int,
        default=500,
        metavar="N",
        help="--tune-lm decodes the first N eval utterances per grid point (default: %(default)s)",
    )
    parser.add_argument(
        "--timestamps", action="store_true", help="write word timings (words.json, hypothesis/reference .ctm)"
    )
    parser.add_argument(
        "--plot", type=int, default=0, metavar="N", help="alignment plots of the first N utterances"
    )
    parser.add_argument(
        "--label-prior",
        type=float,
        default=0.0,
        metavar="BETA",
        help="align (--timestamps, --plot) on log p - BETA * log prior, the label prior saved by training "
        "with loss.label_prior_beta (use the same BETA); 0 = off (default)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. decoding.beam_size=50"
    )
    args = parser.parse_args(argv)
    _setup_logging()
    _library_progress_bars_off()
    import dataclasses
    from pathlib import Path

    from .data.dataset import EmptyDatasetError
    from .inference import InferenceOptions, load_run_config, run_inference

    try:
        cfg = load_run_config(Path(args.model), args.config, args.overrides)
        decoding = cfg.decoding if cfg is not None else DecodingConfig()
        chosen = {
            "decoder": args.decoder,
            "beam_size": args.beam_size,
            "lm_weight": args.lm_weight,
            "word_score": args.word_score,
            "blank_penalty": args.blank_penalty,
        }
        decoding = dataclasses.replace(decoding, **{k: v for k, v in chosen.items() if v is not None})
        options = InferenceOptions(
            split=args.split,
            manifest=args.manifest,
            audio=args.audio,
            output_dir=args.output_dir,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            decoding=decoding,
            tune_lm=args.tune_lm,
            tune_utterances=args.tune_utterances,
            timestamps=args.timestamps,
            plot=args.plot,
            label_prior_beta=args.label_prior,
        )
        result = run_inference(args.model, cfg, options)
    except (ConfigError, EmptyDatasetError, ValueError, OSError) as exc:
        return _fail(exc)
    s = result.summary
    line = f"{s['split']}: {result.num_utterances} utterances"
    if "greedy" in s:
        line += f"  greedy WER {100 * s['greedy']['wer']:.2f}%  CER {100 * s['greedy']['cer']:.2f}%"
    if s["decoder"] != "greedy" and result.wer is not None:
        line += f"  |  {s['decoder']} WER {100 * result.wer:.2f}%  CER {100 * result.cer:.2f}%"
    print(line + f"  ({s['decoding_seconds']['total']:.1f} s)")
    if args.audio:  # no scores to show: the transcripts themselves, a handful of them
        for uid, text in result.transcripts[:_SHOWN_TRANSCRIPTS]:
            print(f"  {uid}\t{text}")
        if len(result.transcripts) > _SHOWN_TRANSCRIPTS:
            print(f"  ... and {len(result.transcripts) - _SHOWN_TRANSCRIPTS} more")
    for side, scores in s.get("boundaries", {}).items():
        if isinstance(scores, dict) and scores.get("boundary", {}).get("count"):
            b = scores["boundary"]
            print(
                f"word boundaries ({side} alignment, {b['count']} boundaries): median "
                f"{b['median_ms']:.1f} ms, mean {b['mean_ms']:.1f} ms, "
                f"{100 * b['within_50ms']:.1f}% within 50 ms"
            )
    print(f"per-utterance transcripts: {result.transcripts_path}")
    print(f"summary: {result.summary_path}")
    return 0


def build_lm_main(argv: list[str] | None = None) -> int:
    """``asr-ctc-build-lm (--model DIR | --vocab FILE) (--text FILE | --manifest FILE) [--order N]``."""
    parser = argparse.ArgumentParser(
        prog="build_lm",
        description="Build a word n-gram LM (modified Kneser-Ney, ARPA) and a lexicon for beam search.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="fine-tuned model directory; its vocab.json is read")
    source.add_argument("--vocab", help="vocab.json of the acoustic model")
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", help="text file, one normalised transcript per line")
    texts.add_argument("--manifest", help="manifest (.tsv/.csv/.jsonl) whose transcripts train the LM")
    parser.add_argument("--text-column", default="text", help="transcript column of --manifest")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--out-dir", help="output directory (default: MODEL/lm; required with --vocab)")
    args = parser.parse_args(argv)
    _setup_logging()
    import json
    from pathlib import Path

    from .data.manifest import ManifestError, read_manifest
    from .data.text import normalize_text
    from .lm import build_lm_dir

    vocab_path = Path(args.model) / "vocab.json" if args.model else Path(args.vocab)
    if args.out_dir is None and args.model is None:
        return _fail(ValueError("--out-dir: required with --vocab"))
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.model) / "lm"
    if args.order < 1:
        return _fail(ValueError(f"--order: expected an integer >= 1, got {args.order}"))
    try:
        if not vocab_path.is_file():
            raise ValueError(f"{vocab_path}: vocabulary file not found")
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        if args.text:
            text_path = Path(args.text)
            if not text_path.is_file():
                raise ValueError(f"--text: {text_path} not found")
            lines = text_path.read_text(encoding="utf-8").splitlines()
            source_name = str(text_path)
        else:
            rows = read_manifest(args.manifest, text_column=args.text_column)
            lines = [row["text"] for row in rows]
            source_name = f"{args.manifest} (column {args.text_column})"
        # The transcripts are expected normalised already; collapsing whitespace again is harmless and
        # keeps a stray double space from becoming an empty word. Case is left as given.
        sentences = [normalize_text(line, lowercase=False) for line in lines]
        build_lm_dir(sentences, out_dir, vocab, order=args.order, source=source_name)
    except (ManifestError, ValueError, json.JSONDecodeError) as exc:
        return _fail(exc)
    info = json.loads((out_dir / "lm.json").read_text(encoding="utf-8"))
    print(
        f"{args.order}-gram LM: n-grams {info['ngram_counts']}, lexicon {info['lexicon_words']} words "
        f"({info['words_not_in_lexicon']} left out: characters outside the vocabulary)"
    )
    print(f"written: {out_dir / 'lm.arpa'}, {out_dir / 'lexicon.txt'}, {out_dir / 'lm.json'}")
    return 0


def prepare_main(argv: list[str] | None = None) -> int:
    """``asr-ctc-prepare {librispeech DIR | commonvoice DIR | table FILE | shards MANIFEST} [options]``."""
    parser = argparse.ArgumentParser(
        prog="asr-ctc-prepare",
        description="Write manifests for a corpus folder or table, or WebDataset shards from a manifest.",
    )
    sub = parser.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    libri = sub.add_parser("librispeech", help="LibriSpeech tree: one manifest per subset")
    libri.add_argument("dir", help="the LibriSpeech folder or one subset folder (e.g. dev-clean)")
    libri.add_argument("--out-dir", help="where the manifests go (default: DIR/manifests)")
    cv = sub.add_parser("commonvoice", help="Common Voice language folder: one manifest per split table")
    cv.add_argument("dir", help="folder holding clips/ and train.tsv, dev.tsv, test.tsv")
    cv.add_argument("--out-dir", help="where the manifests go (default: DIR/manifests)")
    cv.add_argument(
        "--splits", nargs="+", default=["train", "dev", "test"], help="split tables (default: %(default)s)"
    )
    table = sub.add_parser("table", help="any CSV/TSV/JSONL with named audio and transcript columns")
    table.add_argument("file", help=".csv, .tsv (tab-separated, unquoted) or .jsonl table")
    table.add_argument("--audio-column", default="audio", help="default: %(default)s")
    table.add_argument("--text-column", default="text", help="default: %(default)s")
    table.add_argument("--id-column", default="id", help="optional; default: %(default)s, else the file stem")
    table.add_argument("--audio-root", help="folder relative audio paths start from (default: the table's)")
    table.add_argument("--out", help="manifest to write (default: FILE's folder/manifests/STEM.tsv)")
    shards = sub.add_parser("shards", help="WebDataset shards (shard-000000.tar ...) from a manifest")
    shards.add_argument("manifest", help="manifest (.tsv/.csv/.jsonl)")
    shards.add_argument("--out-dir", help="default: the manifest's folder/shards/STEM")
    shards.add_argument("--max-size-mb", type=float, default=256.0, help="per shard (default: %(default)s)")
    shards.add_argument("--max-utterances", type=int, help="per shard (default: no limit)")
    shards.add_argument("--shuffle-seed", type=int, help="shuffle utterances first (default: manifest order)")
    shards.add_argument("--overwrite", action="store_true", help="replace shards already in --out-dir")
    args = parser.parse_args(argv)
    _setup_logging()
    from pathlib import Path

    from .data.manifest import ManifestError
    from .prepare import PrepareError, prepare_commonvoice, prepare_librispeech, prepare_table, write_shards

    try:
        if args.recipe == "librispeech":
            written = prepare_librispeech(args.dir, args.out_dir)
        elif args.recipe == "commonvoice":
            written = prepare_commonvoice(args.dir, args.out_dir, args.splits)
        elif args.recipe == "table":
            path = prepare_table(
                args.file, args.out, args.audio_column, args.text_column, args.id_column, args.audio_root
            )
            written = {Path(args.file).stem: path}
        else:
            manifest = Path(args.manifest)
            out_dir = args.out_dir or manifest.parent / "shards" / manifest.stem
            summary = write_shards(
                manifest, out_dir, args.max_size_mb, args.max_utterances, args.shuffle_seed, args.overwrite
            )
            print(f"{sum(summary.counts)} utterances in {len(summary.shards)} shards: {summary.pattern}")
            return 0
    except (PrepareError, ManifestError, OSError) as exc:
        return _fail(exc)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
