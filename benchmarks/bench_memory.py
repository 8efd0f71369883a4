"""Resident memory (RSS) against training steps: does a long run's memory plateau?

Trains with the project's own ``run_finetune`` (the demo config, ``configs/synthetic.yaml``, with a
smaller model so that thousands of steps fit in minutes: the point is the growth curve, and the batches
keep the demo's shapes: 16 utterances of the synthetic corpus's lengths, grouped by length) on a corpus
made with the project's corpus generator, and samples every ``--every`` steps:

* RSS (``/proc/self/statm``) and the peak so far (``VmHWM``);
* glibc's heap, from ``mallinfo2()``: bytes the allocator holds in its heaps (``arena``), of which in use
  by the program (``uordblks``) and free but kept (``fordblks``), and bytes in separately mmapped
  chunks (``hblkhd``). Free-but-kept heap that grows while in-use stays flat is allocator retention
  (fragmentation), not a leak;
* steps/s over the interval.

The training command runs with mimalloc (``asr_ctc/memory.py``); so does this script, through the same
re-execution, unless ``ASR_CTC_ALLOCATOR=system`` asks for glibc's malloc.

It ends with the growth of RSS over the last third of the run, the peak, the mean steps/s, the CPU model
and the load average at the start and the end (step times on a shared machine are indicative only).

    python benchmarks/bench_memory.py --steps 4800                        # the project as it is
    ASR_CTC_ALLOCATOR=system python benchmarks/bench_memory.py --steps 4800  # glibc's malloc
    ASR_CTC_ALLOCATOR=system MALLOC_MMAP_THRESHOLD_=4194304 python ...    # glibc tunables: the environment
    ASR_CTC_ALLOCATOR=system python benchmarks/bench_memory.py --trim-every 50  # malloc_trim(0) /50 steps
    ASR_CTC_ALLOCATOR=system python benchmarks/bench_memory.py --pad-to-multiple-of 4800  # 0.3 s buckets

Run each variant in a fresh process (the script does one run), with ``OMP_NUM_THREADS`` set as wanted.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model, load_average

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr_ctc.memory import allocator_in_use, reexec_with_allocator  # noqa: E402

# A smaller model than the demo's (about 2.05M parameters), same front-end strides (30 ms frames), so
# that a step costs a fraction of the demo's while the batch shapes stay the demo's.
SMALL_ARCH = {
    "conv_dim": [16, 32, 32, 32, 32, 32],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
}
_PAGE = os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


_LIBC = _libc()


def heap_stats() -> dict[str, float] | None:
    """glibc's ``mallinfo2`` in MB (None without glibc >= 2.33, or when another allocator serves malloc)."""
    fn = getattr(_LIBC, "mallinfo2", None)
    if fn is None or allocator_in_use() != "system":
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {
        "heap_mb": info.arena / 1e6,
        "in_use_mb": info.uordblks / 1e6,
        "free_mb": info.fordblks / 1e6,
        "mmapped_mb": info.hblkhd / 1e6,
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 1e6


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def make_sampler_callback(every: int, rows: list[dict], trim_every: int = 0):
    """A TrainerCallback that appends a row of memory figures every ``every`` optimiser steps, and calls
    glibc's ``malloc_trim(0)`` every ``trim_every`` steps (0: never) after taking the row."""
    from transformers import TrainerCallback

    class MemorySampler(TrainerCallback):
        def __init__(self) -> None:
            self.last = (0, time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if trim_every and step % trim_every == 0:
                _LIBC.malloc_trim(ctypes.c_size_t(0))
            if step % every and step != state.max_steps:
                return
            now = time.perf_counter()
            last_step, last_time = self.last
            self.last = (step, now)
            rows.append(
                {
                    "step": step,
                    "rss_mb": rss_mb(),
                    "peak_mb": peak_rss_mb(),
                    **(heap_stats() or {}),
                    "steps_per_s": (step - last_step) / (now - last_time),
                }
            )

    return MemorySampler()


def make_corpus(path: Path, utterances: int) -> Path:
    from asr_ctc.corpus.synthetic import make_synthetic_corpus

    make_synthetic_corpus(
        path,
        num_utterances=utterances,
        seed=0,
        dev_fraction=0.02,
        test_fraction=0.02,
        num_workers=min(2, os.cpu_count() or 1),
        progress=False,
    )
    return path


def run(args: argparse.Namespace) -> list[dict]:
    import transformers.trainer

    from asr_ctc import finetune
    from asr_ctc.config import load_config
    from asr_ctc.data.collator import CTCDataCollator

    corpus = make_corpus(Path(args.corpus), args.utterances)
    rows: list[dict] = []
    # Every Trainer starts from transformers.trainer.DEFAULT_CALLBACKS: the sampler rides on the project's
    # own run_finetune without a hook in it.
    transformers.trainer.DEFAULT_CALLBACKS.append(make_sampler_callback(args.every, rows, args.trim_every))
    if args.pad_to_multiple_of:
        bucketed = functools.partial(CTCDataCollator, pad_to_multiple_of=args.pad_to_multiple_of)
        finetune.CTCDataCollator = bucketed
    overrides = [
        f"data.train.manifest={corpus / 'train.tsv'}",
        "data.eval=null",
        "data.test=null",
        f"training.max_steps={args.steps}",
        f"training.per_device_train_batch_size={args.batch}",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        f"training.logging_steps={args.steps}",
        "training.disable_tqdm=true",
    ]
    if not args.demo_model:
        overrides += [f"model.architecture.{k}={json.dumps(v)}" for k, v in SMALL_ARCH.items()]
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(REPO / "configs" / "synthetic.yaml", [f"output_dir={out}/run", *overrides])
        finetune.run_finetune(cfg)
    return rows


def report(rows: list[dict], args: argparse.Namespace, load_start: str, seconds: float) -> str:
    malloc_env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    lines = [
        f"CPU: {cpu_model()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; "
        f"malloc env: {malloc_env or 'none'}",
        f"run: {args.steps} steps of {args.batch}, model {'demo' if args.demo_model else 'small'}, "
        f"allocator {allocator_in_use()}, malloc_trim every {args.trim_every or 'no'} steps, "
        f"pad_to_multiple_of {args.pad_to_multiple_of or 'none'}; {seconds:.0f} s",
        f"load average: start {load_start}, end {load_average()}",
        "",
        "| step | RSS (MB) | peak RSS (MB) | heap (MB) | heap in use (MB) | heap free (MB) | mmapped (MB) "
        "| steps/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for r in rows:
        heap = [r.get(k, nan) for k in ("heap_mb", "in_use_mb", "free_mb", "mmapped_mb")]
        lines.append(
            f"| {r['step']} | {r['rss_mb']:.0f} | {r['peak_mb']:.0f} | "
            + " | ".join("n/a" if x != x else f"{x:.0f}" for x in heap)
            + f" | {r['steps_per_s']:.2f} |"
        )
    if rows:
        end = rows[-1]
        third = min(rows, key=lambda r: abs(r["step"] - 2 * end["step"] / 3))
        growth = 100 * (end["rss_mb"] / third["rss_mb"] - 1)
        rates = [r["steps_per_s"] for r in rows[1:]] or [rows[0]["steps_per_s"]]
        lines += [
            "",
            f"RSS growth over the last third (step {third['step']} -> {end['step']}): {growth:+.1f}% "
            f"({third['rss_mb']:.0f} -> {end['rss_mb']:.0f} MB); peak RSS {end['peak_mb']:.0f} MB; "
            f"mean steps/s after the first interval {sum(rates) / len(rates):.2f}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4800, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--every", type=int, default=200, help="sample every N steps (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="utterances per step (default: %(default)s)")
    parser.add_argument(
        "--utterances", type=int, default=2400, help="corpus size, all splits (default: %(default)s)"
    )
    parser.add_argument(
        "--corpus",
        default=os.path.join(tempfile.gettempdir(), "asr_ctc_bench_memory_corpus"),
        help="corpus directory, made on first use (default: %(default)s)",
    )
    parser.add_argument("--demo-model", action="store_true", help="the demo's model, not the smaller one")
    parser.add_argument(
        "--trim-every", type=int, default=0, help="glibc's malloc_trim(0) every N steps (default: never)"
    )
    parser.add_argument(
        "--pad-to-multiple-of", type=int, default=0, help="pad audio to a multiple of N samples (bucketing)"
    )
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    reexec_with_allocator()  # as the training command does
    load_start = load_average()
    start = time.perf_counter()
    rows = run(args)
    print(report(rows, args, load_start, time.perf_counter() - start))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
