"""The demo without its page: uploads judged by content, boxes drawn where they are, every model
asked at once with its own history, one model's failure kept to its own column."""

from __future__ import annotations

import pytest
from PIL import Image

from qwenvl_ft.demo.core import COLOURS, DemoModel, Session, UploadRefused, classify_upload, draw_boxes
from qwenvl_ft.infer import Predictor
from tests.family_facts import registered


def test_an_image_is_what_decodes_whatever_its_name(tmp_path):
    disguised = tmp_path / "notes.txt"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(disguised, format="JPEG")
    kind, image = classify_upload(disguised, takes_video=False)
    assert kind == "image" and image.size == (40, 30)


@pytest.mark.parametrize("takes_video", [True, False])
def test_text_and_empty_files_are_refused_by_name(tmp_path, takes_video):
    text = tmp_path / "photo.png"
    text.write_text("this is not a picture")
    with pytest.raises(UploadRefused, match=r"photo\.png: not an image") as e:
        classify_upload(text, takes_video)
    assert str(tmp_path) not in str(e.value)  # the page shows the name, not the server's folders
    assert ("or a video" in str(e.value)) == takes_video
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(UploadRefused, match=r"empty\.jpg"):
        classify_upload(empty, takes_video)


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    with pytest.raises(UploadRefused, match=r"big\.png: too large"):
        classify_upload(big, takes_video=True)


def write_clip(path):
    """An 8-frame 64x48 H.264 clip (PyAV), brightening frame by frame."""
    av = pytest.importorskip("av")
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(8):
            frame = np.full((48, 64, 3), 30 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_a_video_is_taken_only_by_generations_with_video(tmp_path):
    path = write_clip(tmp_path / "clip.mp4")
    assert classify_upload(path, takes_video=True) == ("video", str(path))
    with pytest.raises(UploadRefused, match="take no video"):
        classify_upload(path, takes_video=False)


def test_boxes_are_drawn_at_their_original_pixels_scaled_for_display():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    drawn = draw_boxes(image, [("red square", (100, 50, 200, 100)), (None, (0, 0, 20, 20))])
    # Shown with the longest side 512 (a small image is enlarged): x2.56, by hand.
    assert drawn.size == (512, 256)
    line = max(2, 256 // 150)
    assert drawn.getpixel((256, 200)) == COLOURS[0]  # left edge of the first box, x = 100 * 2.56
    assert drawn.getpixel((400, 200)) == (255, 255, 255)  # inside it
    assert drawn.getpixel((30, 51 - line + 1)) == COLOURS[1]  # bottom edge of the second, y = 20 * 2.56
    assert drawn.getpixel((30, 51 - line - 1)) == (255, 255, 255)  # just above it
    large = draw_boxes(Image.new("RGB", (4000, 1000), (255, 255, 255)), [])
    assert large.size == (1280, 320)


@pytest.fixture(scope="module")
def pair(tiny_model):
    models = []
    for name in ("qwen2_5_vl", "qwen3_5"):
        models.append(DemoModel(name, Predictor.load(tiny_model(name), dtype="fp32", device="cpu")))
    return models


def last(replies_iter):
    return list(replies_iter)[-1]


def test_every_model_answers_with_its_own_history(pair):
    session = Session(pair, max_new_tokens=4)
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    updates = list(session.ask("What colour?", [image], thinking=False))
    replies, seen = updates[-1], len(updates)
    assert seen >= 3 and all(r.done and r.error is None for r in replies)  # streamed, then done
    assert all(r.drawn is not None and r.drawn.size == (512, 384) for r in replies)
    last(session.ask("Sure?", thinking=False))
    for chat in session.chats:
        assert [t.role for t in chat.conversation.turns] == ["user", "assistant", "user", "assistant"]
        assert len(chat.images) == 1
    session.reset()
    assert all(chat.conversation.turns == [] for chat in session.chats)


def test_the_thinking_switch_reaches_thinking_generations_only(pair):
    session = Session(pair, max_new_tokens=6)
    on = last(session.ask("Hi", thinking=True))
    # Thinking on: the prompt opens the think block, so what a random model writes is reasoning
    # until it closes the block (it has no time to in 6 tokens); the other generation has none.
    assert on[0].reasoning == "" and on[1].reasoning and session.chats[1].reasoning
    session.reset()
    off = last(session.ask("Hi", thinking=False))
    assert off[1].reasoning == "" and off[1].text


def test_a_failing_model_fails_in_its_own_column(pair, monkeypatch):
    session = Session(pair, max_new_tokens=3)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(session.models[1].predictor.model, "generate", broken)
    replies = last(session.ask("Hello", thinking=False))
    assert replies[0].error is None and replies[0].text
    assert replies[1].error == "RuntimeError: out of memory"
    assert session.chats[1].conversation.turns == []  # the failed question left no half turn
    assert len(session.chats[0].conversation.turns) == 2


def test_uploads_take_video_only_when_every_model_does(pair, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("x")
    session = Session(pair)
    with pytest.raises(UploadRefused, match="or a video"):
        session.check_uploads([str(text)])
    assert all(name in registered() for name in ("qwen2_5_vl", "qwen3_5"))


@pytest.mark.parametrize("name", registered())
def test_every_generation_answers_an_image_question_on_the_page(tiny_model, name):
    """The page's path on each registered generation (the first one included): its own prompt,
    an answer, the image drawn; a generation without video refuses a video by name."""
    model = DemoModel(name, Predictor.load(tiny_model(name), dtype="fp32", device="cpu"))
    session = Session([model], max_new_tokens=2)
    [reply] = last(session.ask("Where is the red square?", [Image.new("RGB", (80, 60), (200, 30, 30))]))
    assert reply.error is None and reply.done and reply.drawn is not None
    assert [t.role for t in session.chats[0].conversation.turns] == ["user", "assistant"]


def test_a_video_question_reaches_the_model(pair, tmp_path):
    path = write_clip(tmp_path / "clip.mp4")
    session = Session(pair[:1], max_new_tokens=2)  # Qwen2.5-VL takes video
    images, videos = session.check_uploads([str(path)])
    assert images == [] and videos == [str(path)]
    [reply] = last(session.ask("What happens?", images, videos))
    assert reply.error is None and reply.text
    chat = session.chats[0]
    # The video went into the prompt as video pad tokens, as training renders it.
    ids = chat.predictor.prompt(chat.conversation, chat.images, chat.videos).input_ids
    pad = chat.predictor.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert ids.count(pad) == int(chat.videos[0].grid[0] * chat.videos[0].grid[1] * chat.videos[0].grid[2] / 4)
