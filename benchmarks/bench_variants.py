"""Train each CTC loss variant against plain CTC at equal steps, and print the table.

For every variant (``name=key:value,key:value``; ``plain`` is plain CTC) it fine-tunes the config's model
from scratch for ``--steps`` steps on the corpus (same seed, same data order), then decodes: dev greedy WER
(``inference --split eval``), test greedy WER and test LM WER (lexicon + n-gram LM, weights tuned on
``--tune-utterances`` dev utterances, as the demo does). Training step time is the Trainer's
``train_runtime / steps`` (no evaluation during training). The table ends with the CPU model and the load
average before and after; on a shared machine the step times are indicative only.

The imperfect-transcript experiment (``--corrupt ends`` or ``anywhere``): the corpus's training
transcripts are first rewritten so that ``--corrupt-fraction`` of them (30% by default) lose words, at the
start or end of the transcript (``ends``, W-CTC's case) or at random positions (``anywhere``, the star
token's); dev and test stay clean. :func:`corrupt_corpus` writes that corpus (manifests only; the audio is
the original's).

Usage::

    python benchmarks/bench_variants.py --corpus data/synthetic --steps 1600
    python benchmarks/bench_variants.py --corpus data/synthetic --steps 1600 --corrupt ends \\
        --variants plain wctc=wildcard_weight:1 star=star_weight:0.1
    # a quick check that it runs (tiny model, a few steps)
    python benchmarks/bench_variants.py --corpus /tmp/corpus --steps 4 --tiny \\
        --variants plain star=star_weight:0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

from _machine import load_average, machine

from asr_ctc.config import load_config
from asr_ctc.data.manifest import read_manifest, write_manifest
from asr_ctc.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CORRUPTIONS = ("ends", "anywhere")
# The table's default rows: each variant at a setting from its paper or toolkit, against plain CTC.
DEFAULT_VARIANTS = (
    "plain",
    "label_smoothing=label_smoothing:0.1",
    "focal=focal_gamma:1",
    "max_entropy=max_entropy:0.1",
    "wctc=wildcard_weight:1",
    "star=star_weight:0.1",
)
# A model small enough for a smoke run on a busy CPU (--tiny): the tests' tiny wav2vec2.
TINY_OVERRIDES = [
    "model.architecture.conv_dim=[16, 16, 16]",
    "model.architecture.conv_kernel=[10, 4, 4]",
    "model.architecture.conv_stride=[10, 4, 4]",
    "model.architecture.hidden_size=32",
    "model.architecture.num_hidden_layers=1",
    "model.architecture.num_attention_heads=2",
    "model.architecture.intermediate_size=64",
    "model.architecture.num_conv_pos_embeddings=16",
    "model.architecture.num_conv_pos_embedding_groups=4",
    "training.per_device_train_batch_size=4",
    "training.warmup_steps=0",
]


def drop_words(text: str, where: str, rng: random.Random, max_words: int = 2) -> str:
    """``text`` with 1 to ``max_words`` words removed (at least one word is kept).

    Args:
        text: a transcript, words separated by spaces.
        where: ``ends``: the words go from the start or the end (chosen at random); ``anywhere``: a run of
            consecutive words at a random position (the start and end included).
        rng: the random source.
        max_words: the most words removed.

    Raises:
        ValueError: an unknown ``where``.
    """
    if where not in CORRUPTIONS:
        raise ValueError(f"where: expected one of {', '.join(CORRUPTIONS)}, got {where!r}")
    words = text.split()
    if len(words) < 2:
        return text
    n = rng.randint(1, min(max_words, len(words) - 1))
    if where == "ends":
        start = 0 if rng.random() < 0.5 else len(words) - n
    else:
        start = rng.randint(0, len(words) - n)
    return " ".join(words[:start] + words[start + n :])


def corrupt_corpus(
    corpus: Path, out: Path, where: str, fraction: float = 0.3, seed: int = 0
) -> dict[str, Any]:
    """Write a copy of ``corpus``'s manifests in which ``fraction`` of the train transcripts lost words.

    Args:
        corpus: a directory with ``train.tsv``, ``dev.tsv``, ``test.tsv`` (``make-corpus`` output).
        out: the new corpus directory (manifests only, pointing at ``corpus``'s audio); created.
        where: ``ends`` or ``anywhere`` (see :func:`drop_words`).
        fraction: share of train transcripts corrupted, in [0, 1].
        seed: which transcripts, and which words.

    Returns:
        A summary (also written to ``out/corruption.json``): utterances and words before and after.

    Raises:
        ValueError: ``fraction`` outside [0, 1] or an unknown ``where``.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction: expected a number in [0, 1], got {fraction!r}")
    if where not in CORRUPTIONS:
        raise ValueError(f"where: expected one of {', '.join(CORRUPTIONS)}, got {where!r}")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    summary: dict[str, Any] = {"source": str(corpus), "where": where, "fraction": fraction, "seed": seed}
    for split in ("train", "dev", "test"):
        rows = read_manifest(corpus / f"{split}.tsv")
        columns = ["id", "audio", "text", *[c for c in rows[0] if c not in ("id", "audio", "text")]]
        if split == "train":
            chosen = set(rng.sample(range(len(rows)), round(fraction * len(rows))))
            before = sum(len(r["text"].split()) for r in rows)
            originals = [r["text"] for r in rows]
            for i in sorted(chosen):
                rows[i] = {**rows[i], "text": drop_words(rows[i]["text"], where, rng)}
            after = sum(len(r["text"].split()) for r in rows)
            # One-word transcripts keep their word, so fewer than the chosen share may change.
            changed = sum(1 for r, text in zip(rows, originals, strict=True) if r["text"] != text)
            summary.update(
                train_utterances=len(rows), corrupted=changed, words_before=before, words_after=after
            )
        write_manifest(out / f"{split}.tsv", rows, columns)
    atomic_write_text(out / "corruption.json", json.dumps(summary, indent=2))
    return summary


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``name=key:value,key:value`` -> (name, ["loss.key=value", ...]); ``plain`` -> ("plain", [])."""
    name, _, settings = spec.partition("=")
    overrides = []
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition(":")
        if not sep:
            raise ValueError(
                f"--variants {spec!r}: expected name=key:value[,key:value], e.g. star=star_weight:0.1"
            )
        overrides.append(f"loss.{key}={value}")
    return name, overrides


def conditions() -> dict[str, str]:
    """The machine (CPU, cores, UTC time) and the load average now: printed with the table."""
    return {"machine": machine(), "load": load_average()}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments :func:`run_overrides` reads (each script adds its own --steps, --out, --variants)."""
    parser.add_argument("--corpus", type=Path, required=True, help="make-corpus output (train/dev/test.tsv)")
    parser.add_argument("--config", default=str(REPO / "configs" / "synthetic.yaml"))
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model: a smoke run only")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides (key=value)")


def run_overrides(
    name: str, loss_overrides: list[str], args: argparse.Namespace, corpus: Path, out: Path
) -> list[str]:
    """The config overrides of one benchmark run: ``corpus``'s manifests, ``args.steps`` steps, no evaluation
    or checkpoints during training, output in ``out/name``, then ``--tiny``, ``--override`` and the variant's
    ``loss.*`` keys (last, so they win)."""
    return [
        f"output_dir={out / name}",
        f"data.train.manifest={corpus / 'train.tsv'}",
        f"data.eval.manifest={corpus / 'dev.tsv'}",
        f"data.test.manifest={corpus / 'test.tsv'}",
        f"training.max_steps={args.steps}",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        *(TINY_OVERRIDES if args.tiny else []),
        *args.override,
        *loss_overrides,
    ]


def run_variant(
    name: str, loss_overrides: list[str], args: argparse.Namespace, corpus: Path, out: Path
) -> dict[str, Any]:
    """Fine-tune one variant and decode dev (greedy) and test (greedy and LM); the table row."""
    from asr_ctc.finetune import run_finetune
    from asr_ctc.inference import run_inference

    cfg = load_config(args.config, run_overrides(name, loss_overrides, args, corpus, out))
    result = run_finetune(cfg, overwrite=True)
    step_s = result.metrics["train_runtime"] / args.steps
    dev = run_inference(result.output_dir, cfg, split="eval", output_dir=out / name / "dev")
    test = run_inference(
        result.output_dir,
        cfg,
        split="test",
        output_dir=out / name / "test",
        decoding=dataclasses.replace(cfg.decoding, decoder="lm"),
        tune_lm=True,
        tune_utterances=args.tune_utterances,
    )
    return {
        "variant": name,
        "loss": " ".join(o.removeprefix("loss.") for o in loss_overrides) or "plain CTC",
        "test_greedy_wer": test.summary["greedy"]["wer"],
        "test_lm_wer": test.summary["lm"]["wer"],
        "dev_wer": dev.summary["greedy"]["wer"],
        "step_s": step_s,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | loss keys | test WER greedy | test WER LM | dev WER greedy | step time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | `{r['loss']}` | {100 * r['test_greedy_wer']:.2f}% "
            f"| {100 * r['test_lm_wer']:.2f}% | {100 * r['dev_wer']:.2f}% | {1000 * r['step_s']:.0f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--steps", type=int, default=1600, help="training steps, the same for every variant")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="name=key:value,...")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_variants"))
    parser.add_argument("--corrupt", choices=CORRUPTIONS, help="train on transcripts that lost words")
    parser.add_argument("--corrupt-fraction", type=float, default=0.3)
    parser.add_argument("--tune-utterances", type=int, default=250)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.steps < 1:
        parser.error(f"--steps: expected >= 1, got {args.steps}")
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as exc:
        parser.error(str(exc))

    corpus = args.corpus
    if args.corrupt:
        corpus = args.out / f"corpus_{args.corrupt}"
        summary = corrupt_corpus(args.corpus, corpus, args.corrupt, args.corrupt_fraction)
        print(f"corrupted corpus: {json.dumps(summary)}")
    start = conditions()
    rows = []
    for name, loss_overrides in variants:
        rows.append(run_variant(name, loss_overrides, args, corpus, args.out))
        print(json.dumps(rows[-1]), flush=True)
    end = conditions()
    print()
    print(table(rows))
    print()
    lost = f" with {args.corrupt_fraction:.0%} of train transcripts losing words ({args.corrupt})"
    print(
        f"{args.steps} steps per variant; corpus {args.corpus}{lost if args.corrupt else ''}; "
        f"{'tiny model (smoke run)' if args.tiny else args.config}"
    )
    print(f"machine: {start['machine']} (start)")
    print(f"load average at start {start['load']}, at the end {end['load']}")
    record = {"rows": rows, "start": start, "end": end, "argv": sys.argv[1:]}
    atomic_write_text(args.out / "bench_variants.json", json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
