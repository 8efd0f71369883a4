"""Benchmark the production CTC loss against torch's native loss and the reference port.

For each shape (B, T, C, L) it times one training step of the loss: random logits (T, B, C) requiring grad
-> ``log_softmax`` -> loss (reduction "mean") -> ``backward()``, for

* ``ours``: :func:`asr_ctc.ctc.ctc_loss`,
* ``native``: :func:`torch.nn.functional.ctc_loss` (torch's C++ CPU kernel),
* ``reference``: :func:`asr_ctc.seq_loss_util.ctc_loss_like_torch` (the slow reference port, exact mode;
  seconds per call, so it runs ``--ref-repeats`` times; ``--no-reference`` skips it).

``ours`` and ``native`` run interleaved (their order alternating), so both see the same machine load; the
table reports medians and the ratio of the medians. Peak memory is measured in a fresh subprocess per
implementation and shape: after a warm-up on a smaller problem, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``) and the table shows how far the step raises it above the resident size just
before the step (the ``ru_maxrss`` growth where the mark cannot be reset). glibc is told to serve every
block of 64 KiB or more with mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident set at
once and the peak is that of the live tensors. The last column is the float32 loss of ``ours`` against torch's
float32 loss (max over the batch of the relative difference).

Usage::

    python benchmarks/bench_ctc.py                 # all shapes, 2 threads, with the reference
    python benchmarks/bench_ctc.py --no-reference  # skip the slow reference
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _machine import load_average, machine

from asr_ctc.ctc import ctc_loss
from asr_ctc.seq_loss_util import ctc_loss_like_torch

SHAPES = [(16, 500, 32, 100), (8, 200, 32, 40), (4, 1000, 32, 200), (8, 300, 500, 60)]
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(batch: int, frames: int, n_classes: int, length: int, seed: int = 0) -> Inputs:
    """Logits (T, B, C) float32 requiring grad; targets (B, L) in [1, C) (blank 0); full lengths."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, batch, n_classes, generator=gen).requires_grad_(True)
    targets = torch.randint(1, n_classes, (batch, length), generator=gen)
    return logits, targets, torch.full((batch,), frames), torch.full((batch,), length)


def step_ours(logits, targets, input_lengths, target_lengths) -> torch.Tensor:
    loss = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths)
    loss.backward()
    return loss


def step_native(logits, targets, input_lengths, target_lengths) -> torch.Tensor:
    loss = F.ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths)
    loss.backward()
    return loss


def step_reference(logits, targets, input_lengths, target_lengths) -> torch.Tensor:
    loss = ctc_loss_like_torch(logits.log_softmax(-1), targets, input_lengths, target_lengths)
    loss.backward()
    return loss


STEPS: dict[str, Callable[..., torch.Tensor]] = {
    "ours": step_ours,
    "native": step_native,
    "reference": step_reference,
}


def timed(step: Callable[..., torch.Tensor], inputs: Inputs) -> float:
    inputs[0].grad = None
    start = time.perf_counter()
    step(*inputs)
    return time.perf_counter() - start


def float32_rel_error(inputs: Inputs) -> float:
    logits, targets, input_lengths, target_lengths = inputs
    log_probs = logits.detach().log_softmax(-1)
    ours = ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")
    native = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")
    return float(((ours - native).abs() / native.abs()).max())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_probe(name: str, shape: tuple[int, int, int, int]) -> None:
    """(Subprocess) print the peak memory growth of one step of ``name`` on ``shape``, in KiB."""
    batch, frames, n_classes, length = shape
    step = STEPS[name]
    # Warm up (thread pools, allocator, lazy imports) on a quarter-size problem.
    step(*make_inputs(batch, max(frames // 4, 2), n_classes, max(length // 4, 1), seed=1))
    inputs = make_inputs(batch, frames, n_classes, length)
    gc.collect()
    try:
        # Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, so the step sets the next peak.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        step(*inputs)
        print(f"{_status_kib('VmHWM') - before} 1")
    except OSError:
        # No clear_refs: the peak so far must be below the step's, else flag the number as a bound.
        before = _status_kib("VmRSS")
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(*inputs)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"{peak - before} {int(peak > peak_before)}")


def measure_memory(name: str, shape: tuple[int, int, int, int], threads: int) -> str:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--threads", str(threads), "--memory-probe", name, *map(str, shape)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.split()
    kib, valid = int(out[0]), out[1] == "1"
    return f"{kib / 1024:.1f}" if valid else f"<={kib / 1024:.1f}"


def bench_shape(shape, repeats: int, ref_repeats: int, with_reference: bool, with_memory: bool, threads: int):
    inputs = make_inputs(*shape)
    for name in ("ours", "native"):
        timed(STEPS[name], inputs)  # warm-up
    times: dict[str, list[float]] = {"ours": [], "native": [], "reference": []}
    for i in range(repeats):
        order = ("ours", "native") if i % 2 == 0 else ("native", "ours")
        for name in order:
            times[name].append(timed(STEPS[name], inputs))
    if with_reference:
        for _ in range(ref_repeats):
            times["reference"].append(timed(STEPS["reference"], inputs))
    median = {name: statistics.median(t) * 1e3 for name, t in times.items() if t}
    row = {
        "shape": shape,
        "ours": median["ours"],
        "native": median["native"],
        "ratio": median["ours"] / median["native"],
        "reference": median.get("reference"),
        "error": float32_rel_error(inputs),
    }
    names = ("ours", "native", "reference") if with_reference else ("ours", "native")
    row["memory"] = {name: measure_memory(name, shape, threads) for name in names} if with_memory else {}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed steps of ours and native per shape")
    parser.add_argument("--ref-repeats", type=int, default=2, help="timed steps of the reference per shape")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference port")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    probe = dict(nargs=5, metavar=("IMPL", "B", "T", "C", "L"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", **probe)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        name, *shape = args.memory_probe
        memory_probe(name, tuple(int(v) for v in shape))
        return

    with_reference = not args.no_reference
    threads = torch.get_num_threads()
    print(f"{machine()}; torch {torch.__version__}, {threads} threads")
    print(f"load average at start: {load_average()}")
    rows = [
        bench_shape(shape, args.repeats, args.ref_repeats, with_reference, not args.no_memory, args.threads)
        for shape in SHAPES
    ]
    print(f"load average at end: {load_average()}\n")
    header = "| (B, T, C, L) | ours ms | native ms | ours / native |"
    if with_reference:
        header += " reference ms |"
    if not args.no_memory:
        header += " peak MiB ours | peak MiB native |" + (" peak MiB reference |" if with_reference else "")
    header += " f32 max rel. err. vs torch |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        line = f"| {row['shape']} | {row['ours']:.2f} | {row['native']:.2f} | {row['ratio']:.2f} |"
        if with_reference:
            line += f" {row['reference']:.0f} |"
        for name in ("ours", "native", "reference") if with_reference else ("ours", "native"):
            if name in row["memory"]:
                line += f" {row['memory'][name]} |"
        line += f" {row['error']:.1e} |"
        print(line)
    print(
        f"\nmedians of {args.repeats} interleaved steps (reference: {args.ref_repeats}); "
        "step = log_softmax + loss (mean) + backward"
    )


if __name__ == "__main__":
    main()
