"""Keep a long run's resident memory flat: train with mimalloc instead of glibc's malloc.

A training step allocates and frees tensors whose sizes follow the batch's shape (padded audio length,
frames, target length), and length-grouped batches give almost every step a new shape. glibc's malloc
serves everything below its mmap threshold (raised automatically, up to 32 MiB, each time a larger
mmapped chunk is freed) from one heap that only shrinks from its top; the holes left between live
chunks rarely fit the next step's new sizes, so the heap keeps growing while the memory in use stays
flat (``docs/long-runs.md``: in use ~0.2 GB throughout, free-but-kept heap 0.2 -> 0.75 GB in 400 steps of
a small model, RSS still rising after thousands). ``malloc_trim`` hands the free pages back but the next
steps touch them again (RSS refilled within ~100 steps), and a small fixed ``MALLOC_MMAP_THRESHOLD_``
still fragments at 4 MiB and costs 43% of the speed at 128 KiB. Padding to a few bucket sizes stops the
growth but changes what a model with a GroupNorm over the padded input computes, and computes more.

mimalloc (Microsoft's allocator, from the ``cmeel-mimalloc`` wheel) keeps each size class in its own
pages, so a freed tensor's memory is reused by the next tensor of about the same size and returned to
the system when its pages empty: RSS plateaus. The numbers the model computes are untouched (only where
the bytes live changes). An allocator has to be in place before the first allocation, so the training
command re-executes itself once with the library in ``LD_PRELOAD`` (:func:`reexec_with_allocator`);
``ASR_CTC_ALLOCATOR=system`` keeps glibc's malloc.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

logger = logging.getLogger(__name__)

ALLOCATOR_ENV = "ASR_CTC_ALLOCATOR"
ALLOCATORS = ("mimalloc", "system")


def mimalloc_library() -> str | None:
    """The path of ``libmimalloc.so`` from the installed ``cmeel-mimalloc`` wheel, or None."""
    try:
        dist = importlib.metadata.distribution("cmeel-mimalloc")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "libmimalloc.so":
            path = str(dist.locate_file(file))
            return path if os.path.isfile(path) else None
    return None


def chosen_allocator() -> str:
    """``$ASR_CTC_ALLOCATOR``: ``mimalloc`` (the default) or ``system`` (glibc's malloc).

    Raises:
        ValueError: any other value.
    """
    choice = os.environ.get(ALLOCATOR_ENV, "").strip().lower() or "mimalloc"
    if choice not in ALLOCATORS:
        raise ValueError(f"{ALLOCATOR_ENV}: expected one of {', '.join(ALLOCATORS)}, got {choice!r}")
    return choice


def reexec_with_allocator() -> None:
    """Re-execute this process (same interpreter, same arguments) with mimalloc in ``LD_PRELOAD``, once.

    Does nothing off Linux, with ``ASR_CTC_ALLOCATOR=system``, when the wheel is not installed (logged),
    or when the library is already preloaded (the re-executed process, or a user's own ``LD_PRELOAD``).
    Call it first thing in a command-line entry point, never in a library call: ``os.execv`` replaces
    the process (its pid stays, so launchers such as torchrun still track it).

    Raises:
        ValueError: ``ASR_CTC_ALLOCATOR`` is neither ``mimalloc`` nor ``system``.
    """
    if not sys.platform.startswith("linux") or chosen_allocator() == "system":
        return
    library = mimalloc_library()
    if library is None:
        logger.info("cmeel-mimalloc is not installed: glibc's malloc, whose RSS grows in long runs")
        return
    preload = [p for p in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if any(os.path.basename(p).startswith("libmimalloc") for p in preload):
        return
    os.environ["LD_PRELOAD"] = ":".join([library, *preload])
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    try:
        os.execv(sys.executable, [sys.executable, *argv[1:]])
    except OSError as exc:  # keep going with glibc's malloc rather than fail the run
        os.environ["LD_PRELOAD"] = ":".join(preload)
        logger.warning("could not re-execute with mimalloc preloaded (%s): using glibc's malloc", exc)


def allocator_in_use() -> str:
    """``mimalloc`` when this process has libmimalloc mapped, else ``system``."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            return "mimalloc" if "libmimalloc" in f.read() else "system"
    except OSError:
        return "system"
