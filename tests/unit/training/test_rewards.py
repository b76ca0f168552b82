"""GRPO rewards against hand-worked values: each generation's box convention, matching, VQA
normalisation, the think block of Qwen3.5, and the errors of a user's `module:function`."""

from __future__ import annotations

import pytest

from qwenvl_ft.config.schema import RewardSpec
from qwenvl_ft.models import get_family
from qwenvl_ft.training.rewards import (
    Reward,
    exact_match,
    format_reward,
    grounding_iou,
    load_reward,
    load_rewards,
    matched_iou,
    think_well_formed,
)

# A 200x100 image whose reference box covers (20, 10)-(120, 60): 100 x 50 pixels. In [0, 1000) that
# is (100, 100)-(600, 600). Half of it, (20, 10)-(70, 60), is (100, 100)-(350, 600): IoU 0.5.
REF = [20.0, 10.0, 120.0, 60.0]


def sample(family: str, resized=(200, 100), boxes=(REF,), **extra) -> dict:
    return {
        "id": "data.jsonl:3",
        "reference": "",
        "reference_boxes": [list(b) for b in boxes],
        "box_image": 0,
        "image_sizes": [[200, 100]],
        "resized_sizes": [list(resized)],
        "family": family,
        **extra,
    }


@pytest.mark.parametrize(
    ("family", "answer", "iou"),
    [
        ("qwen3_vl", "[100, 100, 600, 600]", 1.0),
        ("qwen3_vl", "[100, 100, 350, 600]", 0.5),
        ("qwen3_vl", "somewhere on the left", 0.0),
        ("qwen_vl", "<ref>the cat</ref><box>(100,100),(350,600)</box>", 0.5),  # first generation
        ("qwen2_vl", "<|box_start|>(100,100),(350,600)<|box_end|>", 0.5),
        ("qwen3_vl", "[700, 700, 900, 900]", 0.0),  # disjoint
    ],
)
def test_grounding_iou_reads_each_generations_boxes(family, answer, iou):
    assert grounding_iou([answer], [""], [sample(family)]) == [pytest.approx(iou)]


def test_grounding_iou_resized_pixels_of_qwen2_5_vl():
    # Qwen2.5-VL writes pixels of the resized image: resized to 400x200 (2x), (40, 20)-(140, 120)
    # is (20, 10)-(70, 60) of the original: IoU 0.5 with the reference.
    s = sample("qwen2_5_vl", resized=(400, 200))
    assert grounding_iou(["<|box_start|>(40,20),(140,120)<|box_end|>"], [""], [s]) == [pytest.approx(0.5)]


def test_matched_iou_several_boxes_by_hand():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    half_a = (0, 0, 5, 10)  # IoU 0.5 with a, 0 with b
    assert matched_iou([a, b], [a, b]) == 1.0
    assert matched_iou([b, a], [a, b]) == 1.0  # order does not matter
    assert matched_iou([a], [a, b]) == 0.5  # a box missing: (1 + 0) / 2
    assert matched_iou([a, b, (50, 50, 60, 60)], [a, b]) == pytest.approx(2 / 3)  # an extra box
    # a is taken by its exact match, so half_a cannot count for a again: (1 + 0) / 2
    assert matched_iou([a, half_a], [a, b]) == 0.5
    assert matched_iou([half_a], [a]) == pytest.approx(0.5)
    assert matched_iou([], [a]) == 0.0


def test_grounding_iou_refuses_a_sample_without_reference_boxes():
    with pytest.raises(ValueError, match=r"data.jsonl:3: grounding_iou needs reference boxes"):
        grounding_iou(["[1, 2, 3, 4]"], [""], [sample("qwen3_vl", boxes=())])


def test_exact_match_uses_the_vqa_normalisation():
    refs = ["2 dogs", "2 dogs", "yes"]
    assert exact_match(["Two dogs.", "three dogs", "Yes"], refs, [{}] * 3) == [1.0, 0.0, 1.0]


def test_format_reward_boxes_and_text():
    boxed, plain = sample("qwen3_vl"), sample("qwen3_vl", boxes=())
    texts = ["[1, 2, 3, 4]", "top left", "top left", "  "]
    assert format_reward(texts, [""] * 4, [boxed, boxed, plain, plain]) == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("raw", "opened", "ok"),
    [
        ("the circle is top left\n</think>\n\n[1, 2, 3, 4]", True, True),
        ("the circle is top left [1, 2, 3, 4]", True, False),  # never closed
        ("a\n</think>\n\nb\n</think>\n\n[1, 2, 3, 4]", True, False),  # closed twice
        ("a <think> b\n</think>\n\n[1, 2, 3, 4]", True, False),  # a second block opened
        ("a\n</think>\n\n", True, False),  # no answer after the block
        ("[1, 2, 3, 4]", False, True),  # thinking off: no tags at all
        ("<think>\nhm\n</think>\n\n[1, 2, 3, 4]", False, True),  # the answer opens its own block
        ("hm</think>[1, 2, 3, 4]", False, False),  # a close without an open
    ],
)
def test_think_block_of_qwen3_5(raw, opened, ok):
    think = get_family("qwen3_5").chat.think
    assert think_well_formed(raw, think, opened) is ok


def test_format_reward_on_qwen3_5_needs_the_think_block():
    s = sample("qwen3_5", raw="top left\n</think>\n\n[100, 100, 600, 600]", think_opened=True)
    bad = dict(s, raw="top left [100, 100, 600, 600]")
    assert format_reward(["[100, 100, 600, 600]"] * 2, [""] * 2, [s, bad]) == [1.0, 0.0]


def test_user_reward_is_loaded_and_checked(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(completions, references, samples):\n"
        "    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n"
        "def wrong_length(completions, references, samples):\n"
        "    return [1.0]\n"
        "def not_numbers(completions, references, samples):\n"
        "    return ['x' for c in completions]\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (reward,) = load_rewards([RewardSpec("my_rewards:short", 0.5)])
    assert reward.weight == 0.5
    assert reward(["ok", "too long"], ["", ""], [{}, {}]) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"'my_rewards:wrong_length' returned 1 scores for 2 completions"):
        Reward("my_rewards:wrong_length", 1.0, load_reward("my_rewards:wrong_length"))(
            ["a", "b"], ["", ""], [{}, {}]
        )
    with pytest.raises(TypeError, match=r"'my_rewards:not_numbers' must return a list of numbers"):
        Reward("my_rewards:not_numbers", 1.0, load_reward("my_rewards:not_numbers"))(["a"], [""], [{}])
    with pytest.raises(ValueError, match=r"'my_rewards:NOT_A_FUNCTION': my_rewards.NOT_A_FUNCTION is a int"):
        load_reward("my_rewards:NOT_A_FUNCTION")
    with pytest.raises(
        ValueError, match=r"'my_rewards:missing': module 'my_rewards' has no attribute 'missing'"
    ):
        load_reward("my_rewards:missing")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:f", r"'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"),
        (
            "grounding",
            r"unknown reward 'grounding': use a built-in one \(grounding_iou, exact_match, format\)",
        ),
        (":f", r"expected 'module:function'"),
    ],
)
def test_reward_load_errors_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        load_reward(spec)


def test_module_that_fails_on_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"'broken_rewards:f': cannot import .*RuntimeError: needs a GPU"):
        load_reward("broken_rewards:f")
