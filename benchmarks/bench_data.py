"""Benchmark the data path at growing corpus sizes: index build time, peak memory and speed of fine-tuning.

Builds train manifests of 1x, 4x and 16x the demo's train split (the same WAV files repeated under new
ids), then for each size, every measurement in a fresh process:

* index build time, cold (empty cache) and cached (a second process reusing it);
* peak resident memory (RSS) of a short fine-tuning run of the demo config on that manifest (eval off);
* its training speed in steps/s (the Trainer's ``train_steps_per_second``).

    python scripts/make_synthetic_corpus.py --out-dir data/synthetic   # once
    python benchmarks/bench_data.py --corpus data/synthetic               # prints a Markdown table

Time it on an idle machine: the script prints the machine and the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import load_average as _load
from _machine import machine

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: build (or reuse) the train index and its labels, print the seconds taken.
_INDEX_JOB = """
import sys, time
from asr_ctc.config import load_config
from asr_ctc.data.dataset import open_split
from asr_ctc.data.index import load_source_index
from asr_ctc.data.vocab import build_processor, build_vocab
import tempfile
cfg = load_config(sys.argv[1], sys.argv[2:])
start = time.perf_counter()
index = load_source_index(cfg.data.train, cfg.data, "train")
with tempfile.TemporaryDirectory() as tmp:
    processor = build_processor(build_vocab(index.texts()), tmp)
ds, report = open_split(index, processor, cfg.data)
print(f"RESULT {time.perf_counter() - start:.3f} {sum(ds.lengths) / cfg.data.sampling_rate / 3600:.3f}")
"""

# Runs a command and prints the peak RSS of the largest process it waited for (ru_maxrss, in KiB).
_PEAK_JOB = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(f"PEAK_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {code}", flush=True)
"""


def _repeat_manifest(src: Path, dst: Path, times: int) -> int:
    """``src``'s rows ``times`` over, under new ids, with absolute audio paths (``dst`` can be anywhere)."""
    lines = src.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    id_col, audio_col = header.index("id"), header.index("audio")
    out = [lines[0]]
    for k in range(times):
        for line in lines[1:]:
            fields = line.split("\t")
            fields[id_col] = f"{fields[id_col]}-x{k}"
            fields[audio_col] = str((src.parent / fields[audio_col]).resolve())
            out.append("\t".join(fields))
    dst.write_text("\n".join(out) + "\n", encoding="utf-8")
    return len(out) - 1


def _python(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/synthetic", help="has train.tsv (default: %(default)s)")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=20, help="steps per run (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="training.dataloader_num_workers")
    args = parser.parse_args()
    corpus = Path(args.corpus).resolve()
    print(machine())
    print(f"load average at start: {_load()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        for scale in args.scales:
            manifest = tmp / f"train_x{scale}.tsv"
            n = _repeat_manifest(corpus / "train.tsv", manifest, scale)
            cache = tmp / f"cache_x{scale}"
            overrides = [f"data.train.manifest={manifest}", f"data.cache_dir={cache}"]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            index_job = ["-c", _INDEX_JOB, args.config, *overrides]
            cold, hours = (float(x) for x in _python(index_job, env).split("RESULT ")[1].split()[:2])
            warm = float(_python(index_job, env).split("RESULT ")[1].split()[0])
            out_dir = tmp / f"run_x{scale}"
            finetune = [
                sys.executable,
                "scripts/finetune.py",
                "--config",
                args.config,
                "--overwrite",
                *overrides,
                f"output_dir={out_dir}",
                f"training.max_steps={args.steps}",
                "training.eval_strategy=no",
                "training.save_strategy=no",
                f"training.dataloader_num_workers={args.workers}",
                "data.eval=null",
            ]
            start = time.perf_counter()
            text = _python(["-c", _PEAK_JOB, *finetune], env)
            wall = time.perf_counter() - start
            peak_kib, code = (int(x) for x in text.split("PEAK_KIB ")[1].split()[:2])
            if code != 0:
                raise RuntimeError(f"fine-tuning at {scale}x failed (exit {code})")
            metrics = json.loads((out_dir / "train_metrics.json").read_text())
            rows.append(
                (scale, n, hours, cold, warm, peak_kib / 2**20, metrics["train_steps_per_second"], wall)
            )
            print(f"  {scale}x done: load {_load()}", flush=True)
    print()
    print(
        "| train manifest | utterances | audio (h) | index build cold (s) | cached (s) | peak RSS (GiB) "
        f"| steps/s ({args.steps} steps) | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scale, n, hours, cold, warm, peak, sps, wall in rows:
        cells = [f"{scale}x", n, f"{hours:.1f}", f"{cold:.1f}", f"{warm:.1f}", f"{peak:.2f}", f"{sps:.3f}"]
        print("| " + " | ".join(map(str, [*cells, f"{wall:.0f}"])) + " |")
    print(f"\nload average at end: {_load()}; dataloader_num_workers={args.workers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
