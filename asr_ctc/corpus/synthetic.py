"""A synthetic speech corpus: grammar sentences spoken by eSpeak NG in many voices, as 16 kHz WAV + TSV.

Layout of ``out_dir``::

    wavs/<split>-<nnnnnn>.wav   16 kHz mono 16-bit PCM
    train.tsv dev.tsv test.tsv  manifests: id, audio (relative to out_dir), text, voice, words
    corpus.json                 parameters, counts, hours and voices per split (written last)

``words`` is the ground truth of when each word is spoken, from eSpeak's own phoneme events: JSON
``[["play",0.0499,0.2599],...]``, word, start and end in seconds (see
:func:`asr_ctc.corpus.espeak.word_times`; null where eSpeak spoke a word inside its neighbour). corpus.json
describes the column under ``"word_times"``.

The test split is a harder generalisation check than dev: its sentences never occur in train or dev, and
its voice variants (3 by default: one male, one female, one Klatt-synthesised) are never used in train or
dev. Dev has unseen sentences but train's voices.

Everything random is drawn up front from one ``random.Random(seed)`` in the parent process, and every
utterance is synthesised in a freshly loaded eSpeak library (see :mod:`asr_ctc.corpus.espeak`), so the
files are byte-identical for the same seed and size whatever ``num_workers`` is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr_ctc.boundaries import WordTime, words_from_json, words_to_json
from asr_ctc.corpus.espeak import ESpeakSynthesizer, list_language_voices, list_variants, word_times
from asr_ctc.corpus.grammar import generate_sentences, split_sentences
from asr_ctc.data.audio import resample
from asr_ctc.data.manifest import read_manifest, write_manifest
from asr_ctc.fileio import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

# Bump when the same parameters would give different files. v2: the manifests' words column (v1 audio
# is byte-identical; only the manifests and corpus.json differ).
FORMAT = "asr-ctc synthetic corpus v2"
SPLITS = ("train", "dev", "test")
MANIFEST_COLUMNS = ("id", "audio", "text", "voice", "words")
WORD_TIMES_DESCRIPTION = (
    "manifest column 'words': JSON list of [word, start, end] per word of 'text', in order; seconds from "
    "the start of the WAV, 0.1 ms resolution. start = the start of the word's first phoneme, end = the "
    "start of the next phoneme or pause after its last phoneme (or the end of the audio), both from "
    "eSpeak NG's phoneme events (sample-exact at its 22050 Hz; resampling does not move them). eSpeak "
    "speaks some unstressed words inside the previous word ('in the', 'from the', 'for a', 'this one'): "
    "such a group has its first word's start and its last word's end, and null for the boundaries inside it."
)
SAMPLING_RATE = 16000

# English language voices in eSpeak NG (different accents and letter-to-sound rules).
LANGUAGES = (
    "en-us",
    "en",  # British English
    "en-029",  # Caribbean
    "en-gb-scotland",
    "en-gb-x-gbclan",  # Lancaster
    "en-gb-x-gbcwmd",  # West Midlands
    "en-gb-x-rp",  # Received Pronunciation
    "en-us-nyc",
)
# Voice variants (timbre, pitch range, formants), grouped so that the held-out test variants cover
# different kinds of voice. Variants whose speech is mostly effects (robots, croaks, whispers) are left out.
VARIANT_GROUPS: dict[str, tuple[str, ...]] = {
    "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "david", "edward", "paul", "quincy", "robert"),
    "female": ("f1", "f2", "f3", "f4", "f5", "belinda", "linda", "steph", "aunty", "grandma"),
    "klatt": ("klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6"),
}
RATE_WPM = (140, 200)  # speaking rate range, words per minute
PITCH = (30, 70)  # base pitch range on eSpeak's 0-100 scale
_MAX_PEAK = 0.95  # of full scale
_WAV_NAME = re.compile(r"(train|dev|test)-\d{6}\.wav")


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One planned utterance: what to say, how, and where to write it (relative to the corpus dir)."""

    id: str
    split: str
    text: str
    voice: str
    rate: int
    pitch: int
    seed: int

    @property
    def audio(self) -> str:
        return f"wavs/{self.id}.wav"


@dataclasses.dataclass(frozen=True)
class CorpusPlan:
    """The whole corpus, decided before any audio is made."""

    utterances: list[Utterance]
    test_variants: list[str]
    train_variants: list[str]


def _choose_test_variants(rng: random.Random, groups: dict[str, list[str]], count: int) -> list[str]:
    """Pick ``count`` variants round-robin over the groups, so held-out voices differ in kind."""
    pools = {name: rng.sample(members, len(members)) for name, members in groups.items() if members}
    chosen: list[str] = []
    while len(chosen) < count and any(pools.values()):
        for pool in pools.values():
            if pool and len(chosen) < count:
                chosen.append(pool.pop())
    return sorted(chosen)


# make-corpus's split sizes when none are given: the demo's 500 dev and 1,000 test utterances of 14,250, as
# shares of --num-utterances, so that the defaults fit any corpus size.
DEFAULT_DEV_SHARE, DEFAULT_TEST_SHARE = 500 / 14250, 1000 / 14250


def split_sizes(
    num_utterances: int, num_dev: int | None = None, num_test: int | None = None
) -> tuple[int, int]:
    """The dev and test utterance counts for ``num_utterances``: given counts as they are, a missing one
    its default share (:data:`DEFAULT_DEV_SHARE`, :data:`DEFAULT_TEST_SHARE`) rounded, at least 1.

    Raises:
        ValueError: a negative count, or counts that leave no training utterance (the message names the
            command's options, ``--num-utterances``, ``--num-dev``, ``--num-test``).
    """
    dev = num_dev if num_dev is not None else max(1, round(num_utterances * DEFAULT_DEV_SHARE))
    test = num_test if num_test is not None else max(1, round(num_utterances * DEFAULT_TEST_SHARE))
    if num_utterances < 3 and (num_dev is None or num_test is None):
        raise ValueError(
            f"--num-utterances: expected at least 3 (one utterance per split), got {num_utterances}"
        )
    if dev < 0 or test < 0 or dev + test >= num_utterances:
        raise ValueError(
            f"--num-dev, --num-test: expected counts >= 0 that leave training utterances out of "
            f"--num-utterances {num_utterances}, got {dev} and {test}"
        )
    return dev, test


def plan_corpus(
    num_utterances: int,
    seed: int = 0,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.1,
    num_test_variants: int = 3,
) -> CorpusPlan:
    """Decide every sentence, voice, rate, pitch and file name; deterministic for the arguments.

    Sentences are distinct across the whole corpus, so no test (or dev) sentence occurs in training. Test
    utterances use only the held-out variants; train and dev use only the others.
    """
    if num_utterances < 1:
        raise ValueError(f"num_utterances must be >= 1, got {num_utterances}")
    if dev_fraction < 0 or test_fraction < 0 or dev_fraction + test_fraction >= 1:
        raise ValueError(
            f"need dev_fraction, test_fraction >= 0 with sum < 1, got {dev_fraction}, {test_fraction}"
        )
    available = set(list_variants())
    groups = {name: [v for v in members if v in available] for name, members in VARIANT_GROUPS.items()}
    all_variants = sorted(v for members in groups.values() for v in members)
    if not 0 <= num_test_variants < len(all_variants):
        raise ValueError(f"num_test_variants must be in [0, {len(all_variants)}), got {num_test_variants}")
    languages = [lang for lang in LANGUAGES if lang in set(list_language_voices())]
    if not languages:
        raise RuntimeError("none of the English eSpeak voices is installed")

    rng = random.Random(seed)
    test_variants = _choose_test_variants(rng, groups, num_test_variants)
    train_variants = [v for v in all_variants if v not in test_variants]
    sentences = generate_sentences(num_utterances, rng)
    by_split = split_sentences(
        sentences,
        {"train": 1.0 - dev_fraction - test_fraction, "dev": dev_fraction, "test": test_fraction},
        rng,
    )
    utterances = []
    for split in SPLITS:
        variants = test_variants if split == "test" else train_variants
        for index, text in enumerate(by_split[split]):
            utterances.append(
                Utterance(
                    id=f"{split}-{index:06d}",
                    split=split,
                    text=text,
                    voice=f"{rng.choice(languages)}+{rng.choice(variants)}",
                    rate=rng.randint(*RATE_WPM),
                    pitch=rng.randint(*PITCH),
                    seed=rng.randrange(2**31),
                )
            )
    return CorpusPlan(utterances=utterances, test_variants=test_variants, train_variants=train_variants)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1], any shape -> int16 of the same shape (rounded, clipped)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def render_utterance(
    synthesizer: ESpeakSynthesizer,
    utt: Utterance,
    out_dir: str | os.PathLike,
    sampling_rate: int = SAMPLING_RATE,
) -> tuple[int, list[WordTime]]:
    """Speak one utterance, resample it to ``sampling_rate`` and write the WAV atomically.

    Returns:
        the number of samples written, and each word's time span in the written audio (seconds).
    """
    audio, events = synthesizer.synthesize_with_events(
        utt.text, voice=utt.voice, rate=utt.rate, pitch=utt.pitch, seed=utt.seed
    )
    if audio.size == 0:
        raise RuntimeError(f"eSpeak produced no audio for {utt.id} ({utt.text!r}, {utt.voice})")
    num_synth_samples = audio.shape[0]
    audio = resample(audio, synthesizer.sample_rate, sampling_rate)
    words = word_times(
        utt.text, events, synthesizer.sample_rate, num_synth_samples, duration=audio.shape[0] / sampling_rate
    )
    # Some variants reach full scale (eSpeak's gain control stops at the int16 limit) and resampling can
    # overshoot it; scale those down rather than clip.
    peak = float(np.abs(audio).max())
    if peak > _MAX_PEAK:
        audio *= np.float32(_MAX_PEAK / peak)
    pcm = to_pcm16(audio)
    # No fsync per file: make_synthetic_corpus syncs once before corpus.json vouches for the files.
    with atomic_write(Path(out_dir) / utt.audio, "wb", durable=False) as handle:
        sf.write(handle, pcm, sampling_rate, format="WAV", subtype="PCM_16")
    return int(pcm.shape[0]), words


# Per-process synthesizer for pool workers (set by _init_worker).
_WORKER_SYNTH: ESpeakSynthesizer | None = None


def _init_worker() -> None:
    global _WORKER_SYNTH
    _WORKER_SYNTH = ESpeakSynthesizer()


def _render_in_worker(job: tuple[Utterance, str, int]) -> tuple[str, tuple[int, list[WordTime]]]:
    utt, out_dir, sampling_rate = job
    assert _WORKER_SYNTH is not None, "worker not initialised"
    return utt.id, render_utterance(_WORKER_SYNTH, utt, out_dir, sampling_rate)


def _render_all(
    utterances: Sequence[Utterance], out_dir: Path, sampling_rate: int, num_workers: int, progress: bool
) -> dict[str, tuple[int, list[WordTime]]]:
    """Render every utterance; return ``{id: (num_samples, word times)}``."""
    rendered: dict[str, tuple[int, list[WordTime]]] = {}
    bar = tqdm(total=len(utterances), unit="utt", desc="synthesizing", disable=not progress, smoothing=0.1)
    with bar:
        if num_workers <= 1:
            with ESpeakSynthesizer() as synthesizer:
                for utt in utterances:
                    rendered[utt.id] = render_utterance(synthesizer, utt, out_dir, sampling_rate)
                    bar.update()
        else:
            jobs = [(utt, str(out_dir), sampling_rate) for utt in utterances]
            # Batches amortise inter-process messaging (one utterance takes only ~5 ms); small enough
            # that the workers finish together.
            chunksize = max(1, min(64, len(jobs) // (num_workers * 8)))
            # spawn, not fork: the parent may hold threads (tqdm's monitor, torch) whose locks a forked
            # child would inherit in a locked state.
            context = multiprocessing.get_context("spawn")
            with context.Pool(num_workers, initializer=_init_worker) as pool:
                for utt_id, result in pool.imap_unordered(_render_in_worker, jobs, chunksize=chunksize):
                    rendered[utt_id] = result
                    bar.update()
                pool.close()
                pool.join()
    return rendered


def _remove_stale_wavs(wav_dir: Path, keep: set[str]) -> int:
    """Delete corpus WAVs from an earlier, different run (only names this module writes)."""
    removed = 0
    if wav_dir.is_dir():
        for path in wav_dir.iterdir():
            if _WAV_NAME.fullmatch(path.name) and path.name not in keep:
                path.unlink()
                removed += 1
    return removed


def _summarise(
    plan: CorpusPlan, lengths: dict[str, int], params: dict[str, Any], version: str
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split in SPLITS:
        utts = [u for u in plan.utterances if u.split == split]
        seconds = sum(lengths[u.id] for u in utts) / params["sampling_rate"]
        splits[split] = {
            "manifest": f"{split}.tsv",
            "utterances": len(utts),
            "hours": round(seconds / 3600, 4),
            "mean_seconds": round(seconds / len(utts), 3) if utts else 0.0,
            "variants": sorted({u.voice.partition("+")[2] for u in utts}),
            "voices": sorted({u.voice for u in utts}),
        }
    total_seconds = sum(lengths.values()) / params["sampling_rate"]
    return {
        "format": FORMAT,
        "parameters": params,
        "espeak_ng_version": version,
        "test_variants": plan.test_variants,
        "word_times": WORD_TIMES_DESCRIPTION,
        "total": {"utterances": len(plan.utterances), "hours": round(total_seconds / 3600, 4)},
        "splits": splits,
    }


def make_synthetic_corpus(
    out_dir: str | os.PathLike,
    num_utterances: int = 10000,
    seed: int = 0,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.1,
    num_workers: int = 2,
    *,
    num_test_variants: int = 3,
    sampling_rate: int = SAMPLING_RATE,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Generate (or reuse) a synthetic corpus in ``out_dir``; return the ``corpus.json`` summary.

    If ``out_dir/corpus.json`` already records the same parameters and the manifests exist, nothing is
    regenerated (unless ``force``). The summary holds the parameters, the eSpeak NG version, the held-out
    test variants, and per split: manifest name, utterance count, hours, mean duration, variants, voices.
    """
    out_dir = Path(out_dir)
    params = {
        "num_utterances": num_utterances,
        "seed": seed,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "num_test_variants": num_test_variants,
        "sampling_rate": sampling_rate,
    }
    summary_path = out_dir / "corpus.json"
    if not force and summary_path.is_file():
        try:
            existing = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            existing = None
        manifests_exist = all((out_dir / f"{split}.tsv").is_file() for split in SPLITS)
        if (
            existing
            and existing.get("format") == FORMAT
            and existing.get("parameters") == params
            and manifests_exist
        ):
            logger.info("%s already holds a corpus with these parameters; reusing it", out_dir)
            return existing

    plan = plan_corpus(num_utterances, seed, dev_fraction, test_fraction, num_test_variants)
    # Invalidate first: if this run dies halfway, no corpus.json vouches for the mixed old/new files.
    summary_path.unlink(missing_ok=True)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rendered = _render_all(plan.utterances, out_dir, sampling_rate, num_workers, progress)
    lengths = {utt_id: num_samples for utt_id, (num_samples, _) in rendered.items()}
    removed = _remove_stale_wavs(wav_dir, {Path(u.audio).name for u in plan.utterances})
    if removed:
        logger.info("removed %d WAV files left from an earlier corpus", removed)
    for split in SPLITS:
        rows = [
            dataclasses.asdict(u) | {"audio": u.audio, "words": words_to_json(rendered[u.id][1])}
            for u in plan.utterances
            if u.split == split
        ]
        write_manifest(out_dir / f"{split}.tsv", rows, MANIFEST_COLUMNS)
    with ESpeakSynthesizer() as synthesizer:
        version = synthesizer.version
    summary = _summarise(plan, lengths, params, version)
    if hasattr(os, "sync"):  # the WAVs were written without fsync: flush them before the marker
        os.sync()
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return summary


def read_word_times(
    manifest: str | os.PathLike,
    column: str = "words",
    group_column: str = "voice",
    *,
    audio_column: str = "audio",
    text_column: str = "text",
    id_column: str = "id",
) -> dict[str, tuple[list[WordTime], str | None]] | None:
    """The true word times of a manifest's utterances, ``{id: (words, group)}``; None when it has no
    ``column``. The group is the ``group_column`` value's voice variant (``"en-us+f3"`` -> ``"f3"``: the
    corpus holds out variants for its test split), None without that column. The other columns are
    :func:`asr_ctc.data.manifest.read_manifest`'s (ids as the data pipeline reads them).

    Raises:
        ManifestError: the manifest cannot be read (see :func:`asr_ctc.data.manifest.read_manifest`).
        ValueError: a ``words`` value is malformed, naming the manifest and the utterance.
    """
    rows = read_manifest(manifest, audio_column, text_column, id_column)
    if not rows or column not in rows[0]:
        return None
    out = {}
    for row in rows:
        try:
            words = words_from_json(row[column])
        except ValueError as exc:
            raise ValueError(f"{manifest}, utterance {row['id']}: {exc}") from exc
        voice = row.get(group_column)
        out[row["id"]] = (words, None if voice is None else (str(voice).partition("+")[2] or str(voice)))
    return out
