"""Thin wrapper: `python scripts/build_lm.py ...` is `asr-ctc-build-lm ...`."""

from asr_ctc.cli import build_lm_main

if __name__ == "__main__":
    raise SystemExit(build_lm_main())
