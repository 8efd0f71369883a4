"""What the recipes share: the error type, the manifest they write, the audio-file check."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asr_ctc.data.audio import file_problem
from asr_ctc.data.manifest import write_manifest
from asr_ctc.data.text import normalize_text

logger = logging.getLogger("asr_ctc.prepare")

#: Columns every prepared manifest starts with (the rest follow in the corpus's own order).
STANDARD_COLUMNS = ("id", "audio", "text")


class PrepareError(ValueError):
    """A corpus folder, table or manifest cannot be prepared; the message names the path and the reason."""


def existing_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or :class:`PrepareError` when it is not an existing folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PrepareError(f"{what}: {path} not found")
    if not path.is_dir():
        raise PrepareError(f"{what}: {path} is a file; expected the corpus folder")
    return path


def keep_existing_audio(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Drop rows whose audio file is missing or empty, with one warning that counts them.

    Corpora ship with a few such rows (a Common Voice clip that was withdrawn, an interrupted download);
    skipping them, as lhotse's recipes do, keeps one bad file from blocking a whole corpus, and the
    warning names the first one so that a systematic problem (a wrong folder) is visible.
    """
    kept, dropped = [], []
    for row in rows:
        problem = file_problem(row["audio"])
        (dropped if problem else kept).append(problem or row)
    if dropped:
        logger.warning("%s: %d of %d rows skipped; first: %s", where, len(dropped), len(rows), dropped[0])
    return kept


def write_prepared_manifest(path: Path, rows: Sequence[Mapping[str, Any]], where: str) -> Path:
    """Write ``rows`` (absolute ``audio`` paths) as a TSV manifest at ``path``, atomically.

    Transcripts have their whitespace collapsed (a TSV field cannot hold a tab or line break, and a CSV
    cell can); case and punctuation are kept. Columns: :data:`STANDARD_COLUMNS`, then every other key in
    first-seen order; a row without one of those gets an empty value.

    Raises:
        PrepareError: no rows (``where`` names the source).
    """
    if not rows:
        raise PrepareError(f"{where}: no utterances with an existing audio file; nothing written")
    extra: dict[str, None] = {}
    for row in rows:
        extra.update(dict.fromkeys(k for k in row if k not in STANDARD_COLUMNS))
    cleaned = []
    for row in rows:
        out = {key: _one_line(str(row.get(key, ""))) for key in extra}
        out.update(id=row["id"], audio=row["audio"], text=normalize_text(str(row["text"]), lowercase=False))
        cleaned.append(out)
    write_manifest(path, cleaned, [*STANDARD_COLUMNS, *extra])
    logger.info("%s: %d utterances -> %s", where, len(cleaned), path)
    return path


def _one_line(value: str) -> str:
    return " ".join(value.split()) if any(ch in value for ch in "\t\r\n") else value
