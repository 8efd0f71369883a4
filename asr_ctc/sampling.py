"""Training orders that are pure functions of ``(seed, epoch)``, so a resumed run sees the same batches.

The Trainer resumes a run by rebuilding the data loader, skipping the batches the checkpoint already
trained on and restoring the global RNG states. A sampler that draws its permutation from the global RNG
(``RandomSampler`` without a generator, ``LengthGroupedSampler`` as the Trainer builds it) draws it when the
epoch's iterator is created: in a run resumed inside a later epoch the global RNG is then in a different
state than it was in the unbroken run at that epoch's start, so the rest of the epoch trains on a different
permutation (transformers fixed the same class of bug in its own samplers, PR #40691). The samplers here
draw every epoch's permutation from a generator seeded with :func:`epoch_seed` ``(seed, epoch)`` alone, and
the Trainer tells them the epoch through ``set_epoch`` (accelerate's ``DataLoaderShard.set_epoch`` forwards it
to the sampler, also through the ``SkipBatchSampler`` of a resumed epoch).

They are not subclasses of ``RandomSampler`` and have no ``generator`` attribute on purpose: accelerate
replaces a ``RandomSampler`` by its own seedable one, and gives a sampler's ``None`` generator a random seed
that it then synchronises across processes; an order that is already a pure function of ``(seed, epoch)`` is
the same on every process without either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed for ``epoch`` of a run seeded with ``seed``.

    Mixed through numpy's ``SeedSequence`` (not ``seed + epoch``), so runs with neighbouring seeds do not
    share permutations shifted by one epoch.

    Raises:
        ValueError: ``seed`` or ``epoch`` negative.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"epoch_seed: expected seed >= 0 and epoch >= 0, got seed={seed}, epoch={epoch}")
    low, high = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(high) << 32 | int(low)) & (2**63 - 1)  # below 2**63: any torch.Generator takes it


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`epoch_seed` ``(seed, epoch)``."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class EpochSampler(Sampler[int]):
    """Base of the samplers whose epoch order is ``self.order(epoch_generator(seed, epoch))``.

    The epoch is the one last given to :meth:`set_epoch` (0 at first); a complete pass moves it on by one,
    so a plain ``DataLoader`` that never calls ``set_epoch`` still sees a new order every epoch. A pass cut
    short (the skipped batches of a resumed epoch, an exception) leaves it where it was.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def order(self, generator: torch.Generator) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        indices = self.order(epoch_generator(self.seed, self.epoch))
        yield from indices
        self.epoch += 1


class EpochRandomSampler(EpochSampler):
    """A uniformly random permutation of ``range(num_samples)`` per epoch (``torch.randperm``)."""

    def order(self, generator: torch.Generator) -> list[int]:
        return torch.randperm(self.num_samples, generator=generator).tolist()


class EpochLengthGroupedSampler(EpochSampler):
    """Transformers' length grouping (``get_length_grouped_indices``: a random permutation cut into
    mega-batches of 50 batches or a quarter of the data, each sorted by decreasing length, the longest
    item first) with the permutation drawn from the epoch's generator.

    Args:
        lengths: each item's length (any unit that orders them, e.g. samples).
        batch_size: the batch of one optimiser step (per-device batch x gradient accumulation).
        seed: the run's data seed.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)

    def order(self, generator: torch.Generator) -> list[int]:
        return get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)


def seeded_per_epoch(sampler: Sampler | None, seed: int) -> Sampler | None:
    """``sampler``'s order made a pure function of ``(seed, epoch)``, where it drew from the global RNG.

    A ``LengthGroupedSampler`` without a generator becomes an :class:`EpochLengthGroupedSampler` of the same
    lengths and batch size, a plain ``RandomSampler`` (no replacement, no generator, one pass over the data)
    an :class:`EpochRandomSampler`; anything else (``None``, sequential, samplers with their own seeding such
    as ``BatchRebalanceSampler``) is returned unchanged.
    """
    if type(sampler) is LengthGroupedSampler and sampler.generator is None:
        return EpochLengthGroupedSampler(sampler.lengths, sampler.batch_size, seed)
    if (
        type(sampler) is RandomSampler
        and sampler.generator is None
        and not sampler.replacement
        and sampler.num_samples == len(sampler.data_source)
    ):
        return EpochRandomSampler(len(sampler.data_source), seed)
    return sampler
