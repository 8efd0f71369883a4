"""Training orders as pure functions of (seed, epoch): asr_ctc.sampling."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from asr_ctc.sampling import (
    EpochLengthGroupedSampler,
    EpochRandomSampler,
    epoch_seed,
    seeded_per_epoch,
)

LENGTHS = [int(x) for x in torch.randint(100, 10_000, (200,), generator=torch.Generator().manual_seed(0))]


def _orders(sampler, epochs):
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize(
    "make", [lambda: EpochRandomSampler(200, seed=7), lambda: EpochLengthGroupedSampler(LENGTHS, 8, seed=7)]
)
def test_order_is_a_pure_function_of_seed_and_epoch(make):
    torch.manual_seed(0)
    first = _orders(make(), [0, 1, 2])
    torch.manual_seed(123)  # the global RNG plays no part
    torch.rand(1000)
    again = _orders(make(), [2, 0, 1])  # nor does the order in which epochs are asked for
    assert again == [first[2], first[0], first[1]]
    assert all(sorted(order) == list(range(200)) for order in first)  # each epoch a permutation
    assert first[0] != first[1] != first[2]  # a new order every epoch
    other_seed = make()
    other_seed.seed = 8
    assert _orders(other_seed, [0])[0] != first[0]


def test_a_complete_pass_moves_the_epoch_on_a_cut_pass_does_not():
    sampler = EpochRandomSampler(50, seed=3)
    epoch0 = list(sampler)
    epoch1 = list(sampler)  # a plain DataLoader never calls set_epoch: still a new order
    assert epoch0 != epoch1
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    del it
    sampler.set_epoch(2)
    assert head == list(sampler)[:5]


def test_length_grouping_matches_transformers_given_the_same_generator():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from asr_ctc.sampling import epoch_generator

    sampler = EpochLengthGroupedSampler(LENGTHS, 8, seed=5)
    sampler.set_epoch(3)
    expected = get_length_grouped_indices(LENGTHS, 8, generator=epoch_generator(5, 3))
    assert list(sampler) == expected
    assert LENGTHS[expected[0]] == max(LENGTHS)  # the longest batch first, as transformers does


def test_epoch_seed_mixes_seed_and_epoch():
    seeds = {epoch_seed(s, e) for s in range(20) for e in range(20)}
    assert len(seeds) == 400  # not seed + epoch: (1, 0) and (0, 1) differ
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="epoch_seed: expected seed >= 0"):
        epoch_seed(-1, 0)


def test_seeded_per_epoch_replaces_only_samplers_that_read_the_global_rng():
    data = list(range(30))
    grouped = seeded_per_epoch(LengthGroupedSampler(4, lengths=LENGTHS[:30]), seed=1)
    assert isinstance(grouped, EpochLengthGroupedSampler)
    assert (grouped.lengths, grouped.batch_size, grouped.seed) == (LENGTHS[:30], 4, 1)
    assert isinstance(seeded_per_epoch(RandomSampler(data), seed=1), EpochRandomSampler)
    kept = [
        SequentialSampler(data),
        RandomSampler(data, generator=torch.Generator()),  # seeded by its owner
        RandomSampler(data, replacement=True),
        LengthGroupedSampler(4, lengths=LENGTHS[:30], generator=torch.Generator()),
        None,
    ]
    for sampler in kept:
        assert seeded_per_epoch(sampler, seed=1) is sampler


def test_accelerate_resumed_epoch_sees_the_same_batches():
    """The Trainer's resume path: set_epoch on accelerate's loader, then skip_first_batches of it."""
    from accelerate import Accelerator, skip_first_batches
    from torch.utils.data import DataLoader

    accelerator = Accelerator(cpu=True)

    def loader():
        sampler = EpochLengthGroupedSampler(LENGTHS, 8, seed=0)
        return accelerator.prepare(DataLoader(list(range(200)), batch_size=8, sampler=sampler))

    unbroken = loader()
    epochs = []
    for epoch in range(3):
        unbroken.set_epoch(epoch)
        epochs.append([b.tolist() for b in unbroken])
    torch.manual_seed(99)
    resumed = skip_first_batches(loader(), 5)
    resumed.set_epoch(2)
    assert [b.tolist() for b in resumed] == epochs[2][5:]


@pytest.mark.parametrize("use_seedable_sampler", [True, False])
def test_processes_share_one_order_without_a_synchronised_generator(use_seedable_sampler):
    """Sharded over two processes (accelerate's BatchSamplerShard), the shards interleave back into the
    one-process order: each process computes the same (seed, epoch) permutation on its own."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    def batches(num_processes, index, epoch):
        torch.manual_seed(index)  # the processes' global RNGs differ
        sampler = EpochLengthGroupedSampler(LENGTHS[:64], 8, seed=0)
        dl = prepare_data_loader(
            DataLoader(list(range(64)), batch_size=4, sampler=sampler),
            num_processes=num_processes,
            process_index=index,
            put_on_device=False,
            use_seedable_sampler=use_seedable_sampler,
        )
        dl.set_epoch(epoch)
        return [b.tolist() for b in dl]

    for epoch in (0, 1):
        one = batches(1, 0, epoch)
        rank0, rank1 = batches(2, 0, epoch), batches(2, 1, epoch)
        assert [b for pair in zip(rank0, rank1, strict=True) for b in pair] == one
