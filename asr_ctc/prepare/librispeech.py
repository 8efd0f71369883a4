"""LibriSpeech recipe: ``<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac`` to manifests.

Each chapter folder holds its FLAC files and one ``<speaker>-<chapter>.trans.txt`` whose lines are
``<utterance id> <TRANSCRIPT>`` (upper case, no punctuation but the apostrophe). ``DIR`` may be the
``LibriSpeech`` folder holding several subsets (``train-clean-100``, ``dev-clean``, ...) or one subset
folder; either way every subset found becomes ``<out_dir>/<subset>.tsv`` (columns ``id``, ``audio``,
``text``, ``speaker``, ``chapter``). Source: the corpus's README (Panayotov et al., ICASSP 2015,
https://www.openslr.org/12).
"""

from __future__ import annotations

import os
from pathlib import Path

from asr_ctc.prepare._common import PrepareError, existing_dir, keep_existing_audio, write_prepared_manifest

TRANSCRIPT_SUFFIX = ".trans.txt"


def _read_transcripts(trans: Path) -> list[dict[str, str]]:
    """Rows of one chapter's transcript file (audio paths absolute, beside it)."""
    speaker, _, chapter = trans.name[: -len(TRANSCRIPT_SUFFIX)].partition("-")
    rows = []
    for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        if not text.strip():
            raise PrepareError(
                f"{trans}, line {number}: expected '<utterance id> <transcript>', got {line!r}"
            )
        rows.append(
            {
                "id": utt_id,
                "audio": os.path.join(trans.parent, f"{utt_id}.flac"),
                "text": text,
                "speaker": speaker,
                "chapter": chapter,
            }
        )
    return rows


def prepare_librispeech(
    corpus_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write one manifest per LibriSpeech subset found under ``corpus_dir``.

    Args:
        corpus_dir: the ``LibriSpeech`` folder, or one subset folder (e.g. ``.../dev-clean``).
        out_dir: where the manifests go (default ``<corpus_dir>/manifests``); audio paths in them are
            relative to it.

    Returns:
        ``{subset: manifest path}``, subsets in sorted order.

    Raises:
        PrepareError: ``corpus_dir`` is missing or holds no ``*.trans.txt`` at ``<subset>/<spk>/<chapter>/``
            depth, a transcript line is malformed, or a subset has no existing FLAC file.
    """
    root = existing_dir(corpus_dir, "librispeech DIR")
    out = Path(out_dir).expanduser() if out_dir is not None else root / "manifests"
    subsets: dict[str, list[dict[str, str]]] = {}
    for trans in sorted(root.rglob(f"*{TRANSCRIPT_SUFFIX}")):
        subset_dir = trans.parent.parent.parent  # <subset>/<speaker>/<chapter>/<file>
        if subset_dir != root and root not in subset_dir.parents:
            continue  # too shallow to be a LibriSpeech chapter: not part of the layout
        subsets.setdefault(subset_dir.name, []).extend(_read_transcripts(trans))
    if not subsets:
        raise PrepareError(
            f"librispeech DIR: no '<speaker>-<chapter>{TRANSCRIPT_SUFFIX}' files under {root}; expected "
            "the LibriSpeech folder or a subset folder such as dev-clean/<speaker>/<chapter>/"
        )
    written = {}
    for subset, rows in sorted(subsets.items()):
        kept = keep_existing_audio(rows, f"{root} subset {subset}")
        written[subset] = write_prepared_manifest(out / f"{subset}.tsv", kept, f"{root} subset {subset}")
    return written
