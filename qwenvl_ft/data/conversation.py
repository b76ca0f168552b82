"""The neutral conversation every reader produces and every family encoder consumes.

Readers know no tokenizer; encoders know no file format. Boxes stay in pixels of the original
image here; only the encoder writes them in a generation's convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Box:
    """A box on one of the conversation's images, in pixels of the original image unless `normalized`."""

    x1: float
    y1: float
    x2: float
    y2: float
    image: int = 0
    """Index of the image (in conversation order) the box lies on."""
    normalized: bool = False
    """True when the source already wrote it in [0, 1000) (Qwen-VL data); False: pixels."""

    def pixels(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) in pixels of its (width, height) image, whichever way it was written."""
        if not self.normalized:
            return (self.x1, self.y1, self.x2, self.y2)
        w, h = size
        return (self.x1 * w / 1000, self.y1 * h / 1000, self.x2 * w / 1000, self.y2 * h / 1000)


@dataclass
class Segment:
    """One piece of a turn.

    text: `value` is the text. image / video: a path, URL or in-memory PIL image.
    ref: a referring expression (`value` is its text), written in the family's ref style.
    box: `value` is a `Box`, written in the family's box convention.
    """

    kind: Literal["text", "image", "video", "ref", "box"]
    value: object
    around: tuple[str, str] | None = field(default=None, compare=False)
    """An image's own text before and after it as the source wrote it (first-generation Qwen-VL data:
    "Picture 1: " or "Picture 1:" or nothing, and a newline or not), written as it is by a generation
    that introduces images with such text; None: that generation's own ("Picture N: ", newline)."""


@dataclass
class Turn:
    role: Role
    segments: list[Segment] = field(default_factory=list)
    reasoning: str | None = None
    """An assistant turn's reasoning (a `reasoning_content` field or a leading `<think>...</think>`),
    kept apart from its answer: the recipe's `data.thinking` decides whether it is rendered."""
    reasoning_verbatim: str | None = None
    """The text the reasoning was cut from, exactly as the data wrote it (`<think>...</think>` and the
    newlines after it), so `data.thinking: inline` trains it as written; None for reasoning_content."""


@dataclass
class Conversation:
    id: str
    """Where the sample came from (file:line or the dataset's id), used in every error message."""
    turns: list[Turn] = field(default_factory=list)
    source_id: str | None = None
    """The sample's own `id` field, when the dataset has one."""
