"""Local manifests: one row per utterance, naming an audio file and its transcript.

Format (chosen by extension):

* ``.tsv`` -- tab-separated, first line is the header. No quoting at all: a field is everything between
  tabs, so transcripts may contain quotes and commas; tabs and newlines inside a field are impossible (and
  :func:`write_manifest` refuses them).
* ``.csv`` -- comma-separated with standard CSV quoting (RFC 4180, as written by spreadsheets).
* ``.jsonl`` -- one JSON object per line; blank lines are ignored.

Required columns: the audio path (default ``audio``) and the transcript (default ``text``). An ``id``
column is optional; without it the id is the audio file's stem (suffixed with the row number when two rows
share a stem). Relative audio paths are relative to the manifest's own directory, so a corpus directory can
be moved or copied as a whole, or to ``audio_root`` when the audio lives elsewhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from asr_ctc.fileio import atomic_write_text

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
_FORBIDDEN_TSV_CHARS = ("\t", "\n", "\r")


class ManifestError(ValueError):
    """A manifest is missing, has an unknown format, lacks a column, or has a malformed row."""


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(
            f"{path}: unknown manifest extension {path.suffix!r}; use one of {MANIFEST_SUFFIXES}"
        )
    return suffix


def _read_tsv(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    # split("\n"), not splitlines(): the latter also breaks at U+2028, form feeds etc. inside transcripts.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}: empty manifest (no header line)")
    header = lines[0].split("\t")
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ManifestError(f"{path}, line {line_number}: {len(fields)} fields, header has {len(header)}")
        rows.append((line_number, dict(zip(header, fields, strict=True))))
    return header, rows


def _read_csv(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path}: empty manifest (no header line)")
        rows = []
        for fields in reader:
            # line_num counts physical lines, so quoted multi-line fields still point at the right place.
            line_number = reader.line_num
            if not fields or not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise ManifestError(
                    f"{path}, line {line_number}: {len(fields)} fields, header has {len(header)}"
                )
            rows.append((line_number, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise ManifestError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from exc
    return header, rows


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    columns: dict[str, None] = {}  # ordered union of keys, for error messages
    rows = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}, line {line_number}: malformed JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise ManifestError(
                f"{path}, line {line_number}: expected a JSON object, got {type(obj).__name__}"
            )
        columns.update(dict.fromkeys(obj))
        rows.append((line_number, obj))
    return list(columns), rows


def read_manifest(
    path: str | os.PathLike,
    audio_column: str = "audio",
    text_column: str = "text",
    id_column: str = "id",
    audio_root: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Read a CSV, TSV or JSONL manifest.

    Relative audio paths resolve against ``audio_root`` when given (Common Voice's ``clips/`` beside its
    TSVs), else against the manifest's own folder.

    Returns:
        one dict per row, in file order: ``id`` (str), ``audio`` (absolute path, str), ``text`` (str), plus
        every other column under its own name (strings for CSV/TSV; JSON values for JSONL).

    Raises:
        ManifestError: missing file, a directory, unknown extension, missing column (named, with the columns
            found), malformed line (with its line number), empty audio path, or duplicate ids.
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, not a manifest (a .tsv, .csv or .jsonl file)")
    suffix = _suffix(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would corrupt the first name.
    text = path.read_text(encoding="utf-8-sig")
    reader = {".tsv": _read_tsv, ".csv": _read_csv, ".jsonl": _read_jsonl}[suffix]
    columns, raw_rows = reader(path, text)

    for wanted, role in ((audio_column, "audio"), (text_column, "transcript")):
        if wanted not in columns:
            found = ", ".join(repr(c) for c in columns) or "none"
            raise ManifestError(f"{path}: no {role} column {wanted!r}; columns found: {found}")
    base_dir = Path(audio_root).expanduser().resolve() if audio_root is not None else path.resolve().parent
    renamed = {id_column, audio_column, text_column}
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    for line_number, raw in raw_rows:
        where = f"{path}, line {line_number}"
        for column in (audio_column, text_column):
            if column not in raw:
                raise ManifestError(f"{where}: no {column!r} field")
            if not isinstance(raw[column], str):
                raise ManifestError(f"{where}: {column!r} must be a string, got {type(raw[column]).__name__}")
        audio = raw[audio_column].strip()
        if not audio:
            raise ManifestError(f"{where}: empty audio path")
        audio_path = os.path.abspath(os.path.join(base_dir, os.path.expanduser(audio)))
        explicit_id = raw.get(id_column)
        if explicit_id is not None and str(explicit_id).strip():
            utt_id = str(explicit_id).strip()
            if utt_id in seen_ids:
                raise ManifestError(f"{where}: duplicate id {utt_id!r}")
        else:
            utt_id = Path(audio).stem
            if utt_id in seen_ids:
                utt_id = f"{utt_id}-{len(rows) + 1}"
        seen_ids.add(utt_id)
        row: dict[str, Any] = {"id": utt_id, "audio": audio_path, "text": raw[text_column]}
        for key, value in raw.items():
            if key in renamed:
                continue
            if key in row:
                raise ManifestError(f"{where}: column {key!r} clashes with the standard field of that name")
            row[key] = value
        rows.append(row)
    return rows


def write_manifest(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    audio_column: str = "audio",
) -> None:
    """Write ``rows`` as a TSV manifest, atomically.

    Only ``columns`` are written, in that order. Absolute paths in ``audio_column`` are written relative to
    the manifest's directory (relative ones are assumed to be relative to it already).

    Raises:
        ManifestError: ``path`` does not end in ``.tsv``, a row lacks a column, or a value contains a tab,
            newline or carriage return (which would break the row structure).
    """
    path = Path(path)
    if path.suffix.lower() != ".tsv":
        raise ManifestError(f"{path}: write_manifest writes TSV; the name must end in .tsv")
    columns = list(columns)
    if not columns or len(set(columns)) != len(columns):
        raise ManifestError(f"{path}: columns must be non-empty and distinct, got {columns}")
    for name in columns:
        if any(ch in name for ch in _FORBIDDEN_TSV_CHARS):
            raise ManifestError(f"{path}: column name {name!r} contains a tab or line break")
    base_dir = path.resolve().parent
    lines = ["\t".join(columns)]
    for index, row in enumerate(rows):
        fields = []
        for column in columns:
            if column not in row:
                raise ManifestError(f"{path}: row {index} ({row.get('id', '?')}) has no {column!r} value")
            value = str(row[column])
            if column == audio_column and os.path.isabs(value):
                value = os.path.relpath(value, base_dir)
            if any(ch in value for ch in _FORBIDDEN_TSV_CHARS):
                raise ManifestError(
                    f"{path}: row {index} column {column!r} value {value!r} contains a tab or line break"
                )
            fields.append(value)
        line = "\t".join(fields)
        if not line.strip():
            # The reader skips blank lines, so such a row would silently vanish.
            raise ManifestError(f"{path}: row {index} has only empty values")
        lines.append(line)
    atomic_write_text(path, "\n".join(lines) + "\n")
