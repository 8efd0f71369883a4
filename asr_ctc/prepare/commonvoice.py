"""Common Voice recipe: a language folder (``clips/*.mp3`` beside ``train.tsv``, ``dev.tsv``, ``test.tsv``).

Each split table is tab-separated with a header (``client_id``, ``path``, ``sentence``, ``up_votes``, ...;
the set of columns grows between releases, so every column is kept); ``path`` names a clip in ``clips/``.
Every split present becomes ``<out_dir>/<split>.tsv`` with ``id`` (the clip's stem), ``audio``, ``text``
(the ``sentence``, as spelled: mixed case and punctuation) and the other columns. Source: the dataset card
of Common Voice (Ardila et al., LREC 2020, https://commonvoice.mozilla.org/datasets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from asr_ctc.prepare._common import PrepareError, existing_dir
from asr_ctc.prepare.table import prepare_table

DEFAULT_SPLITS = ("train", "dev", "test")


def prepare_commonvoice(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    splits: Sequence[str] = DEFAULT_SPLITS,
) -> dict[str, Path]:
    """Write one manifest per Common Voice split table found in ``corpus_dir``.

    Args:
        corpus_dir: the language folder (holding ``clips/`` and the split tables).
        out_dir: where the manifests go (default ``<corpus_dir>/manifests``); never ``corpus_dir`` itself,
            whose ``train.tsv`` etc. are the corpus's own tables.
        splits: table names to read (``validated``, ``other``, ``invalidated`` are the other ones shipped).

    Returns:
        ``{split: manifest path}`` for the splits whose table exists.

    Raises:
        PrepareError: no ``clips/`` folder, none of ``splits`` present, ``out_dir`` is ``corpus_dir``, or a
            split has no existing clip.
        ManifestError: a table lacks ``path`` or ``sentence`` or has a malformed line.
    """
    root = existing_dir(corpus_dir, "commonvoice DIR")
    clips = root / "clips"
    if not clips.is_dir():
        raise PrepareError(
            f"commonvoice DIR: {root} has no clips/ folder; expected a Common Voice language folder"
        )
    out = Path(out_dir).expanduser() if out_dir is not None else root / "manifests"
    if out.resolve() == root.resolve():
        raise PrepareError(f"--out-dir: {out} is the corpus folder; its train.tsv etc. would be overwritten")
    tables = {split: root / f"{split}.tsv" for split in splits if (root / f"{split}.tsv").is_file()}
    if not tables:
        wanted = ", ".join(f"{s}.tsv" for s in splits)
        raise PrepareError(f"commonvoice DIR: {root} has none of {wanted}")
    return {
        split: prepare_table(table, out / f"{split}.tsv", "path", "sentence", audio_root=clips)
        for split, table in tables.items()
    }
