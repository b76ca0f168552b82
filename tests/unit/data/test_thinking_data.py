"""Reasoning in every input format: kept apart from the answer, bad input a finding at file:line (id),
and recipes that ask a family without a thinking mode for reasoning refused at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.data.check import check_specs
from qwenvl_ft.data.readers import DataError, to_conversation
from qwenvl_ft.models import FAMILIES, get_family
from qwenvl_ft.models.capabilities import check_capabilities

REPO = Path(__file__).resolve().parents[3]


def read(record: dict):
    return to_conversation(record, "d.jsonl:3", "auto", Path("/data"))


def answer_text(turn) -> str:
    return "".join(str(s.value) for s in turn.segments if s.kind == "text")


@pytest.mark.parametrize(
    "record",
    [
        {
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "<think>\nWhy.\n</think>\n\nA"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "reasoning_content": "Why.", "content": "A"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Q"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "<think>Why.</think>A"}]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Q"}]},
                {
                    "role": "assistant",
                    "reasoning_content": "Why.",
                    "content": [{"type": "text", "text": "A"}],
                },
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "Q"},
                {"from": "gpt", "value": "<think>Why.</think>\nA"},
            ]
        },
        {
            "conversations": [
                {"from": "user", "value": "Q"},
                {"from": "assistant", "value": "<think>Why.</think>A"},
            ]
        },
        {
            "conversations": [
                {"from": "user", "value": "Q"},
                {"from": "assistant", "value": "A", "reasoning_content": "Why."},
            ]
        },
    ],
    ids=[
        "messages-tags",
        "messages-field",
        "openai-tags",
        "openai-field",
        "llava-tags",
        "qwen_vl-tags",
        "qwen_vl-field",
    ],
)
def test_every_format_keeps_reasoning_apart(record):
    conv = read(record)
    user, assistant = conv.turns
    assert (user.reasoning, answer_text(user)) == (None, "Q")
    assert (assistant.reasoning, answer_text(assistant)) == ("Why.", "A")


def test_boxes_and_images_after_the_think_block_still_parse():
    conv = read(
        {
            "messages": [
                {"role": "user", "content": "<image>Where?"},
                {"role": "assistant", "content": "<think>Top left.</think><ref-object><bbox>"},
            ],
            "images": ["a.png"],
            "objects": {"ref": ["cat"], "bbox": [[1, 2, 3, 4]]},
        }
    )
    turn = conv.turns[1]
    assert turn.reasoning == "Top left."
    assert [s.kind for s in turn.segments] == ["ref", "box"]


@pytest.mark.parametrize(
    "assistant, message",
    [
        (
            {"role": "assistant", "content": "<think>Why. A"},
            r"turn 2 \(assistant\): <think> is never closed by </think>",
        ),
        (
            {"role": "assistant", "content": "Why.</think>A"},
            r"turn 2 \(assistant\): </think> inside the text",
        ),
        ({"role": "assistant", "content": "A <think>b</think>"}, r"<think> inside the text"),
        (
            {"role": "assistant", "content": "<think>a</think>B<think>c</think>"},
            r"more than one <think> block",
        ),
        (
            {"role": "assistant", "reasoning_content": "x", "content": "<think>y</think>A"},
            r"turn 2: reasoning given twice",
        ),
        (
            {"role": "assistant", "reasoning_content": 3, "content": "A"},
            r"reasoning_content must be a string",
        ),
    ],
)
def test_bad_reasoning_is_an_error_at_the_sample(assistant, message):
    with pytest.raises(DataError, match=message) as e:
        read({"id": "s7", "messages": [{"role": "user", "content": "Q"}, assistant]})
    assert e.value.where == "d.jsonl:3 (id s7)"


@pytest.mark.parametrize(
    "user",
    [
        {"role": "user", "content": "<think>Hmm</think>Q"},
        {"role": "user", "reasoning_content": "Hmm", "content": "Q"},
        {"role": "system", "content": "<think>Hmm</think>Be brief."},
    ],
)
def test_reasoning_outside_assistant_turns_is_an_error(user):
    msgs = [user, {"role": "assistant", "content": "A"}] if user["role"] == "user" else [user]
    with pytest.raises(DataError, match=rf"turn 1: reasoning in a {user['role']} turn"):
        read({"messages": msgs + [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})


def test_prompts_that_mention_the_tags_are_plain_text():
    """R1-style prompts describe the format: only an assistant's text is read for think tags."""
    system = "Reason inside <think> </think> tags, then answer."
    conv = read(
        {
            "messages": [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "</think>?"}],
                },
                {"role": "assistant", "content": "<think>r</think>A"},
            ]
        }
    )
    assert [(t.reasoning, answer_text(t)) for t in conv.turns] == [
        (None, system),
        (None, "Q</think>?"),
        ("r", "A"),
    ]


def test_an_empty_reasoning_field_on_a_user_turn_is_no_reasoning():
    conv = read(
        {
            "messages": [
                {"role": "user", "content": "Q", "reasoning_content": ""},
                {"role": "assistant", "content": "A"},
            ]
        }
    )
    assert conv.turns[0].reasoning == ""


def test_the_data_check_lists_each_bad_sample_by_file_line_and_id(tmp_path, bpe_processor):
    lines = [
        {"id": "good", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {
            "id": "open",
            "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>x"}],
        },
        {
            "id": "user",
            "messages": [
                {"role": "user", "content": "<think>x</think>Q"},
                {"role": "assistant", "content": "A"},
            ],
        },
        {
            "id": "kept",
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "<think>x</think>A"},
            ],
        },
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    from qwenvl_ft.config import DatasetSpec

    _, report = check_specs(
        [DatasetSpec(path=str(path))], bpe_processor, max_length=512, cache_dir=None, progress=False
    )
    found = {p.where: p.message for p in report.errors}
    # Qwen2-VL has no thinking mode: well-formed reasoning is trained as written (inline), no error.
    assert set(found) == {f"{path}:2 (id open)", f"{path}:3 (id user)"}
    assert "<think> is never closed" in found[f"{path}:2 (id open)"]
    assert "reasoning in a user turn" in found[f"{path}:3 (id user)"]


def recipe(*overrides: str):
    return load_recipe(REPO / "recipes/tiny/qwen3_vl_lora.yaml", list(overrides))


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if not f.thinking])
def test_recipes_with_thinking_refused_on_families_without_it(name):
    family = get_family(name)
    check_capabilities(family, recipe())
    check_capabilities(family, recipe("data.thinking=drop"))
    check_capabilities(family, recipe("data.thinking=inline"))
    for mode in ("template", "keep", "drop_earlier"):
        with pytest.raises(
            ConfigError, match=rf"data.thinking: {mode}, but .*\({name}\) has no thinking mode"
        ):
            check_capabilities(family, recipe(f"data.thinking={mode}"))


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.thinking])
def test_thinking_families_accept_every_mode(name):
    for mode in ("template", "keep", "drop_earlier", "drop"):
        check_capabilities(get_family(name), recipe(f"data.thinking={mode}"))
    with pytest.raises(
        ConfigError, match=r"data.thinking: inline is for generations without a thinking mode"
    ):
        check_capabilities(get_family(name), recipe("data.thinking=inline"))


def test_unknown_thinking_mode_is_refused_by_the_loader():
    with pytest.raises(ConfigError, match="data.thinking"):
        recipe("data.thinking=maybe")
