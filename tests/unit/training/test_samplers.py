"""The compact samplers give the orders of the samplers they replace, in 4 bytes a sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

from qwenvl_ft.training.samplers import EpochOrder, RepeatBlocks


class Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_the_random_order_is_the_trainers_own(tmp_path):
    """accelerate's SeedableRandomSampler (the Trainer's default, seeded by data_seed + epoch)."""
    args = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=4, seed=5, data_seed=5, use_cpu=True, report_to="none"
    )
    trainer = Trainer(
        model=torch.nn.Linear(2, 2), args=args, train_dataset=Indices(37), data_collator=torch.tensor
    )
    loader = trainer.get_train_dataloader()
    for epoch in range(3):
        loader.set_epoch(epoch)
        ours = EpochOrder(37, 5)
        ours.set_epoch(epoch)
        assert [int(i) for batch in loader for i in batch] == list(ours)


@pytest.mark.parametrize(("n", "batch"), [(37, 4), (1000, 8), (3, 4)])
def test_length_groups_are_transformers_groups_from_the_seeded_draw(n, batch):
    lengths = np.random.default_rng(n).integers(5, 60, n)
    ours = EpochOrder(n, 11, lengths, batch)
    ours.set_epoch(2)
    g = torch.Generator()
    g.manual_seed(13)  # seed + epoch: the same draw transformers' grouping then starts from
    assert list(ours) == get_length_grouped_indices(lengths.tolist(), batch, generator=g)
    assert ours.epoch == 3  # the next iteration is the next epoch's


def test_an_epochs_order_is_int32_and_the_epoch_decides_it():
    a, b = EpochOrder(10_000, 0), EpochOrder(10_000, 0)
    assert a.order().dtype == np.int32 and a.order().nbytes == 4 * 10_000
    b.set_epoch(1)
    assert not np.array_equal(a.order(), b.order()) and sorted(a.order()) == list(range(10_000))


def test_repeat_blocks_yields_each_block_repeats_times():
    order = list(RepeatBlocks(6, block=2, repeats=3, seed=0))
    first = EpochOrder(6, 0).order().tolist()
    assert order == [i for k in range(0, 6, 2) for _ in range(3) for i in first[k : k + 2]]
