"""Qwen3.8's own template, token for token: the packaged file is the published one (its sha256),
and every rendering of ours equals `apply_chat_template` on it, for every reasoning effort, with and
without a system turn, with earlier turns' thinking kept (its default) or dropped
(`preserve_thinking=false`, our `data.thinking: drop_earlier`), and every prompt for every effort and
thinking mode; label masks against hand-written spans; the instruction texts against the model card
and the template's own (README 'Reasoning (thinking)', models/qwen3_8.py).

Samples without reasoning are rendered as the template renders them with `enable_thinking=false` (no
effort instruction), which is how inference asks a run trained on them (README 'Thinking at
inference'); samples with reasoning with thinking on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.data.conversation import Segment
from qwenvl_ft.data.encode import IGNORE, encode
from qwenvl_ft.data.readers import to_conversation
from qwenvl_ft.infer import Predictor
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.qwen3_8 import TEMPLATE_FILE
from qwenvl_ft.tiny import tiny_tokenizer

REPO = Path(__file__).resolve().parents[3]
FAMILY = get_family("qwen3_8")
RED = Image.new("RGB", (64, 64), (200, 30, 30))
EFFORTS = [None, "xhigh", "medium", "low"]
# The instruction texts as the template file writes them (lines 51 and 53), copied by hand.
XHIGH = (
    "Reasoning effort is set to xhigh. Please think carefully through the task, validate key assumptions, "
    "consider plausible alternatives, and prioritize correctness, consistency, and clarity in the final answer."
)
LOW = (
    "Reasoning effort is set to low. Keep your thinking brief and focused, moving directly to the "
    "conclusion without unnecessary elaboration."
)
INSTRUCTION = {None: XHIGH, "xhigh": XHIGH, "medium": "", "low": LOW}

USER = {
    "role": "user",
    "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": "What is it?"}],
}
CONVERSATIONS = {
    "one turn, reasoning": [USER, {"role": "assistant", "reasoning_content": "All red.", "content": "Red."}],
    "one turn, none": [USER, {"role": "assistant", "content": "Red."}],
    "system, two turns, earlier reasoning": [
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "assistant", "reasoning_content": "All red.", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ],
    "two turns, last reasoning": [
        USER,
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "reasoning_content": "Still red.", "content": "Yes."},
    ],
    "system, none": [
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "assistant", "content": "Red."},
    ],
    "blank system, reasoning": [
        {"role": "system", "content": "  "},
        USER,
        {"role": "assistant", "reasoning_content": "All red.", "content": "Red."},
    ],
    "blank system, none": [{"role": "system", "content": ""}, USER, {"role": "assistant", "content": "Red."}],
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(FAMILY)


def processor(tokenizer, effort=None, thinking=None) -> VLProcessor:
    proc = VLProcessor.for_family(FAMILY, tokenizer)
    proc.reasoning_effort, proc.thinking = effort, thinking
    return proc


def conversation(messages: list[dict]):
    conv = to_conversation({"messages": messages}, "d.jsonl:1", "openai", Path("."))
    for t in conv.turns:
        t.segments = [Segment("image", RED) if s.kind == "image" else s for s in t.segments]
    return conv


def official(proc: VLProcessor, messages: list[dict], **kw) -> list[int]:
    """The template through apply_chat_template, the image pad expanded to its token count."""
    text = proc.tokenizer.apply_chat_template(
        messages, tokenize=False, chat_template=TEMPLATE_FILE.read_text(), **kw
    )
    text = text.replace("<|image_pad|>", "<|image_pad|>" * proc.image_tokens(64, 64))
    return proc.tokenizer(text, add_special_tokens=False)["input_ids"]


def spans(proc: VLProcessor, ids: list[int], labels: list[int]) -> list[str]:
    out, run = [], []
    for t, lab in zip([*ids, None], [*labels, IGNORE], strict=True):
        if lab != IGNORE:
            run.append(t)
        elif run:
            out.append(proc.tokenizer.decode(run))
            run = []
    return out


def test_the_packaged_template_is_the_published_file():
    """sha256 and size published for Qwen/Qwen3.8-27B's chat_template.jinja (and its quantized copies)."""
    data = TEMPLATE_FILE.read_bytes()
    assert (
        hashlib.sha256(data).hexdigest() == "c3cf9e34abf4f9e36c2d72165aa9c132d3e2a725b6c2586aaa3a8af9d7a81041"
    )
    assert len(data) == 8952
    assert FAMILY.chat_template == data.decode()


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("history", [None, "drop_earlier"])
def test_training_ids_equal_the_template(tokenizer, effort, name, history):
    messages = CONVERSATIONS[name]
    proc = processor(tokenizer, effort, history)
    enc = encode(conversation(messages), proc, [RED])
    kw = {} if effort is None else {"reasoning_effort": effort}
    kw |= {"preserve_thinking": False} if history == "drop_earlier" else {}
    shown = (
        [m.get("reasoning_content") for m in messages[-1:]]
        if history
        else [m.get("reasoning_content") for m in messages]
    )
    if not any(shown):  # no reasoning shown: rendered as with thinking off
        kw["enable_thinking"] = False
    assert enc.input_ids == official(proc, messages, **kw)


@pytest.mark.parametrize("effort", EFFORTS)
def test_labels_supervise_the_answers_with_their_blocks_and_never_the_instruction(tokenizer, effort):
    proc = processor(tokenizer, effort)
    enc = encode(conversation(CONVERSATIONS["system, two turns, earlier reasoning"]), proc, [RED])
    # Every answer keeps its block (preserve_thinking): the earlier one its reasoning, the last an
    # empty block, which is prompt as at inference with thinking off.
    assert spans(proc, enc.input_ids, enc.labels) == [
        "<think>\nAll red.\n</think>\n\nRed.<|im_end|>",
        "Yes.<|im_end|>",
    ]
    text = proc.tokenizer.decode(enc.input_ids)
    head = f"{INSTRUCTION[effort]}\n\nBe brief." if INSTRUCTION[effort] else "Be brief."
    assert text.startswith(f"<|im_start|>system\n{head}<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nYes.<|im_end|>\n")


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("thinking", [None, True, False])
@pytest.mark.parametrize("name", ["one turn, none", "system, none", "blank system, none"])
def test_prompts_equal_the_template_with_the_generation_prompt(tokenizer, effort, thinking, name):
    messages = CONVERSATIONS[name][:-1]
    proc = processor(tokenizer, effort)
    prompt = Predictor(None, proc, FAMILY, thinking).prompt(conversation(messages), [RED])
    kw = {} if effort is None else {"reasoning_effort": effort}
    kw |= {} if thinking is None else {"enable_thinking": thinking}
    assert prompt.input_ids == official(proc, messages, add_generation_prompt=True, **kw)
    opened = "<think>\n\n</think>\n\n" if thinking is False else "<think>\n"
    assert proc.tokenizer.decode(prompt.input_ids).endswith("<|im_start|>assistant\n" + opened)


def test_an_effort_the_template_does_not_take_is_refused_by_name(tokenizer):
    with pytest.raises(
        ValueError, match=r"reasoning effort 'high': Qwen3.8 takes xhigh, medium, low \(default xhigh\)"
    ):
        encode(conversation(CONVERSATIONS["one turn, reasoning"]), processor(tokenizer, "high"), [RED])
    # The template itself refuses it too (QwenLM/Qwen3.8 issue #217).
    with pytest.raises(Exception, match="Unexpected reasoning effort high"):
        official(processor(tokenizer), CONVERSATIONS["one turn, reasoning"], reasoning_effort="high")


def test_the_recipe_setting_is_checked_against_the_generation(tmp_path):
    base = [f"data.train=[{{path: {REPO / 'data/demo/demo.jsonl'}}}]", f"output.dir={tmp_path}"]
    cfg = load_recipe(REPO / "recipes/tiny/qwen3_8_lora.yaml", [*base, "data.reasoning_effort=low"])
    assert cfg.data.reasoning_effort == "low"
    with pytest.raises(ConfigError, match="reasoning_effort"):
        load_recipe(REPO / "recipes/tiny/qwen3_8_lora.yaml", [*base, "data.reasoning_effort=high"])


def test_generations_without_a_reasoning_effort_refuse_it_by_name():
    from qwenvl_ft.models.capabilities import effort_problem

    assert effort_problem(get_family("qwen3_5"), "low", "data.reasoning_effort") == (
        "data.reasoning_effort: low, but Qwen3.5 (qwen3_5) has no reasoning effort (Qwen3.8 has)"
    )
    assert effort_problem(FAMILY, "low", "data.reasoning_effort") is None
    assert effort_problem(get_family("qwen2_5_vl"), None, "data.reasoning_effort") is None
