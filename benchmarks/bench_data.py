"""Benchmark the data path at growing corpus sizes: index build time, peak memory and speed of fine-tuning.

Builds train manifests of 1x, 4x and 16x the demo's train split (the same WAV files repeated under new
ids), then for each size, every measurement in a fresh process:

* index build time, cold (empty cache) and cached (a second process reusing it);
* peak resident memory (RSS) of a short fine-tuning run of the demo config on that manifest (eval off);
* its training speed in steps/s (the Trainer's ``train_steps_per_second``).

    python scripts/make_synthetic_corpus.py --out-dir data/synthetic   # once
    python benchmarks/bench_data.py --corpus data/synthetic               # prints a Markdown table

Time it on an idle machine: the script prints the machine and the load average at the start and the end.

``--compare-sources`` measures the same audio as a manifest, as WebDataset shards (indexed) and as shards
streamed: index build cold and cached, the data path alone (items/s of decoding + normalising in the
training order, no model) and a short fine-tuning (steps/s, peak RSS). ``--readers`` compares three ways
of reading shards (``tarfile`` offsets as asr_ctc does, the ``webdataset`` package, ``datasets``'
webdataset builder with the audio kept as bytes): one pass for lengths, cold and cached, and items/s.

    python benchmarks/bench_data.py --corpus data/synthetic --compare-sources --readers --scales 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
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
built = time.perf_counter() - start
# The data path alone: items in a shuffled order, decoded, resampled and normalised (no model).
import numpy as np
order = np.random.default_rng(0).permutation(len(ds))[:ITEMS]
start = time.perf_counter()
for i in order:
    ds[int(i)]
rate = len(order) / (time.perf_counter() - start)
print(f"RESULT {built:.3f} {sum(ds.lengths) / cfg.data.sampling_rate / 3600:.3f} {rate:.1f}")
"""

# The same for a streamed source: no index, so only the data path (items as the stream yields them).
_STREAM_JOB = """
import sys, time, tempfile, itertools
from asr_ctc.config import load_config
from asr_ctc.data.dataset import open_streaming_split
from asr_ctc.data.vocab import build_processor, build_vocab
cfg = load_config(sys.argv[1], sys.argv[2:])
with tempfile.TemporaryDirectory() as tmp:
    processor = build_processor(build_vocab(["abcdefghijklmnopqrstuvwxyz '"]), tmp)
stream = open_streaming_split(cfg.data.train, processor, cfg.data, seed=0)
start = time.perf_counter()
n = sum(1 for _ in itertools.islice(stream, ITEMS))
print(f"RESULT {n / (time.perf_counter() - start):.1f}")
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


def _write_shards(manifest: Path, out: Path, per_shard: int) -> str:
    """The manifest's audio and transcripts as WebDataset shards (``<id>.wav``, ``.txt``, ``.json``); returns
    the shards' glob. The bytes are the files' own, so both sources hold the same audio."""
    from asr_ctc.data.manifest import read_manifest

    rows = read_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(rows), per_shard):
        with tarfile.open(out / f"shard-{start // per_shard:06d}.tar", "w") as tar:
            for row in rows[start : start + per_shard]:
                meta = {k: v for k, v in row.items() if k not in ("id", "audio", "text")}
                for ext, data in (
                    ("wav", Path(row["audio"]).read_bytes()),
                    ("txt", row["text"].encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{row['id']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(out / "shard-*.tar")


def _python(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _peak(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run ``python args`` under the peak-RSS wrapper: (its stdout, peak RSS in MiB)."""
    text = _python(["-c", _PEAK_JOB, sys.executable, *args], env)
    peak_kib, code = (int(x) for x in text.split("PEAK_KIB ")[1].split()[:2])
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed (exit {code})")
    return text, peak_kib / 1024


def _finetune(args, config: str, overrides: list[str], out_dir: Path, env) -> tuple[float, float, float]:
    """(steps/s, peak RSS GiB, wall s) of a short fine-tuning run, eval and saving off."""
    finetune = [
        "scripts/finetune.py",
        "--config",
        config,
        "--overwrite",
        *overrides,
        f"output_dir={out_dir}",
        f"training.max_steps={args.steps}",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        f"training.dataloader_num_workers={args.workers}",
    ]
    start = time.perf_counter()
    _, peak_mib = _peak(finetune, env)
    wall = time.perf_counter() - start
    metrics = json.loads((out_dir / "train_metrics.json").read_text())
    return metrics["train_steps_per_second"], peak_mib / 1024, wall


# -- three ways to read shards (--readers) -------------------------------------------------------------------

# Each job prints "RESULT <lengths pass s> <second pass s> <items/s>". The lengths pass is what length
# grouping needs (an index): for asr_ctc its cached index; for the others a pass over every sample.
_READER_JOBS = {
    "tarfile offsets (asr_ctc)": """
import sys, time, numpy as np
from asr_ctc.config import DataConfig, SourceConfig
from asr_ctc.data.index import load_source_index
from asr_ctc.data.audio import decode_audio
data = DataConfig(train=SourceConfig(shards=sys.argv[1]), cache_dir=sys.argv[2])
t = time.perf_counter(); index = load_source_index(data.train, data, "train"); cold = time.perf_counter() - t
t = time.perf_counter(); index = load_source_index(data.train, data, "train"); warm = time.perf_counter() - t
order = np.random.default_rng(0).permutation(len(index.table))
t = time.perf_counter()
for i in order:  # as the datasets job below: fetch one item's bytes (a row, then a pread) and decode
    row = index.table[int(i)]
    decode_audio(index.source.audio(row), 16000, row["id"])
print(f"RESULT {cold:.3f} {warm:.3f} {len(order) / (time.perf_counter() - t):.1f}")
""",
    "webdataset package": """
import glob, io, sys, time, soundfile as sf, webdataset as wds
from asr_ctc.data.audio import decode_audio
urls = sorted(glob.glob(sys.argv[1]))
def lengths():
    return [sf.info(io.BytesIO(s["wav"])).frames for s in wds.WebDataset(urls, shardshuffle=False)]
t = time.perf_counter(); n = len(lengths()); cold = time.perf_counter() - t
t = time.perf_counter(); lengths(); warm = time.perf_counter() - t
t = time.perf_counter()
for s in wds.WebDataset(urls, shardshuffle=False):  # in order only: no random access by index
    decode_audio(s["wav"], 16000, s["__key__"])
print(f"RESULT {cold:.3f} {warm:.3f} {n / (time.perf_counter() - t):.1f}")
""",
    "datasets webdataset builder (audio as bytes)": """
import glob, io, json, sys, tarfile, time, datasets, soundfile as sf, numpy as np
from asr_ctc.data.audio import decode_audio
datasets.disable_progress_bars()
V = datasets.Value
# The override must spell out the metadata's fields too: take them from the first .json member.
with tarfile.open(sorted(glob.glob(sys.argv[1]))[0]) as tar:
    meta = json.load(tar.extractfile(next(m for m in tar if m.name.endswith(".json"))))
feats = datasets.Features({"__key__": V("string"), "__url__": V("string"), "wav": V("binary"),
                           "txt": V("string"), "json": {k: V("string") for k in meta}})
def load():
    ds = datasets.load_dataset("webdataset", data_files=sys.argv[1], split="train", features=feats,
                               cache_dir=sys.argv[2])
    return ds, [sf.info(io.BytesIO(b)).frames for b in ds["wav"]]
t = time.perf_counter(); ds, _ = load(); cold = time.perf_counter() - t
t = time.perf_counter(); ds, _ = load(); warm = time.perf_counter() - t
order = np.random.default_rng(0).permutation(len(ds))
t = time.perf_counter()
for i in order: decode_audio(ds[int(i)]["wav"], 16000, "x")
print(f"RESULT {cold:.3f} {warm:.3f} {len(ds) / (time.perf_counter() - t):.1f}")
""",
}


def _readers(shards: str, tmp: Path, env: dict[str, str]) -> list[tuple]:
    rows = []
    for k, (name, job) in enumerate(_READER_JOBS.items()):
        try:
            text, peak = _peak(["-c", job, shards, str(tmp / f"reader_cache_{k}")], env)
        except RuntimeError as exc:
            rows.append((name, "failed", str(exc).strip().splitlines()[-1][:80], "", ""))
            continue
        cold, warm, rate = (float(x) for x in text.split("RESULT ")[1].split()[:3])
        rows.append((name, f"{cold:.2f}", f"{warm:.2f}", f"{rate:.0f}", f"{peak:.0f}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/synthetic", help="has train.tsv (default: %(default)s)")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=20, help="steps per run (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="training.dataloader_num_workers")
    parser.add_argument(
        "--compare-sources", action="store_true", help="the same audio as manifest, shards, streamed shards"
    )
    parser.add_argument("--readers", action="store_true", help="tarfile offsets vs webdataset vs datasets")
    parser.add_argument("--per-shard", type=int, default=200, help="utterances a shard (%(default)s)")
    parser.add_argument("--items", type=int, default=300, help="items read in the data-path timing")
    args = parser.parse_args()
    corpus = Path(args.corpus).resolve()
    print(machine())
    print(f"load average at start: {_load()}", flush=True)
    rows, reader_rows = [], []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        for scale in args.scales:
            manifest = tmp / f"train_x{scale}.tsv"
            n = _repeat_manifest(corpus / "train.tsv", manifest, scale)
            cache = tmp / f"cache_x{scale}"
            sources = {"manifest": [f"data.train.manifest={manifest}"]}
            if args.compare_sources or args.readers:
                shards = _write_shards(manifest, tmp / f"shards_x{scale}", args.per_shard)
                if args.compare_sources:
                    sources["shards"] = ["data.train.manifest=null", f"data.train.shards={shards}"]
                    sources["shards, streamed"] = [*sources["shards"], "data.train.streaming=true"]
                if args.readers:
                    for r in _readers(shards, tmp, env):
                        reader_rows.append((f"{scale}x", n, *r))
                        print(f"  {scale}x reader {r}: load {_load()}", flush=True)
            for name, source in sources.items():
                overrides = [*source, f"data.cache_dir={cache}", "data.eval=null", "data.test=null"]
                if name.endswith("streamed"):
                    job = ["-c", _STREAM_JOB.replace("ITEMS", str(args.items)), args.config, *overrides]
                    rate = float(_python(job, env).split("RESULT ")[1].split()[0])
                    cold = warm = hours = float("nan")
                else:
                    job = ["-c", _INDEX_JOB.replace("ITEMS", str(args.items)), args.config, *overrides]
                    cold, hours, rate = (float(x) for x in _python(job, env).split("RESULT ")[1].split()[:3])
                    warm = float(_python(job, env).split("RESULT ")[1].split()[0])
                sps, peak, wall = _finetune(args, args.config, overrides, tmp / f"run_x{scale}", env)
                rows.append((scale, name, n, hours, cold, warm, rate, peak, sps, wall))
                print(f"  {scale}x {name} done {rows[-1][3:]}: load {_load()}", flush=True)
    print()
    print(
        "| train data | source | utterances | audio (h) | index build cold (s) | cached (s) | data path "
        f"(items/s) | peak RSS (GiB) | steps/s ({args.steps} steps) | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scale, name, n, hours, cold, warm, rate, peak, sps, wall in rows:
        cells = [f"{scale}x", name, n, f"{hours:.1f}", f"{cold:.1f}", f"{warm:.1f}", f"{rate:.0f}"]
        cells += [f"{peak:.2f}", f"{sps:.3f}", f"{wall:.0f}"]
        print("| " + " | ".join(str(c).replace("nan", "-") for c in cells) + " |")
    if reader_rows:
        print()
        print("| shards | utterances | reader | lengths pass cold (s) | cached (s) | items/s | "
              "peak RSS (MiB) |")
        print("|---|---|---|---|---|---|---|")
        for row in reader_rows:
            print("| " + " | ".join(map(str, row)) + " |")
    print(f"\nload average at end: {_load()}; dataloader_num_workers={args.workers}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
