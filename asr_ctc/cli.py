"""Console entry points (``asr-ctc-*``); the scripts in ``scripts/`` call these."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError


def _setup_logging() -> None:
    """Warnings from every library; this project's routine progress (INFO) too."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asr_ctc").setLevel(logging.INFO)


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
    from .data.synthetic import main

    return main(argv)


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
    from .config import load_config
    from .data.dataset import EmptyDatasetError
    from .data.manifest import ManifestError
    from .finetune import OutputDirError, run_finetune
    from .modeling import CheckpointError

    try:
        cfg = load_config(args.config, args.overrides)
        result = run_finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, OutputDirError, EmptyDatasetError, ManifestError, CheckpointError) as exc:
        return _fail(exc)
    except Exception as exc:
        if _is_hub_error(exc):
            return _fail(f"cannot reach the HuggingFace hub for a model or dataset in the config: {exc}")
        raise
    if not result.is_main_process:
        return 0
    m = result.metrics
    line = f"finished: {result.output_dir}"
    if "eval_wer" in m:
        line += f"  eval WER {100 * m['eval_wer']:.2f}%  CER {100 * m['eval_cer']:.2f}%"
    print(line)
    return 0


def inference_main(argv: list[str] | None = None) -> int:
    """``asr-ctc-inference --model DIR [--config X.yaml] [--split test | --manifest FILE]``."""
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
        "--output-dir", help="where transcripts.tsv and summary.json go (default: MODEL/inference_SPLIT)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for --config")
    args = parser.parse_args(argv)
    _setup_logging()
    from .config import load_config
    from .data.dataset import EmptyDatasetError
    from .inference import run_inference

    try:
        cfg = load_config(args.config, args.overrides) if args.config else None
        result = run_inference(
            args.model, cfg, args.split, args.manifest, args.output_dir, args.batch_size, args.device
        )
    except (ConfigError, EmptyDatasetError, ValueError) as exc:
        return _fail(exc)
    print(
        f"{result.summary['split']}: {result.num_utterances} utterances  "
        f"WER {100 * result.wer:.2f}%  CER {100 * result.cer:.2f}%"
    )
    print(f"per-utterance transcripts: {result.transcripts_path}")
    print(f"summary: {result.summary_path}")
    return 0
