"""Reasoning in training data, rendered as the official template renders it.

Every thinking family of the registry on Qwen3.5's template (a Qwen3-VL double that declares thinking with Qwen3.5's
official template stands in while none is registered) is checked token for token against its own
`chat_template` run through `tokenizer.apply_chat_template`, with images, one and several turns,
with and without reasoning; the label masks against hand-written supervised spans.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import qwenvl_ft
from qwenvl_ft.data.conversation import Conversation, Segment
from qwenvl_ft.data.encode import IGNORE, encode
from qwenvl_ft.data.readers import DataError, to_conversation
from qwenvl_ft.infer import Predictor
from qwenvl_ft.models import FAMILIES, get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.qwen3_vl import CHAT_3, Qwen3VLFamily
from qwenvl_ft.models.tokenizer import build_tokenizer

TEMPLATE_3_5 = (Path(qwenvl_ft.__file__).parent / "models/qwen3_5/chat_template.jinja").read_text()


class ThinkingDouble(Qwen3VLFamily):
    """Qwen3-VL declaring thinking with Qwen3.5's official template: stands in for a registered one."""

    name = "thinking_double"
    title = "thinking double"
    thinking = True
    chat = replace(CHAT_3, trim_content=True)
    chat_template = TEMPLATE_3_5

    def generation_prompt(self, thinking: bool | None = None) -> str:
        return "assistant\n<think>\n\n</think>\n\n" if thinking is False else "assistant\n<think>\n"


# The generations on Qwen3.5's template (Qwen3.8's own template, with its reasoning effort and kept
# history, has test_qwen3_8.py).
THINKING = [f for f in FAMILIES.values() if f.thinking and not f.reasoning_efforts] or [ThinkingDouble()]


def tokenizer_for(family):
    from qwenvl_ft.tiny import tiny_tokenizer
    from qwenvl_ft.tiny.builders import BUILDERS

    if family.name in BUILDERS:  # a registered generation: the tokenizer its tiny models get
        return tiny_tokenizer(family)
    return build_tokenizer(family.special_tokens, family.chat_template)


_PROCESSORS: dict[str, VLProcessor] = {}


def processor_for(family, thinking: str | None = None) -> VLProcessor:
    if family.name not in _PROCESSORS:
        _PROCESSORS[family.name] = VLProcessor.for_family(family, tokenizer_for(family))
    return replace(_PROCESSORS[family.name], thinking=thinking)


@pytest.fixture(params=THINKING, ids=lambda f: f.name)
def family(request):
    return request.param


RED = Image.new("RGB", (64, 64), (200, 30, 30))


def official_ids(proc: VLProcessor, messages: list[dict], images=(), template: str | None = None, **kw):
    """The official template through apply_chat_template, each image pad expanded to its token count
    (what the real processor does), tokenized whole."""
    tok = proc.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, chat_template=template, **kw)
    pad = proc.family.chat.image_pad
    parts = text.split(pad)
    assert len(parts) == len(images) + 1
    counts = [proc.image_tokens(im.height, im.width) for im in images]
    text = parts[0] + "".join(pad * n + part for n, part in zip(counts, parts[1:], strict=True))
    return tok(text, add_special_tokens=False)["input_ids"]


def supervised_spans(proc: VLProcessor, ids: list[int], labels: list[int]) -> list[str]:
    """Each maximal run of supervised tokens, decoded."""
    spans, run = [], []
    for t, lab in zip([*ids, None], [*labels, IGNORE], strict=True):
        assert lab in (IGNORE, t)
        if lab != IGNORE:
            run.append(t)
        elif run:
            spans.append(proc.tokenizer.decode(run, skip_special_tokens=False))
            run = []
    return spans


def read(record: dict) -> Conversation:
    return to_conversation(record, "data.jsonl:1", "auto", Path("."))


def user_image(text: str) -> dict:
    return {
        "role": "user",
        "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": text}],
    }


def encode_record(proc: VLProcessor, record: dict, images=(), supervise="all_assistant"):
    conv = read(record)
    for t in conv.turns:
        t.segments = [Segment("image", RED) if s.kind == "image" else s for s in t.segments]
    return encode(conv, proc, list(images), supervise)


def test_one_turn_with_reasoning_and_an_image(family):
    proc = processor_for(family)
    messages = [
        user_image("What is this?"),
        {"role": "assistant", "reasoning_content": "Red pixels, square.", "content": "A red square."},
    ]
    enc = encode_record(proc, {"messages": messages}, [RED])
    assert enc.input_ids == official_ids(proc, messages, [RED])
    assert supervised_spans(proc, enc.input_ids, enc.labels) == [
        "<think>\nRed pixels, square.\n</think>\n\nA red square.<|im_end|>"
    ]
    assert enc.mm_token_type_ids.count(1) == proc.image_tokens(64, 64)


def test_think_block_in_the_text_equals_the_field(family):
    proc = processor_for(family)
    raw = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    ]
    field = [raw[0], {"role": "assistant", "reasoning_content": "Greet back.", "content": "Hello!"}]
    enc = encode_record(proc, {"messages": raw})
    # The template reads a <think> block out of the content itself: both spellings render alike.
    assert enc.input_ids == official_ids(proc, raw) == official_ids(proc, field)
    assert supervised_spans(proc, enc.input_ids, enc.labels) == [
        "<think>\nGreet back.\n</think>\n\nHello!<|im_end|>"
    ]


def test_earlier_turns_lose_their_reasoning(family):
    """Qwen3.5's template: only the answer after the last user turn shows reasoning."""
    assert family.chat.think.history == "drop_earlier"
    proc = processor_for(family)
    messages = [
        {"role": "system", "content": "Be brief."},
        user_image("What is this?"),
        {"role": "assistant", "reasoning_content": "Red.", "content": "A red square."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "reasoning_content": "Yes, red.", "content": "Yes."},
    ]
    enc = encode_record(proc, {"messages": messages}, [RED])
    assert enc.input_ids == official_ids(proc, messages, [RED])
    assert supervised_spans(proc, enc.input_ids, enc.labels) == [
        "A red square.<|im_end|>",
        "<think>\nYes, red.\n</think>\n\nYes.<|im_end|>",
    ]
    last = encode_record(proc, {"messages": messages}, [RED], supervise="last_assistant")
    assert supervised_spans(proc, last.input_ids, last.labels) == [
        "<think>\nYes, red.\n</think>\n\nYes.<|im_end|>"
    ]


def test_turns_without_reasoning_get_the_empty_block_as_prompt(family):
    proc = processor_for(family)
    messages = [
        {"role": "user", "content": "  Hi \n"},  # the template trims every turn's content
        {"role": "assistant", "content": "Hello.\n"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": " Bye."},
    ]
    enc = encode_record(proc, {"messages": messages})
    assert enc.input_ids == official_ids(proc, messages)
    text = proc.tokenizer.decode(enc.input_ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nBye.<|im_end|>\n")
    # The empty block is what inference with thinking off writes into the prompt: never a target.
    assert supervised_spans(proc, enc.input_ids, enc.labels) == ["Hello.<|im_end|>", "Bye.<|im_end|>"]


def keep_template(template: str) -> str:
    """Qwen3.6's published change: earlier turns keep their reasoning when preserve_thinking is true."""
    old = "{%- if loop.index0 > ns.last_query_index %}"
    assert template.count(old) == 1
    new = "{%- if (preserve_thinking is defined and preserve_thinking is true) or (loop.index0 > ns.last_query_index) %}"
    return template.replace(old, new)


def test_keep_renders_every_turns_reasoning(family):
    proc = processor_for(family, "keep")
    messages = [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "reasoning_content": "Count.", "content": "1"},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Three?"},
        {"role": "assistant", "reasoning_content": "Count again.", "content": "3"},
    ]
    enc = encode_record(proc, {"messages": messages})
    template = keep_template(family.chat_template)
    assert enc.input_ids == official_ids(proc, messages, template=template, preserve_thinking=True)
    assert supervised_spans(proc, enc.input_ids, enc.labels) == [
        "<think>\nCount.\n</think>\n\n1<|im_end|>",
        "2<|im_end|>",
        "<think>\nCount again.\n</think>\n\n3<|im_end|>",
    ]


TWO_ANSWERS_REASONED = [
    {"role": "user", "content": "One?"},
    {"role": "assistant", "reasoning_content": "Count.", "content": "1"},
    {"role": "user", "content": "Two?"},
    {"role": "assistant", "reasoning_content": "Count more.", "content": "2"},
]


@pytest.mark.parametrize("mode", ["template", "drop_earlier"])
def test_template_and_drop_earlier(family, mode):
    proc = processor_for(family, mode)
    messages = TWO_ANSWERS_REASONED
    enc = encode_record(proc, {"messages": messages})
    assert enc.input_ids == official_ids(proc, messages)


def test_drop_renders_as_if_there_were_no_reasoning(family):
    proc = processor_for(family, "drop")
    messages = TWO_ANSWERS_REASONED
    bare = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    enc = encode_record(proc, {"messages": messages})
    assert enc.input_ids == official_ids(proc, bare)
    assert supervised_spans(proc, enc.input_ids, enc.labels) == ["1<|im_end|>", "2<|im_end|>"]


@pytest.mark.parametrize("thinking", [None, True, False])
def test_generation_prompt_equals_the_template(family, thinking):
    """Predictor's prompt ends with the family's generation prompt, as add_generation_prompt writes it."""
    proc = processor_for(family)
    messages = [
        user_image("What is this?"),
        {"role": "assistant", "reasoning_content": "Red.", "content": "A red square."},
        {"role": "user", "content": "Sure?"},
    ]
    conv = read({"messages": messages})
    conv.turns[0].segments[0] = Segment("image", RED)
    prompt = Predictor(None, proc, family, thinking=thinking).prompt(conv, [RED])
    kw = {} if thinking is None else {"enable_thinking": thinking}
    assert prompt.input_ids == official_ids(proc, messages, [RED], add_generation_prompt=True, **kw)


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if not f.thinking and f.supported])
def test_families_without_thinking_train_reasoning_as_the_data_wrote_it(name):
    """inline (their default): the ids and labels of the answer text as written, as before reasoning
    was read apart (an R1-style answer); reasoning_content gets a think block; drop leaves it out."""
    family = get_family(name)
    proc = VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template))
    user = {"role": "user", "content": "Hi"}
    written = "<think>x\n</think>\n<answer>Yo</answer>"
    record = {"messages": [user, {"role": "assistant", "content": written}]}

    def plain(text: str):  # the answer as text a reader does not split: no tags in it
        enc = encode_record(proc, {"messages": [user, {"role": "assistant", "content": "@"}]})
        at = proc.tokenizer.convert_tokens_to_ids("@")
        i = enc.input_ids.index(at)
        ids = proc.tokenizer(text, add_special_tokens=False)["input_ids"]
        return enc.input_ids[:i] + ids + enc.input_ids[i + 1 :], enc.labels[:i] + ids + enc.labels[i + 1 :]

    for mode in (None, "inline"):
        enc = encode_record(replace(proc, thinking=mode), record)
        assert (enc.input_ids, enc.labels) == plain(written)
    field = {"role": "assistant", "reasoning_content": " x ", "content": "Yo"}
    enc = encode_record(proc, {"messages": [user, field]})
    assert (enc.input_ids, enc.labels) == plain("<think>\nx\n</think>\n\nYo")
    with pytest.raises(DataError, match=r"data.thinking: keep, but .* has no thinking mode"):
        encode_record(replace(proc, thinking="keep"), record)
    dropped = encode_record(replace(proc, thinking="drop"), record)
    assert (dropped.input_ids, dropped.labels) == plain("<answer>Yo</answer>")


def test_thinking_families_refuse_inline(family):
    proc = processor_for(family, "inline")
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    with pytest.raises(DataError, match=r"data.thinking: inline is for generations without a thinking mode"):
        encode_record(proc, record)


@pytest.mark.parametrize(("mode", "expected"), [(None, [1, 0, 0]), ("keep", [1, 1, 0]), ("drop", [0, 0, 0])])
def test_the_check_marks_the_samples_whose_answers_show_reasoning(family, tmp_path, mode, expected):
    """The plan's `reasoning` column (how the run was trained: README 'Thinking at inference'): the
    template shows only the last answer's reasoning, keep every answer's, drop none."""
    import json

    from qwenvl_ft.config import DatasetSpec
    from qwenvl_ft.data.check import check_sources
    from qwenvl_ft.data.sources import Source
    from qwenvl_ft.training.lifecycle import trained_thinking

    def sample(first: str | None, last: str | None) -> dict:
        a1, a2 = {"role": "assistant", "content": "A."}, {"role": "assistant", "content": "B."}
        a1.update({"reasoning_content": first} if first else {})
        a2.update({"reasoning_content": last} if last else {})
        return {"messages": [{"role": "user", "content": "Q1"}, a1, {"role": "user", "content": "Q2"}, a2]}

    path = tmp_path / "d.jsonl"
    records = [sample(None, "Why B."), sample("Why A.", None), sample(None, None)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = check_sources(
        [Source(DatasetSpec(path=str(path)))], processor_for(family, mode), 512, progress=False
    )
    assert report.ok and [item.reasoning for item in report.plan] == expected
    shown = sum(expected)
    assert trained_thinking(family, report.plan) == {
        "thinking": shown >= 2,  # at least half of the 3 samples: on
        "thinking_why": f"{shown} of 3 trained samples showed reasoning",
    }
    assert trained_thinking(get_family("qwen2_5_vl"), report.plan) == {}  # no thinking mode: nothing recorded
