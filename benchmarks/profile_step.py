"""Where one training step of the demo goes: data, front end, transformer, loss, backward, optimiser.

Builds the demo model (``configs/synthetic.yaml``), takes real batches of 16 training utterances (the
length-grouped sampler's typical batch: a random run of similar lengths), and times each part of a step,
medians over ``--steps`` steps after ``--warmup``. Then times whole steps under the levers that do not
change the recipe's math much: bfloat16 autocast (oneDNN uses AVX512-BF16 where the CPU has it) and the
number of intra-op threads.

    python benchmarks/profile_step.py            # after make_synthetic_corpus.py; prints Markdown tables

Time it on an idle machine: the script prints the machine and the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from _machine import load_average, machine

from asr_ctc import ctc_loss
from asr_ctc.config import load_config
from asr_ctc.data.collator import CTCDataCollator
from asr_ctc.data.dataset import open_split
from asr_ctc.data.index import load_source_index
from asr_ctc.data.vocab import build_processor, build_vocab
from asr_ctc.modeling import build_model, frame_lengths


def _now() -> float:
    return time.perf_counter()


def _batches(ds, batch: int, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` batches of similar lengths, like the length-grouped sampler's."""
    order = sorted(range(len(ds)), key=lambda i: ds.lengths[i])
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(order) - batch, (count,), generator=g).tolist()
    return [order[s : s + batch] for s in starts]


def _loss(model, out, inputs):
    log_probs = F.log_softmax(out.logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    labels = inputs["labels"]
    mask = labels != -100
    targets = torch.where(mask, labels, torch.zeros_like(labels))
    lengths = frame_lengths(model, inputs["attention_mask"].sum(-1))
    return ctc_loss(log_probs, targets, lengths, mask.sum(-1))


def profile_parts(model, opt, collator, ds, batches, autocast) -> dict[str, float]:
    times: dict[str, list[float]] = {
        k: [] for k in ("data", "front end", "transformer", "loss", "backward", "optimiser")
    }
    fe = model.wav2vec2.feature_extractor if hasattr(model, "wav2vec2") else None
    for idx in batches:
        t0 = _now()
        inputs = collator([ds[i] for i in idx])
        t1 = _now()
        with autocast():
            feats = fe(inputs["input_values"])
            t2 = _now()
            out = model(input_values=inputs["input_values"], attention_mask=inputs["attention_mask"])
            t3 = _now()
        loss = _loss(model, out, inputs)
        t4 = _now()
        loss.backward()
        t5 = _now()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t6 = _now()
        del feats
        times["data"].append(t1 - t0)
        times["front end"].append(t2 - t1)
        # The full forward minus the front end's own forward (run once more inside it).
        times["transformer"].append((t3 - t2) - (t2 - t1))
        times["loss"].append(t4 - t3)
        times["backward"].append(t5 - t4)
        times["optimiser"].append(t6 - t5)
    return {k: statistics.median(v) for k, v in times.items()}


def step_time(model, opt, collator, ds, batches, autocast) -> float:
    times = []
    for idx in batches:
        t0 = _now()
        inputs = collator([ds[i] for i in idx])
        with autocast():
            out = model(input_values=inputs["input_values"], attention_mask=inputs["attention_mask"])
        loss = _loss(model, out, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(_now() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    print(f"{machine()}; torch {torch.__version__}")
    print(f"load average at start: {load_average()}")
    cfg = load_config(args.config, args.overrides)
    index = load_source_index(cfg.data.train, cfg.data, "train")
    with tempfile.TemporaryDirectory() as tmp:
        processor = build_processor(build_vocab(index.texts()), tmp)
    ds, _ = open_split(index, processor, cfg.data, for_training=False)
    collator = CTCDataCollator(processor)
    tok = processor.tokenizer
    batch = int(cfg.training.get("per_device_train_batch_size", 16))
    batches = _batches(ds, batch, args.warmup + args.steps)
    fp32 = contextlib.nullcontext
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg.model, vocab_size=len(tok), pad_token_id=tok.pad_token_id).train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    threads = torch.get_num_threads()
    print(f"\nOne step of {batch} utterances, {threads} threads, median of {args.steps} (ms):\n")
    print("| part | fp32 | bf16 autocast |\n|---|---|---|")
    parts = {}
    for name, ctx in (("fp32", fp32), ("bf16", bf16)):
        model, opt = fresh()
        profile_parts(model, opt, collator, ds, batches[: args.warmup], ctx)
        parts[name] = profile_parts(model, opt, collator, ds, batches[args.warmup :], ctx)
    for part in parts["fp32"]:
        print(f"| {part} | {1000 * parts['fp32'][part]:.0f} | {1000 * parts['bf16'][part]:.0f} |")
    total = {k: sum(v.values()) for k, v in parts.items()}
    print(f"| **sum** | {1000 * total['fp32']:.0f} | {1000 * total['bf16']:.0f} |")

    print("\nWhole steps (ms, median):\n\n| threads | fp32 | bf16 autocast |\n|---|---|---|")
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        row = []
        for ctx in (fp32, bf16):
            model, opt = fresh()
            step_time(model, opt, collator, ds, batches[: args.warmup], ctx)
            row.append(step_time(model, opt, collator, ds, batches[args.warmup :], ctx))
        print(f"| {n} | {1000 * row[0]:.0f} | {1000 * row[1]:.0f} |")
    torch.set_num_threads(threads)
    print(f"\nload average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
