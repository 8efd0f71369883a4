"""Thin wrapper: `python scripts/prepare.py ...` is `asr-ctc-prepare ...`."""

from asr_ctc.cli import prepare_main

if __name__ == "__main__":
    raise SystemExit(prepare_main())
