"""The pieces of sequence parallelism that need no second process, against hand-worked values:
how frames are shared out, how labels are shifted and split, the whole-sample attention mask, and
what is refused at start (by name, before anything loads)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import Qwen2_5_VLConfig

from qwenvl_ft.config import ConfigError, RecipeConfig
from qwenvl_ft.models import get_family
from qwenvl_ft.models.ulysses import SPBatch, SPGroup, check_heads, frame_shares
from qwenvl_ft.training.sequence_parallel import check, shard_labels

I = -100  # noqa: E741


def rank(r: int, size: int = 2) -> SPGroup:
    return SPGroup(None, size, r)


def test_frames_are_shared_contiguously_by_patches():
    # An image of 16 patches, then a video of 3 frames of 4: 28 patches; the image's middle (8)
    # falls in the first half, every video frame's middle (18, 22, 26) in the second.
    shares = frame_shares(torch.tensor([[1, 4, 4], [3, 2, 2]]), 2)
    assert shares[0][0] == (0, 16) and shares[0][1].tolist() == [[1, 4, 4]]
    assert shares[1][0] == (16, 28) and shares[1][1].tolist() == [[3, 2, 2]]
    # One long video: split by frame, three each.
    shares = frame_shares(torch.tensor([[6, 2, 2]]), 2)
    assert [s[0] for s in shares] == [(0, 12), (12, 24)]
    assert [s[1].tolist() for s in shares] == [[[3, 2, 2]], [[3, 2, 2]]]
    # Fewer frames than ranks: middles 2 and 6 of 8 land on ranks 1 and 3; 0 and 2 have none.
    shares = frame_shares(torch.tensor([[2, 2, 2]]), 4)
    assert shares[0] is None and shares[2] is None
    assert shares[1][0] == (0, 4) and shares[3][0] == (4, 8)
    # A frame split across items: the second rank's share starts inside the video.
    shares = frame_shares(torch.tensor([[1, 2, 2], [3, 2, 2]]), 2)
    assert shares[0][1].tolist() == [[1, 2, 2], [1, 2, 2]] and shares[0][0] == (0, 8)
    assert shares[1][1].tolist() == [[2, 2, 2]] and shares[1][0] == (8, 16)


def test_labels_are_shifted_on_the_whole_sample_then_split():
    labels = torch.tensor([[I, 5, 6, 7, I]])
    # Shifted: position t's target is labels[t + 1] -> [5, 6, 7, I, I], padded to 6 -> one more I.
    first, count = shard_labels(labels, rank(0))
    second, count2 = shard_labels(labels, rank(1))
    assert first.tolist() == [[5, 6, 7]] and second.tolist() == [[I, I, I]]
    assert int(count) == int(count2) == 3
    # The target of the first shard's last position is the second shard's first token.
    labels = torch.tensor([[1, 2, 3, 4], [I, I, 8, 9]])
    assert shard_labels(labels, rank(0))[0].tolist() == [[2, 3], [I, 8]]
    assert shard_labels(labels, rank(1))[0].tolist() == [[4, I], [9, I]]
    assert int(shard_labels(labels, rank(1))[1]) == 5


def test_the_whole_sample_mask_keeps_samples_and_padding_apart():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2]])  # two samples, then two tokens padded on
    valid = torch.tensor([[True, True, True, True, False, False]])
    batch = SPBatch(rank(0), segments, valid, False, torch.tensor([[0, 1, 0, 1, 0, 1]]), 4)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1, 1],  # padded-on tokens see each other: never an empty row
        ],
        dtype=torch.bool,
    )
    assert torch.equal(batch.attention_mask()[0, 0], expected)
    assert batch.starts().tolist() == [True, False, True, False, True, False]
    assert batch.counted().tolist() == [[True] * 4 + [False] * 2]
    assert batch.shard == slice(0, 3)
    # A padded batch: padding keys hidden from real tokens.
    masked = SPBatch(
        rank(1), torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 0]]).bool(), True, None, 4
    )
    mask = masked.attention_mask()[0, 0]
    assert mask[3].tolist() == [True, True, True, True] and mask[2].tolist() == [True, True, True, False]
    assert masked.shard == slice(2, 4)
    # One sample, no padding: plain causal (None lets sdpa use is_causal).
    plain = SPBatch(
        rank(0), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), False, None, 4
    )
    assert plain.attention_mask() is None


def recipe(**train) -> RecipeConfig:
    cfg = RecipeConfig()
    return replace(cfg, train=replace(cfg.train, **train))


def test_what_is_not_built_is_refused_by_name():
    qwen2_5 = get_family("qwen2_5_vl")
    check(recipe(sequence_parallel=1), get_family("qwen_vl"), 1)  # off: nothing to refuse
    check(recipe(sequence_parallel=2), qwen2_5, 4)
    with pytest.raises(
        ConfigError, match=r"Qwen-VL \(first generation\) \(qwen_vl\) has no sequence parallelism"
    ):
        check(recipe(sequence_parallel=2), get_family("qwen_vl"), 2)
    with pytest.raises(ConfigError, match="train.fsdp: false"):
        check(recipe(sequence_parallel=2, fsdp=True), qwen2_5, 2)
    with pytest.raises(ConfigError, match="train.liger: false"):
        check(recipe(sequence_parallel=2, liger=True), qwen2_5, 2)
    cfg = recipe(sequence_parallel=2)
    with pytest.raises(ConfigError, match="eval.generate: false"):
        check(replace(cfg, eval=replace(cfg.eval, generate=True)), qwen2_5, 2)
    with pytest.raises(ConfigError, match="this launch has 3"):
        check(recipe(sequence_parallel=2), qwen2_5, 3)
    with pytest.raises(ConfigError, match="must be 1 \\(off\\) or more"):
        recipe(sequence_parallel=0).train.validate()


def test_heads_that_do_not_divide_are_named():
    config = Qwen2_5_VLConfig(text_config=dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=96))
    check_heads(config, 2)
    check_heads(config, 3)  # 2 key/value heads: repeated per query head, 6 divide by 3
    with pytest.raises(ValueError, match="6 attention heads.*use a divisor of 2"):
        check_heads(config, 4)
