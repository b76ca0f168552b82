"""predict / chat / eval with thinking: the prompt's generation prompt and the stop tokens come from
the family, `thinking` on / off is refused by name where a family has none, and the reasoning is
split off before boxes are parsed or answers scored (kept apart in predict's records and in chat).

The model is a scripted stand-in that answers a fixed text after the prompt it is given, so what
is tested is the toolkit around generation, on every thinking family of the registry (the Qwen3.5
template double of test_thinking.py while none is registered).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest
import torch
from PIL import Image
from test_thinking import THINKING, processor_for

from qwenvl_ft.chat import Chat
from qwenvl_ft.cli.predict_cmd import add_thinking_argument
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.eval.report import score
from qwenvl_ft.infer import Answer, Predictor
from qwenvl_ft.models import FAMILIES, get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.tokenizer import build_tokenizer
from qwenvl_ft.predict import predict


class ScriptedModel(torch.nn.Module):
    """`generate` returns the prompt followed by `script`'s tokens, and records its keyword arguments."""

    def __init__(self, tokenizer, script: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script = tokenizer(script, add_special_tokens=False)["input_ids"]
        self.calls: list[dict] = []

    def generate(self, input_ids, max_new_tokens, streamer=None, **kw):
        self.calls.append({"input_ids": input_ids, **kw})
        new = torch.tensor([self.script[:max_new_tokens]] * len(input_ids))
        if streamer is not None:
            streamer.put(input_ids)
            for t in new[0]:
                streamer.put(t[None])
            streamer.end()
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture(params=THINKING, ids=lambda f: f.name)
def family(request, monkeypatch):
    monkeypatch.setitem(FAMILIES, request.param.name, request.param)  # eval reads it back by name
    return request.param


def question(text: str = "Where is the cat?", image: Image.Image | None = None) -> Conversation:
    segs = [Segment("image", image)] if image is not None else []
    return Conversation("q", [Turn("user", [*segs, Segment("text", text)])])


def predictor(family, script: str, thinking: bool | None = None) -> Predictor:
    proc = processor_for(family)
    return Predictor(ScriptedModel(proc.tokenizer, script), proc, family, thinking)


def test_reasoning_is_split_from_the_answer_and_generation_stops_at_the_familys_tokens(family):
    p = predictor(family, "The cat sits left.\n</think>\n\nOn the left.<|im_end|>ignored")
    [answer] = p.generate_answers([(question(), [])])
    assert answer == Answer("On the left.", "The cat sits left.")
    assert p.generate([(question(), [])]) == ["On the left."]
    tok = p.processor.tokenizer
    call = p.model.calls[0]
    assert call["eos_token_id"] == tok.convert_tokens_to_ids(list(family.chat.stop_tokens))
    # Thinking is the checkpoint's default here: the prompt ends inside an open think block.
    assert tok.decode(call["input_ids"][0]).endswith("<|im_start|>assistant\n<think>\n")


def test_thinking_off_prompts_an_empty_block_and_answers_have_no_reasoning(family):
    p = predictor(family, "On the left.<|im_end|>", thinking=False)
    assert p.generate_answers([(question(), [])]) == [Answer("On the left.", None)]
    prompt = p.processor.tokenizer.decode(p.model.calls[0]["input_ids"][0])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_reasoning_cut_by_the_token_budget_leaves_no_answer(family):
    p = predictor(family, "Still thinking about")
    assert p.generate_answers([(question(), [])]) == [Answer("", "Still thinking about")]


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if not f.thinking and f.supported])
def test_families_without_thinking_refuse_the_switch_by_name(name):
    family = get_family(name)
    for on in (True, False):
        with pytest.raises(
            ValueError, match=rf"thinking {'on' if on else 'off'}: .*\({name}\) has no thinking mode"
        ):
            Predictor(None, None, family, thinking=on)
    proc = VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template))
    plain = Predictor(ScriptedModel(proc.tokenizer, "<think>x</think>A<|im_end|>"), proc, family)
    # A family that does not think has no reasoning to split: the text is its answer.
    assert plain.generate_answers([(question(), [])]) == [Answer("<think>x</think>A", None)]


def test_thinking_argument_reads_on_and_off():
    parser = argparse.ArgumentParser()
    add_thinking_argument(parser)
    assert [parser.parse_args(a).thinking for a in ([], ["--thinking", "on"], ["--thinking", "off"])] == [
        None,
        True,
        False,
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["--thinking", "maybe"])


def test_predict_records_the_reasoning_apart(family, tmp_path):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    line = {
        "id": "s1",
        "messages": [
            {"role": "user", "content": "<image>What colour?"},
            {"role": "assistant", "reasoning_content": "Look.", "content": "Red."},
        ],
        "images": ["red.png"],
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(line) + "\n")
    p = predictor(family, "All pixels are red.\n</think>\n\nRed.<|im_end|>")
    out = predict(p, tmp_path / "d.jsonl", tmp_path / "p.jsonl", progress=False)
    [rec] = [json.loads(x) for x in out.read_text().splitlines()]
    assert (rec["prediction"], rec["reasoning"], rec["reference"]) == ("Red.", "All pixels are red.", "Red.")
    assert score([rec])["vqa"]["accuracy"] == 1.0


def test_eval_never_scores_reasoning(family):
    """Boxes and answers are read after the think block, also in a file whose predictions kept it."""
    rec = {
        "id": "g",
        "family": family.name,
        "prediction": "<think>\nMaybe [0, 0, 999, 999]?\n</think>\n\n[100, 200, 300, 400]",
        "reference": "",
        "reference_boxes": [[10.0, 20.0, 30.0, 40.0]],
        "image_sizes": [[100, 100]],
        "resized_sizes": [[96, 96]],
    }
    assert family.boxes.coords == "norm1000"  # [100, 200, 300, 400] of 100x100 is (10, 20, 30, 40)
    assert score([rec])["grounding"]["acc@0.5"] == 1.0
    text = {"id": "t", "family": family.name, "prediction": "<think>no</think>yes", "reference": "yes"}
    assert score([text])["vqa"]["accuracy"] == 1.0


def test_chat_keeps_reasoning_apart_and_streams_it_separately(family):
    p = predictor(family, "Red everywhere.\n</think>\n\n[0, 0, 500, 500]<|im_end|>")
    chat = Chat(p)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    reasoning, text = [], []
    answer = chat.ask("Where?", images=[image], on_text=text.append, on_reasoning=reasoning.append)
    assert (answer, chat.reasoning) == ("[0, 0, 500, 500]", "Red everywhere.")
    assert ("".join(reasoning), "".join(text)) == ("Red everywhere.", "[0, 0, 500, 500]")
    assert chat.conversation.turns[-1].reasoning == "Red everywhere."
    assert chat.boxes() == [pytest.approx((0, 0, 32, 32))]
    # The next question renders the history as the template does: the earlier reasoning dropped.
    chat.ask("Sure?")
    prompt = p.processor.tokenizer.decode(p.model.calls[-1]["input_ids"][0])
    assert "Red everywhere." not in prompt and prompt.count("[0, 0, 500, 500]") == 1


def test_chat_history_renders_as_the_template_with_the_processors_thinking(family):
    """`keep` (a processor set from a recipe) shows earlier reasoning in the prompt too."""
    p = predictor(family, "R\n</think>\n\nA<|im_end|>")
    p.processor = replace(p.processor, thinking="keep")
    chat = Chat(p)
    chat.ask("One?")
    chat.ask("Two?")
    prompt = p.processor.tokenizer.decode(p.model.calls[-1]["input_ids"][0])
    assert "<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>" in prompt
