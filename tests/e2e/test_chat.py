"""`qwenvl-ft chat` and the `Chat` API on a tiny model: history, streaming, boxes back to pixels."""

from __future__ import annotations

import builtins

import pytest
from PIL import Image

from qwenvl_ft.chat import Chat
from qwenvl_ft.cli import main
from qwenvl_ft.data.conversation import Segment, Turn
from qwenvl_ft.infer import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor.load(tiny_model("qwen2_5_vl"), dtype="fp32", device="cpu")


def test_turns_accumulate_and_stream(predictor, tmp_path):
    chat = Chat(predictor, max_new_tokens=5)
    image = Image.new("RGB", (120, 90), (200, 30, 30))
    pieces: list[str] = []
    first = chat.ask("What colour?", images=[image], on_text=pieces.append)
    assert "".join(pieces).startswith(first) and first
    second = chat.ask("Are you sure?")
    assert [t.role for t in chat.conversation.turns] == ["user", "assistant", "user", "assistant"]
    # The second question is asked with the whole history: the first answer is in its prompt.
    prompt = predictor.processor.tokenizer.decode(predictor.prompt(chat.conversation, chat.images).input_ids)
    assert first in prompt and "Are you sure?" in prompt and second
    chat.reset()
    assert chat.conversation.turns == [] and chat.images == []


def test_boxes_of_the_last_answer_in_original_pixels(predictor, tmp_path):
    chat = Chat(predictor)
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    chat.images = [image]
    # Qwen2.5-VL writes pixels of the resized image: 200x100 resizes to 196x112 (multiples of 28),
    # so (98,56)-(196,112) is (100,50)-(200,100) of the original.
    assert predictor.processor.resized_size(100, 200) == (112, 196)
    chat.conversation.turns.append(
        Turn("assistant", [Segment("text", "<|box_start|>(98,56),(196,112)<|box_end|>")])
    )
    assert chat.boxes() == [pytest.approx((100, 50, 200, 100))]
    out = chat.draw_boxes(tmp_path / "boxes.png")
    drawn = Image.open(out).convert("RGB")
    assert drawn.getpixel((150, 50)) == (255, 0, 0) and drawn.getpixel((150, 75)) == (255, 255, 255)


def test_cli_session(tiny_model, tmp_path, monkeypatch, capsys):
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (220, 40, 40)).save(image)
    lines = iter([f"/image {image}", "Describe it.", "/boxes", "/reset", "/quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    args = ["chat", str(tiny_model("qwen2_5_vl")), "--dtype", "fp32", "--max-new-tokens", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "model> " in out and "box(es)" in out
