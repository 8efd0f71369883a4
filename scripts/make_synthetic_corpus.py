"""Build the synthetic eSpeak corpus: ``python scripts/make_synthetic_corpus.py --out-dir data/synthetic``."""

from asr_ctc.cli import make_corpus_main as main

# The guard matters: worker processes are spawned, and each re-imports this file as ``__mp_main__``.
if __name__ == "__main__":
    raise SystemExit(main())
