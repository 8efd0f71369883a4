"""What one optimiser step of the course recipe (configs/course_wav2vec2_base.yaml) costs on this machine.

A randomly initialised wav2vec2 of facebook/wav2vec2-base's size (transformers' Wav2Vec2Config defaults:
7 conv layers of 512 channels, 12 transformer layers of 768, about 94M parameters; no download) with a
32-output CTC head runs forward + backward with gradient checkpointing on a micro-batch of noise
utterances, in float32 (fp16 does nothing on a CPU: see the config). The time per second of audio is then
scaled to the course's optimiser step: 40 utterances x 2 accumulation steps of LibriSpeech train-clean-100
(mean utterance 12.7 s, from the corpus's published 100.6 h / 28,539 utterances). Linear scaling is an
estimate (attention is quadratic in length, a small share at these lengths).

    OMP_NUM_THREADS=2 python benchmarks/bench_course_step.py [--batch 2] [--seconds 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import cpu_model, load_average
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

COURSE_UTTERANCES_PER_STEP = 40 * 2
LIBRISPEECH_100_MEAN_S = 100.6 * 3600 / 28539


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="utterances per micro-batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each utterance")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=32, pad_token_id=0, ctc_loss_reduction="mean"))
    model.gradient_checkpointing_enable()
    model.train()
    params = sum(p.numel() for p in model.parameters())
    samples = int(args.seconds * 16000)
    inputs = torch.randn(args.batch, samples)
    labels = torch.randint(1, 32, (args.batch, int(args.seconds * 12)))  # ~12 characters per second

    def step() -> float:
        start = time.perf_counter()
        loss = model(input_values=inputs, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()  # warm-up
    times = [step() for _ in range(args.repeats)]
    per_audio_s = min(times) / (args.batch * args.seconds)
    course_step = per_audio_s * COURSE_UTTERANCES_PER_STEP * LIBRISPEECH_100_MEAN_S
    print(f"CPU: {cpu_model()}, torch threads {torch.get_num_threads()}, load average {load_average()}")
    print(f"model: {params / 1e6:.1f}M parameters, float32, gradient checkpointing")
    mean_s = LIBRISPEECH_100_MEAN_S
    print(
        f"| micro-batch | fwd+bwd (best of {args.repeats}) | per second of audio | "
        f"course step (80 x {mean_s:.1f} s) | 2 steps |"
    )
    print("|---|---|---|---|---|")
    print(f"| {args.batch} x {args.seconds:g} s | {min(times):.1f} s | {per_audio_s:.2f} s | "
          f"{course_step / 60:.0f} min | {2 * course_step / 60:.0f} min |")


if __name__ == "__main__":
    main()
