"""Text that spells a control token: an error at its file:line by default, plain text with
`data.special_text: escape` (ids against tiktoken, an independent tokenizer, on the hand-split text);
the data formats' own markup and the box tokens of an answer stay what they are."""

from __future__ import annotations

import json

import pytest
from family_facts import registered
from test_encode import tiktoken_ids

from qwenvl_ft.config import DatasetSpec
from qwenvl_ft.data.check import check_specs
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import IGNORE, encode
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.tiny.builders import builder_for


def processor(real_tokenizer, family: str, special_text: str = "error") -> VLProcessor:
    proc = VLProcessor.for_family(get_family(family), real_tokenizer(family))
    proc.special_text = special_text
    return proc


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def sample(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.mark.parametrize("family", registered())
def test_every_control_token_typed_in_text_is_an_error_at_its_line(real_tokenizer, tmp_path, family):
    fam = get_family(family)
    tokens = fam.control_tokens()
    chat = fam.chat
    assert {chat.image_open, chat.image_pad, chat.im_end, "<|endoftext|>"} <= set(tokens)
    records = [sample("Where is the cat?", "On the mat.")]  # line 1: clean
    for t in tokens:  # each token once in a question, once in an answer
        records += [sample(f"What does {t} do?", "Nothing."), sample("Say it.", f"It is {t} here.")]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    _, report = check_specs([DatasetSpec(path=path)], processor(real_tokenizer, family), max_length=512)
    assert len(report.plan) == 1 and len(report.errors) == 2 * len(tokens), report.errors
    for k, t in enumerate(tokens):
        question, answer = report.errors[2 * k], report.errors[2 * k + 1]
        assert question.where == f"{path}:{2 * k + 2}" and answer.where == f"{path}:{2 * k + 3}"
        assert question.message.startswith(f"turn 1 (user) text holds {t!r}, a control token of {fam.title}")
        assert answer.message.startswith(f"turn 2 (assistant) text holds {t!r}")
        assert "data.special_text: escape" in answer.message
    # escape: the same file checks clean
    _, report = check_specs(
        [DatasetSpec(path=path)], processor(real_tokenizer, family, "escape"), max_length=512
    )
    assert report.ok and len(report.plan) == 1 + 2 * len(tokens)


@pytest.mark.parametrize(
    "family", registered(lambda f: builder_for(f).tokenizer == "qwen" and not f.thinking)
)
def test_escape_tokenizes_them_as_the_text_they_spell(real_tokenizer, family):
    fam = get_family(family)
    proc = processor(real_tokenizer, family, "escape")
    conv = Conversation(
        "t", [Turn("user", [Segment("text", "What does <|im_end|> mean?")]),
              Turn("assistant", [Segment("text", "It ends a turn: <|im_end|><|endoftext|>")])],
    )  # fmt: skip
    enc = encode(conv, proc, [])
    # By hand: the template's frame tokens are tokens; between them, the text (escaped tokens included)
    # is ordinary text, which tiktoken encodes with no special token allowed.
    sp = fam.special_tokens
    system = fam.chat.default_system  # Qwen3-VL's template writes none
    head = tiktoken_ids(
        f"<|im_start|>system\n{system}<|im_end|>\n" * (system is not None) + "<|im_start|>", sp
    )
    user = tiktoken_ids("user\nWhat does <|im_end|> mean?", ())
    mid = tiktoken_ids("<|im_end|>\n<|im_start|>", sp)
    role = tiktoken_ids("assistant\n", ())
    answer = tiktoken_ids("It ends a turn: <|im_end|><|endoftext|>", ())
    tail = tiktoken_ids("<|im_end|>\n", sp)
    assert enc.input_ids == head + user + mid + role + answer + tail
    assert enc.labels == [IGNORE] * len(head + user + mid + role) + answer + tail[:1] + [IGNORE]
    im_end = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = 2 + (system is not None)
    assert enc.input_ids.count(im_end) == turns  # the turns' ends, none from the text


def test_box_tokens_an_answer_writes_stay_tokens(real_tokenizer):
    """Qwen2-VL grounding answers write their box tokens in the text: they are the answer."""
    proc = processor(real_tokenizer, "qwen2_vl")
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    enc = encode(
        Conversation(
            "t", [Turn("user", [Segment("text", "Cat?")]), Turn("assistant", [Segment("text", text)])]
        ),
        proc,
        [],
    )
    assert proc.tokenizer.convert_tokens_to_ids("<|box_start|>") in enc.input_ids


def test_reasoning_and_referring_text_are_checked_too(real_tokenizer):
    proc = processor(real_tokenizer, "qwen2_vl")
    turns = [Turn("user", [Segment("text", "Find "), Segment("ref", "the <|vision_start|> sign")]),
             Turn("assistant", [Segment("text", "Here.")])]  # fmt: skip
    with pytest.raises(ValueError, match=r"turn 1 \(user\) referring text holds '<\|vision_start\|>'"):
        encode(Conversation("t", turns), proc, [])
    turns = [
        Turn("user", [Segment("text", "Why?")]),
        Turn("assistant", [Segment("text", "So.")], "I think <|im_end|>"),
    ]
    with pytest.raises(ValueError, match=r"turn 2 \(assistant\) reasoning holds '<\|im_end\|>'"):
        encode(Conversation("t", turns), proc, [])


def test_chat_treats_typed_tokens_as_text(real_tokenizer):
    from qwenvl_ft.chat import Chat
    from qwenvl_ft.infer import Predictor

    chat = Chat(Predictor(None, processor(real_tokenizer, "qwen2_5_vl"), get_family("qwen2_5_vl")))
    chat.conversation.turns.append(Turn("user", [Segment("text", "Is <|im_end|> a token?")]))
    ids = chat.predictor.prompt(chat.conversation, []).input_ids
    assert (
        ids.count(chat.predictor.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2
    )  # system, user


def test_an_empty_dataset_is_an_error_and_a_byte_order_mark_is_not(real_tokenizer, tmp_path):
    proc = processor(real_tokenizer, "qwen2_vl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n\n")
    _, report = check_specs([DatasetSpec(path=str(empty))], proc, max_length=512)
    assert [(p.where, p.message) for p in report.errors] == [
        (str(empty), "no samples: the dataset is empty (or blank lines only)")
    ]
    line = json.dumps(sample("Hi", "Hello"))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + f"{line}\n{line}\n".encode())
    as_list = tmp_path / "bom.json"
    as_list.write_bytes(b"\xef\xbb\xbf" + f"[{line}]".encode())
    only_bom = tmp_path / "only_bom.jsonl"
    only_bom.write_bytes(b"\xef\xbb\xbf\n")
    for path, usable in ((bom, 2), (as_list, 1)):
        _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=512)
        assert report.ok and len(report.plan) == usable, report.errors
    _, report = check_specs([DatasetSpec(path=str(only_bom))], proc, max_length=512)
    assert [p.message for p in report.errors] == ["no samples: the dataset is empty (or blank lines only)"]
