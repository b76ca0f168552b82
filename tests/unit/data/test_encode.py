"""Encoding: ids equal an independent tokenizer (tiktoken) on the hand-written rendered text, and the
label mask supervises exactly the assistant content and its <|im_end|>, token by token."""

from __future__ import annotations

import pytest
from family_facts import need, registered
from PIL import Image

from qwenvl_ft.data.conversation import Box, Conversation, Segment, Turn
from qwenvl_ft.data.encode import IGNORE, encode
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.tokenizer import QWEN_PATTERN, qwen_vocab_file
from qwenvl_ft.tiny.builders import builder_for

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def tiktoken_ids(text: str, specials: tuple[str, ...]) -> list[int]:
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(qwen_vocab_file())),
        special_tokens={t: 151643 + i for i, t in enumerate(specials)},
    )
    return enc.encode(text, allowed_special="all")


def expected_ids(fam, tok, text: str) -> list[int]:
    """Ids of hand-written text: tiktoken on the real Qwen ranks where tiny models use them; a
    stand-in-tokenizer family (no package ships its vocabulary) is tokenized by that stand-in, so
    what is checked there is the rendered text, token for token."""
    if builder_for(fam).tokenizer == "qwen":
        return tiktoken_ids(text, fam.special_tokens)
    return tok(text, add_special_tokens=False)["input_ids"]


def two_turn() -> tuple[Conversation, list[Image.Image]]:
    # 56x56 resizes to itself for 14-px patches: a 4x4 patch grid, merged 2x2 -> 4 image tokens.
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    conv = Conversation(
        id="t",
        turns=[
            Turn("user", [Segment("image", image), Segment("text", "What is this?")]),
            Turn("assistant", [Segment("text", "A red square.")]),
            Turn("user", [Segment("text", "Sure?")]),
            Turn("assistant", [Segment("text", "Yes")]),
        ],
    )
    return conv, [image]


@pytest.mark.parametrize("family", registered())
def test_ids_and_mask(real_tokenizer, family):
    """The rendered two-turn conversation equals the hand-written text of tests/family_facts.py, and
    exactly its assistant content and closing tokens are supervised."""
    fam = get_family(family)
    facts = need(family, "two_turn_text", "two_turn_grid", "two_turn_supervised")
    proc = VLProcessor.for_family(fam, real_tokenizer(family))
    conv, images = two_turn()
    enc = encode(conv, proc, images)
    assert enc.input_ids == expected_ids(fam, proc.tokenizer, facts.two_turn_text)
    tok = proc.tokenizer
    supervised = [tok.decode([t]) for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert supervised == list(facts.two_turn_supervised)
    assert all(lab in (IGNORE, t) for t, lab in zip(enc.input_ids, enc.labels, strict=True))
    assert enc.mm_token_type_ids.count(1) == facts.two_turn_text.count(fam.chat.image_pad)
    if facts.two_turn_grid is not None:
        assert enc.image_grid_thw.tolist() == [list(facts.two_turn_grid)]


def test_last_assistant_only(real_tokenizer):
    fam = get_family("qwen2_5_vl")
    proc = VLProcessor.for_family(fam, real_tokenizer("qwen2_5_vl"))
    conv, images = two_turn()
    enc = encode(conv, proc, images, supervise="last_assistant")
    supervised = [
        proc.tokenizer.decode([t]) for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE
    ]
    assert supervised == ["Yes", "<|im_end|>"]


def test_qwen3_has_no_default_system_and_keeps_given_one(real_tokenizer):
    fam = get_family("qwen3_vl")
    proc = VLProcessor.for_family(fam, real_tokenizer("qwen3_vl"))
    # 64x64 fits 16-px patches, but Qwen3-VL's min_pixels (65536) scales it up to 256x256: 8x8 = 64 tokens.
    image = Image.new("RGB", (64, 64))
    conv = Conversation(
        id="t",
        turns=[
            Turn("user", [Segment("text", "Look: "), Segment("image", image)]),
            Turn("assistant", [Segment("text", "[1, 2, 3, 4]")]),
        ],
    )
    enc = encode(conv, proc, [image])
    text = (
        "<|im_start|>user\nLook: <|vision_start|>" + "<|image_pad|>" * 64 + "<|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n[1, 2, 3, 4]<|im_end|>\n"
    )
    assert enc.input_ids == tiktoken_ids(text, fam.special_tokens)
    with_system = Conversation(id="s", turns=[Turn("system", [Segment("text", "Be brief.")]), *conv.turns])
    enc2 = encode(with_system, proc, [image])
    assert enc2.input_ids == tiktoken_ids(
        "<|im_start|>system\nBe brief.<|im_end|>\n" + text, fam.special_tokens
    )
    assert enc2.labels.count(IGNORE) == len(enc2.labels) - len(
        tiktoken_ids("[1, 2, 3, 4]<|im_end|>", fam.special_tokens)
    )


@pytest.mark.parametrize("family", registered())
def test_rendering_matches_the_saved_chat_template(real_tokenizer, family):
    """The Jinja template written into checkpoints renders the hand-written text of family_facts."""
    fam = get_family(family)
    expected = need(family, "template_text").template_text
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
    ]
    tok = real_tokenizer(family)
    assert tok.apply_chat_template(messages, tokenize=False, chat_template=fam.chat_template) == expected


# Box (48, 50, 107, 109) on a 160x120 image, written by hand per family (tests/family_facts.py);
# the same box given in [0, 1000) as (300, 417, 669, 908) must give the same text.
@pytest.mark.parametrize("family", registered())
@pytest.mark.parametrize("normalized", [False, True])
def test_grounding_answer_in_family_convention(real_tokenizer, family, normalized):
    fam = get_family(family)
    facts = need(family, "ref_text", "grounding_sep", "box_text")
    proc = VLProcessor.for_family(fam, real_tokenizer(family))
    image = Image.new("RGB", (160, 120))
    box = Box(300, 417, 669, 908, normalized=True) if normalized else Box(48, 50, 107, 109)
    sep = [Segment("text", facts.grounding_sep)] if facts.grounding_sep else []
    conv = Conversation(
        id="g",
        turns=[
            Turn("user", [Segment("image", image), Segment("text", "Find the red square.")]),
            Turn("assistant", [Segment("ref", "red square"), *sep, Segment("box", box)]),
        ],
    )
    enc = encode(conv, proc, [image])
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    answer = facts.ref_text + facts.grounding_sep + facts.box_text + "<|im_end|>"
    assert supervised == expected_ids(fam, proc.tokenizer, answer)


def test_box_on_missing_image_is_reported(real_tokenizer):
    from qwenvl_ft.data.conversation import Box

    proc = VLProcessor.for_family(get_family("qwen2_vl"), real_tokenizer("qwen2_vl"))
    conv = Conversation(
        id="f.jsonl:3",
        turns=[
            Turn("user", [Segment("text", "hi")]),
            Turn("assistant", [Segment("box", Box(1, 2, 3, 4, image=1))]),
        ],
    )
    with pytest.raises(
        ValueError, match=r"f.jsonl:3: a box refers to image 2 but the sample has 0 image\(s\)"
    ):
        encode(conv, proc, [])


def test_first_generation_picture_prefix_and_258_token_span(real_tokenizer):
    """Qwen-VL: 'Picture 1: <img>' + 256 x <imgpad> + '</img>\\n', the default system prompt, ChatML."""
    fam = get_family("qwen_vl")
    # The fixed 448x448 budget needs no image processor to count tokens.
    proc = VLProcessor(fam, real_tokenizer("qwen_vl"), image_processor=None)
    image = Image.new("RGB", (640, 480))
    conv = Conversation(
        id="q",
        turns=[
            Turn("user", [Segment("image", image), Segment("text", "Where is the dog?")]),
            Turn("assistant", [Segment("ref", "the dog"), Segment("box", Box(64, 48, 320, 240))]),
        ],
    )
    from qwenvl_ft.data.encode import render, tokenize

    ids, labels, _ = tokenize(render(conv, proc, [image]), proc.tokenizer)
    text = (
        SYSTEM
        + "<|im_start|>user\nPicture 1: <img>"
        + "<imgpad>" * 256
        + "</img>\nWhere is the dog?<|im_end|>\n"
        "<|im_start|>assistant\n<ref>the dog</ref><box>(100,100),(500,500)</box><|im_end|>\n"
    )
    assert ids == tiktoken_ids(text, fam.special_tokens)
    start = ids.index(151857)  # <img>
    assert ids[start + 257] == 151858 and ids[start + 1 : start + 257] == [151859] * 256  # 258-token span
    supervised = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    assert supervised == tiktoken_ids(
        "<ref>the dog</ref><box>(100,100),(500,500)</box><|im_end|>", fam.special_tokens
    )


def test_original_qwen_vl_finetune_mask(real_tokenizer):
    """finetune.py of the original Qwen-VL: targets are every <|im_start|>, each turn's <|im_end|> and
    newline, and the answer; the role names, the system text and the user text are ignored."""
    fam = get_family("qwen_vl")
    proc = VLProcessor(fam, real_tokenizer("qwen_vl"), image_processor=None)
    conv = Conversation(
        id="o",
        turns=[Turn("user", [Segment("text", "Hi")]), Turn("assistant", [Segment("text", "Hello there")])],
    )
    enc = encode(conv, proc, [], supervise="original_qwen_vl")
    supervised = [
        proc.tokenizer.decode([t]) for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE
    ]
    assert supervised == [
        "<|im_start|>",
        "<|im_end|>",
        "\n",  # system turn
        "<|im_start|>",
        "<|im_end|>",
        "\n",  # user turn
        "<|im_start|>",
        "Hello",
        " there",
        "<|im_end|>",
        "\n",
    ]  # assistant turn
