"""Shared fixtures: a tiny vocabulary, processor and wav2vec2 that train in seconds on a CPU."""

from __future__ import annotations

import pytest
from helpers import WORDS

from asr_ctc.data.vocab import build_processor, build_vocab


@pytest.fixture
def tiny_processor(tmp_path):
    return build_processor(build_vocab(WORDS), tmp_path / "vocab")


@pytest.fixture(scope="session", autouse=True)
def _index_cache(tmp_path_factory):
    """Split indexes go to a per-session directory, not the user's ~/.cache (child processes inherit it)."""
    import os

    os.environ["ASR_CTC_CACHE"] = str(tmp_path_factory.mktemp("asr_ctc_cache"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A 48-utterance eSpeak corpus (train/dev/test manifests), synthesized once per test session."""
    from asr_ctc.corpus.synthetic import make_synthetic_corpus

    out = tmp_path_factory.mktemp("corpus")
    make_synthetic_corpus(
        out, num_utterances=48, seed=1, dev_fraction=0.15, test_fraction=0.15, num_workers=1, progress=False
    )
    return out




@pytest.fixture(scope="session")
def librispeech_tree(tiny_corpus, tmp_path_factory):
    """The tiny corpus as a LibriSpeech tree (FLAC, upper-case ``*.trans.txt``): ``(root, made)``."""
    from corpus_layouts import make_librispeech_tree

    root = tmp_path_factory.mktemp("LibriSpeech")
    return root, make_librispeech_tree(tiny_corpus, root)
