"""The conditions every benchmark prints with its table: the machine and its load.

A timing is a property of the machine it was taken on and of what else ran there: the same commit measured
2026-11 on this project's AMD EPYC and on an Intel Xeon gave ratios 30-40% apart (``docs/loss-internals.md``).
So each benchmark in this folder prints, with its table, the CPU model, the core count, the date and the load
average at its start and end, and a figure copied into ``docs/`` carries them.

The benchmarks run as scripts (``python benchmarks/bench_ctc.py``), so this folder is first on
``sys.path`` and they import this module as ``_machine``.
"""

from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"0.41 0.80 1.02"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    """One line naming the machine and the date (UTC), e.g. ``"AMD EPYC 7B13, 2 cores; 2026-11-22 UTC"``."""
    return f"{cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC"
