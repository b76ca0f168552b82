"""`qwenvl-ft demo` for real: the server on a tiny trained run and its base, driven through
gradio_client as a page would drive it (an image question whose answer has a box, multi-turn,
compare mode, reset, bad uploads, a URL given as a file), and the server still answering after."""

from __future__ import annotations

import html
import http.server
import re
import threading

import pytest
from PIL import Image

from qwenvl_ft.models import get_family

gradio_client = pytest.importorskip("gradio_client", reason="the demo needs the `demo` extra (gradio)")


@pytest.fixture
def client(demo_server):
    """A fresh visitor (its own session, so its own conversation)."""
    c = gradio_client.Client(demo_server.url, verbose=False)
    yield c
    c.close()


def ask(client, files, text, thinking="model default"):
    files = [gradio_client.handle_file(str(f)) for f in files]
    return client.predict(files, text, thinking, api_name="/ask")


def texts(chat: list[dict], role: str) -> list[str]:
    return [
        html.unescape(part["text"])
        for m in chat
        if m["role"] == role
        for part in m["content"]
        if "text" in part
    ]


def heldout_image(demo_server, i: int = 0):
    return demo_server.heldout.parent / "img" / f"{i}.png"


def test_an_image_question_gets_a_box_drawn_where_the_answer_puts_it(demo_server, client):
    image = heldout_image(demo_server)
    status, chat_a, chat_b, drawn_a, drawn_b, question, files = ask(
        client, [image], "Where is the blue circle?"
    )
    [answer] = texts(chat_a, "assistant")
    # The trained run answers in its box format: "[x1, y1, x2, y2]" in [0, 1000) of the image.
    m = re.fullmatch(r"\[(\d+), (\d+), (\d+), (\d+)\]", answer)
    assert m, answer
    assert status.startswith("A: 1 box(es)") and question == "" and files is None
    assert texts(chat_a, "user") == ["[0.png]", "Where is the blue circle?"]
    assert texts(chat_b, "user") == texts(chat_a, "user") and texts(chat_b, "assistant")  # compare mode
    # The drawn image: the 96x96 input shown at 512x512, so the box's left edge is at
    # x1 / 1000 * 96 * 512 / 96 = x1 * 0.512 (by hand); its colour is the first box colour.
    drawn = Image.open(drawn_a).convert("RGB")
    assert drawn.size == (512, 512)
    x1, y1, x2, y2 = (int(v) * 0.512 for v in m.groups())
    edge = drawn.getpixel((round(x1) + 1, round((y1 + y2) / 2)))
    assert edge == (230, 25, 75), (edge, m.groups())
    assert Image.open(drawn_b).size == (512, 512)


def test_turns_accumulate_until_reset(demo_server, client):
    ask(client, [heldout_image(demo_server, 1)], "Where is the blue circle?")
    _, chat_a, chat_b, *_ = ask(client, [], "And the red square?")
    assert texts(chat_a, "user") == ["[1.png]", "Where is the blue circle?", "And the red square?"]
    assert len(texts(chat_a, "assistant")) == 2 and len(texts(chat_b, "assistant")) == 2
    # The second question was asked with the whole history: the run's chat holds both turns.
    status, chat_a, chat_b, drawn_a, *_ = client.predict(api_name="/reset")
    assert chat_a == [] and chat_b == [] and drawn_a is None
    _, chat_a, *_ = ask(client, [], "Hello")
    assert texts(chat_a, "user") == ["Hello"]


def test_bad_uploads_are_answered_on_the_page_and_the_server_goes_on(demo_server, client, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"\x89PNG but truncated")
    for bad in (notes, fake):
        status, chat_a, chat_b, *_ = ask(client, [bad], "What is this?")
        assert status.startswith("**Not sent:**") and bad.name in status and "not an image" in status
        assert chat_a == [] and chat_b == []  # nothing was asked
    status, *_ = ask(client, [heldout_image(demo_server)], "")
    assert "type a question" in status
    status, chat_a, *_ = ask(client, [heldout_image(demo_server, 2)], "Where is the blue circle?")
    assert "box(es)" in status and texts(chat_a, "assistant")


def test_a_url_given_as_a_file_is_never_fetched(demo_server, client, caplog):
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    try:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's AppError, whatever its wording
            client.predict(
                [gradio_client.handle_file(url)], "What is this?", "model default", api_name="/ask"
            )
    finally:
        server.shutdown()
    # Refused by the demo itself (gradio's own guard would only refuse this address for being local).
    assert requests == [] and f"refused to fetch {url}" in caplog.text
    status, chat_a, *_ = ask(client, [heldout_image(demo_server, 3)], "Where is the blue circle?")
    assert "box(es)" in status


def test_the_page_offers_the_runs_eval_questions(demo_server):
    config = demo_server.demo.config
    examples = [c for c in config["components"] if c.get("type") == "dataset"]
    assert examples, "no examples on the page"
    samples = examples[0]["props"]["samples"]
    assert len(samples) == 4 and all(s[1].startswith("Where is the") for s in samples)


def test_it_binds_to_this_machine_and_warns_when_told_otherwise(demo_server, caplog):
    from qwenvl_ft.demo.app import warn_if_exposed

    assert demo_server.url.startswith("http://127.0.0.1:")
    assert not warn_if_exposed("127.0.0.1", 7860)
    assert warn_if_exposed("0.0.0.0", 7860)
    assert "anyone who can reach this machine" in caplog.text


def test_each_column_parses_boxes_with_its_own_generation(demo_server):
    # Both columns here are Qwen3-VL; what the page draws is chat.labelled_boxes, which asks the
    # column's own family (tests/unit/models/test_labelled_boxes.py covers every generation).
    assert {m.predictor.family for m in demo_server.models} == {get_family("qwen3_vl")}


def test_the_command_serves_a_lora_run_beside_its_base_quietly(demo_server):
    """`qwenvl-ft demo RUN --compare BASE` in its own process: the LoRA run loads on the base it
    recorded, the page answers, and the terminal shows only our own lines."""
    import os
    import subprocess
    import sys
    import time

    from tests.e2e.conftest import free_port
    from tests.e2e.test_quiet_cli import FOREIGN, MARKERS

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "qwenvl_ft",
        "demo",
        str(demo_server.run),
        "--compare",
        str(demo_server.model),
    ]
    cmd += ["--dtype", "fp32", "--device", "cpu", "--port", str(port), "--max-new-tokens", "32"]
    env = {k: v for k, v in os.environ.items() if k != "QWENVL_FT_VERBOSE"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any(f"qwenvl-ft demo: http://127.0.0.1:{port}/" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, chat_a, *_ = ask(client, [heldout_image(demo_server, 4)], "Where is the blue circle?")
        client.close()
        assert "A: 1 box(es)" in status, (status, chat_a)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    noise = [line for line in out.splitlines() if FOREIGN.match(line) or any(m in line for m in MARKERS)]
    assert not noise, out[-3000:]
