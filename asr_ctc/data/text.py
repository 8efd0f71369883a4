"""Transcript normalisation: the same rules for the vocabulary, training targets and scoring."""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool = True, chars_to_drop: str = "") -> str:
    """Lowercase (optionally), delete ``chars_to_drop`` and collapse whitespace to single spaces."""
    if lowercase:
        text = text.lower()
    if chars_to_drop:
        text = text.translate({ord(c): None for c in chars_to_drop})
    return _SPACES.sub(" ", text).strip()
