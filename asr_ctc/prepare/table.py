"""Any table of utterances (CSV, TSV or JSONL with named columns) to a manifest.

The table is read by the manifest reader (:func:`asr_ctc.data.manifest.read_manifest`: same formats, same
error messages with line numbers); what this recipe adds is the folder that relative audio paths resolve
against (``audio_root``: Common Voice keeps its clips in ``clips/`` beside the tables, not in the tables'
own folder), the renaming of the corpus's columns to ``id``/``audio``/``text``, and the check that each
audio file exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asr_ctc.data import manifest as _manifest
from asr_ctc.prepare._common import PrepareError, keep_existing_audio, write_prepared_manifest


def read_table(
    table: str | os.PathLike,
    audio_column: str = "audio",
    text_column: str = "text",
    id_column: str = "id",
    audio_root: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``table`` with absolute audio paths; relative ones resolve against ``audio_root``.

    Args:
        table: a ``.csv``, ``.tsv`` (tab-separated, no quoting) or ``.jsonl`` file.
        audio_column, text_column, id_column: the table's names for the audio path, the transcript and the
            (optional) utterance id.
        audio_root: folder that relative audio paths are relative to (default: the table's folder).

    Returns:
        one dict per row: ``id``, ``audio`` (absolute), ``text``, and the table's other columns.

    Raises:
        PrepareError: ``audio_root`` is not a folder.
        ManifestError: the table is missing, has an unknown extension, lacks a named column, or has a
            malformed row (the message names file, line and column).
    """
    path = Path(table).expanduser()
    if audio_root is not None and not Path(audio_root).expanduser().is_dir():
        raise PrepareError(f"audio root {Path(audio_root).expanduser()}: not an existing folder")
    return _manifest.read_manifest(path, audio_column, text_column, id_column, audio_root=audio_root)


def prepare_table(
    table: str | os.PathLike,
    out: str | os.PathLike | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    id_column: str = "id",
    audio_root: str | os.PathLike | None = None,
) -> Path:
    """Write the manifest of one table: :func:`read_table`, rows without an audio file dropped.

    Args:
        table, audio_column, text_column, id_column, audio_root: as for :func:`read_table`.
        out: the manifest to write (``.tsv``; default ``<table folder>/manifests/<table stem>.tsv``).

    Returns:
        the manifest path.

    Raises:
        PrepareError: ``out`` is the table itself, or no row has an existing audio file.
        ManifestError: as :func:`read_table`.
    """
    path = Path(table).expanduser()
    out_path = Path(out).expanduser() if out is not None else path.parent / "manifests" / f"{path.stem}.tsv"
    if out_path.exists() and path.exists() and out_path.resolve() == path.resolve():
        raise PrepareError(f"{out_path}: the output manifest would overwrite the table it is made from")
    rows = read_table(path, audio_column, text_column, id_column, audio_root)
    return write_prepared_manifest(out_path, keep_existing_audio(rows, str(path)), str(path))
