"""Character vocabulary and the wav2vec2 processor built from the training transcripts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from ..fileio import atomic_write_text

PAD_TOKEN = "<pad>"  # also the CTC blank: id 0
UNK_TOKEN = "<unk>"
WORD_DELIMITER = "|"


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Map every character of the (normalised) training transcripts to an id.

    ``<pad>`` is 0 and doubles as the CTC blank, ``<unk>`` is 1, the space is spelt ``|`` (the wav2vec2
    word delimiter, so that decoding can restore word boundaries), then the characters in sorted order so
    the same corpus always gives the same ids.
    """
    chars = sorted({c for text in texts for c in text} - {" "})
    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1, WORD_DELIMITER: 2}
    for c in chars:
        if c in vocab:
            raise ValueError(f"transcripts contain the reserved token character {c!r}")
        vocab[c] = len(vocab)
    return vocab


def build_processor(
    vocab: dict[str, int], work_dir: str | Path, sampling_rate: int = 16000
) -> Wav2Vec2Processor:
    """A ``Wav2Vec2Processor`` (CTC tokenizer + feature extractor) for ``vocab``.

    The vocabulary file is written to ``work_dir/vocab.json`` (the tokenizer reads it from disk).
    The feature extractor always returns an attention mask: the loss needs each utterance's true length
    even for checkpoints that do not want the mask themselves.
    """
    work_dir = Path(work_dir)
    vocab_path = work_dir / "vocab.json"
    atomic_write_text(vocab_path, json.dumps(vocab, ensure_ascii=False, indent=1))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_path),
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        word_delimiter_token=WORD_DELIMITER,
        bos_token=None,
        eos_token=None,
    )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=sampling_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def count_oov(texts: Iterable[str], vocab: dict[str, int]) -> dict[str, int]:
    """Characters of ``texts`` (spaces aside) missing from ``vocab``, with their counts."""
    counts: dict[str, int] = {}
    for text in texts:
        for c in text:
            if c != " " and c not in vocab:
                counts[c] = counts.get(c, 0) + 1
    return counts
