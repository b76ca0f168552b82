"""The neutral conversation every reader produces and every family encoder consumes.

Readers know no tokenizer; encoders know no file format. Boxes stay in pixels of the original
image here; only the encoder writes them in a generation's convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass
class Segment:
    """One piece of a turn: text, or an image / video given by path, URL or an in-memory PIL image."""

    kind: Literal["text", "image", "video"]
    value: object
    """The text for text segments; a path, URL or PIL.Image for images."""


@dataclass
class Turn:
    role: Role
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Conversation:
    id: str
    """Where the sample came from (file:line or the dataset's id), used in every error message."""
    turns: list[Turn] = field(default_factory=list)
