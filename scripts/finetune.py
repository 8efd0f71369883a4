"""Thin wrapper: `python scripts/finetune.py ...` is `asr-ctc-finetune ...`."""

from asr_ctc.cli import finetune_main

if __name__ == "__main__":
    raise SystemExit(finetune_main())
