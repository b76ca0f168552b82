"""Thinking end to end: on the tiny checkpoint of every thinking family of the registry, the
encoder and the prompts equal the checkpoint's own template through `apply_chat_template`, and
predict / chat / eval switch thinking from the command line; families without a thinking mode
refuse `--thinking` by name before loading any weights."""

from __future__ import annotations

import builtins
import json

import pytest
from PIL import Image
from transformers import AutoTokenizer

from qwenvl_ft.cli import main
from qwenvl_ft.data.encode import encode
from qwenvl_ft.data.readers import to_conversation
from qwenvl_ft.infer import Predictor
from qwenvl_ft.models import FAMILIES, get_family

THINKING = [n for n, f in FAMILIES.items() if f.thinking]
RED = Image.new("RGB", (64, 64), (200, 30, 30))
MESSAGES = [
    {"role": "user", "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": "Colour?"}]},
    {"role": "assistant", "reasoning_content": "All red.", "content": "Red."},
    {"role": "user", "content": "Sure?"},
    {"role": "assistant", "content": "<think>Still red.</think>Yes."},
]


def data(tmp_path):
    RED.save(tmp_path / "red.png")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "s1", "messages": MESSAGES}) + "\n")
    return path


def expanded(text: str, family, n: int) -> str:
    return text.replace(family.chat.image_pad, family.chat.image_pad * n)


@pytest.mark.parametrize("name", THINKING)
def test_the_tiny_checkpoint_encodes_as_its_own_template(tiny_model, tmp_path, name):
    path, family = tiny_model(name), get_family(name)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template == family.chat_template
    proc = family.load_processor(str(path))
    conv = to_conversation({"messages": MESSAGES}, "d.jsonl:1", "openai", tmp_path)
    conv.turns[0].segments[0].value = RED
    n = proc.image_tokens(64, 64)
    # Qwen3.8's template reads reasoning from reasoning_content only; our readers (as ms-swift's
    # qwen3_8 template) take the leading <think> block of the content as that field.
    fields = MESSAGES[:3] + [{"role": "assistant", "reasoning_content": "Still red.", "content": "Yes."}]
    official = tok.apply_chat_template(fields if family.reasoning_efforts else MESSAGES, tokenize=False)
    assert (
        encode(conv, proc, [RED]).input_ids
        == tok(expanded(official, family, n), add_special_tokens=False)["input_ids"]
    )
    for thinking in (None, True, False):
        prompt = Predictor(None, proc, family, thinking).prompt(conv.__class__("q", conv.turns[:3]), [RED])
        kw = {} if thinking is None else {"enable_thinking": thinking}
        text = tok.apply_chat_template(MESSAGES[:3], tokenize=False, add_generation_prompt=True, **kw)
        assert prompt.input_ids == tok(expanded(text, family, n), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", THINKING)
@pytest.mark.parametrize("thinking", ["on", "off"])
def test_predict_and_eval_switch_thinking(tiny_model, tmp_path, name, thinking):
    model, preds = str(tiny_model(name)), tmp_path / "p.jsonl"
    args = ["predict", model, str(data(tmp_path)), "--output", str(preds), "--dtype", "fp32"]
    assert main([*args, "--max-new-tokens", "3", "--thinking", thinking]) == 0
    [rec] = [json.loads(line) for line in preds.read_text().splitlines()]
    assert "reasoning" in rec and rec["reference"] == "Yes."
    assert "<think>" not in rec["prediction"] and "</think>" not in rec["prediction"]
    report = tmp_path / "r.json"
    assert main(["eval", model, "--data", str(data(tmp_path)), "--max-new-tokens", "3", "--dtype", "fp32",
                 "--thinking", thinking, "--output", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["vqa"]["n"] == 1


@pytest.mark.parametrize("name", THINKING)
def test_chat_runs_with_thinking_on(tiny_model, monkeypatch, capsys, name):
    lines = iter(["Colour?", "/quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    args = ["chat", str(tiny_model(name)), "--dtype", "fp32", "--max-new-tokens", "3", "--thinking", "on"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # The untrained model writes newlines inside the opened think block: blank reasoning, shown as
    # nothing; the answer's label follows, empty; no think tag reaches the screen.
    assert out.endswith("model> \n") and "think>" not in out


@pytest.mark.parametrize("command", ["predict", "chat", "eval"])
def test_families_without_thinking_refuse_the_switch(tiny_model, tmp_path, capsys, command):
    model = str(tiny_model("qwen2_5_vl"))
    args = {
        "predict": ["predict", model, str(data(tmp_path)), "--output", str(tmp_path / "p.jsonl")],
        "chat": ["chat", model],
        "eval": ["eval", model, "--data", str(data(tmp_path))],
    }[command]
    assert main([*args, "--thinking", "off"]) == 2
    err = capsys.readouterr().err
    assert f"qwenvl-ft {command}: error: thinking off: Qwen2.5-VL (qwen2_5_vl) has no thinking mode" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_eval_of_a_predictions_file_takes_no_thinking_switch(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "a", "prediction": "x", "reference": "x"}) + "\n")
    with pytest.raises(SystemExit, match="--thinking is only for a model directory"):
        main(["eval", str(preds), "--thinking", "on"])
