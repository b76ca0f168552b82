"""Multi-turn chat with images over a `Predictor`: the Python API behind `qwenvl-ft chat`.

    chat = Chat(Predictor.load("runs/my-run"))
    chat.ask("Where is the red square?", images=["photo.png"])   # streams to `on_text` if given
    chat.boxes()            # boxes of the last answer, in pixels of the original image
    chat.draw_boxes("out.png")

Turns accumulate as a `Conversation`, so every question is asked with the whole history, in the
same rendering training uses (the first generation's `Picture N:` numbering included). On
thinking generations an answer's reasoning is kept apart (`chat.reasoning`, streamed to
`on_reasoning`): the history holds it as the turn's reasoning, and boxes come from the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from .data.clips import VideoClip, load_clip, plan_clip
from .data.conversation import Conversation, Segment, Turn
from .data.images import load_image
from .infer import Answer, Predictor

Box = tuple[float, float, float, float]


class Chat:
    def __init__(self, predictor: Predictor, system: str | None = None, max_new_tokens: int = 512):
        self.predictor, self.system, self.max_new_tokens = predictor, system, max_new_tokens
        # What a person types (and the model's own answers in the history) is text: `<|im_end|>` typed
        # in a question must not end the turn (data/special_text.py).
        predictor.processor.special_text = "escape"
        self.reset()

    def reset(self) -> None:
        self.conversation = Conversation(
            "chat", [Turn("system", [Segment("text", self.system)])] if self.system else []
        )
        self.images: list[Image.Image] = []
        self.videos: list[VideoClip] = []
        self.reasoning: str | None = None
        """The last answer's reasoning (None: it gave none)."""

    def ask(
        self,
        text: str,
        images: list[str | Path | Image.Image] = (),
        on_text: Callable[[str], None] | None = None,
        on_reasoning: Callable[[str], None] | None = None,
        videos: list[str | Path] = (),
    ) -> str:
        """Add a user turn (images, then videos, then the text), generate, keep the answer in the history.

        on_text / on_reasoning receive the answer / its reasoning as they decode. Videos (files or
        folders of frames) are sampled and sized by the generation's video rules; a generation
        without video input refuses them (VideoError)."""
        new = [im if isinstance(im, Image.Image) else load_image(str(im)) for im in images]
        clips = [
            load_clip(plan_clip(str(v), self.predictor.processor), self.predictor.processor) for v in videos
        ]
        segments = [Segment("image", im) for im in new] + [Segment("video", str(v)) for v in videos]
        self.conversation.turns.append(Turn("user", [*segments, Segment("text", text)]))
        self.images += new
        self.videos += clips
        try:
            answer = self._generate(on_text, on_reasoning)
        except BaseException:
            self.conversation.turns.pop()  # a failed question leaves the history as it was
            del self.images[len(self.images) - len(new) :]
            del self.videos[len(self.videos) - len(clips) :]
            raise
        self.reasoning = answer.reasoning
        self.conversation.turns.append(Turn("assistant", [Segment("text", answer.text)], answer.reasoning))
        return answer.text

    def _generate(
        self, on_text: Callable[[str], None] | None, on_reasoning: Callable[[str], None] | None
    ) -> Answer:
        sample = [(self.conversation, self.images, self.videos)]
        if on_text is None and on_reasoning is None:
            return self.predictor.generate_answers(sample, max_new_tokens=self.max_new_tokens)[0]
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.predictor.processor.tokenizer, skip_prompt=True)
        result: list[Answer] = []
        failed: list[BaseException] = []

        def work() -> None:
            try:
                result.append(
                    self.predictor.generate_answers(
                        sample, max_new_tokens=self.max_new_tokens, streamer=streamer
                    )[0]
                )
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                failed.append(e)
                streamer.end()  # else the loop below waits for text that never comes

        worker = threading.Thread(target=work)
        worker.start()
        stream = _Split(self.predictor, on_text, on_reasoning)
        for piece in streamer:  # pieces as they decode; the final answer comes from generate itself
            stream(piece)
        worker.join()
        if failed:
            raise failed[0]
        return result[0]

    def boxes(self) -> list[Box]:
        """Boxes written in the last answer, in pixels of the last image (the generation's convention)."""
        return [box for _, box in self.labelled_boxes()]

    def labelled_boxes(self) -> list[tuple[str | None, Box]]:
        """The last answer's boxes with the referring text each answers (None: none), in pixels of
        the last image."""
        answers = [t for t in self.conversation.turns if t.role == "assistant"]
        if not answers or not self.images:
            return []
        image = self.images[-1]
        resized = self.predictor.processor.resized_size(image.height, image.width)[::-1]
        return self.predictor.family.labelled_boxes(str(answers[-1].segments[0].value), image.size, resized)

    def draw_boxes(self, out: str | Path) -> Path:
        """The last image with the last answer's boxes drawn on it, saved as a PNG."""
        if not self.images:
            raise ValueError("no image in this chat to draw on")
        image = self.images[-1].copy()
        draw = ImageDraw.Draw(image)
        for box in self.boxes():
            draw.rectangle(box, outline=(255, 0, 0), width=max(1, min(image.size) // 150))
        out = Path(out)
        image.save(out)
        return out


class _Split:
    """Streamed text to the reasoning and answer callbacks, split as the predictor splits the whole."""

    def __init__(self, predictor: Predictor, on_text, on_reasoning):
        self.predictor, self.on_text, self.on_reasoning = predictor, on_text, on_reasoning
        self.text, self.sent = "", {"reasoning": 0, "text": 0}
        self.stops = predictor.family.chat.stop_tokens

    def __call__(self, piece: str) -> None:
        self.text += piece
        # The stop token arrives as text too; nothing after it belongs to the answer.
        cut = min([i for i in (self.text.find(t) for t in self.stops) if i >= 0], default=len(self.text))
        answer = self.predictor.split(self.text[:cut])
        for kind, value, callback in (
            ("reasoning", answer.reasoning or "", self.on_reasoning),
            ("text", answer.text, self.on_text),
        ):
            if len(value) > self.sent[kind]:
                if callback is not None:
                    callback(value[self.sent[kind] :])
                self.sent[kind] = len(value)
