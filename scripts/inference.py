"""Thin wrapper: `python scripts/inference.py ...` is `asr-ctc-inference ...`."""

from asr_ctc.cli import inference_main

if __name__ == "__main__":
    raise SystemExit(inference_main())
