"""Prompts: a conversation up to its last user turn, rendered exactly as training renders it, opened
for the answer with the family's generation prompt.

Inference (`infer.Predictor`), GRPO's rollouts and its prompt check all encode prompts here, so
that what a model is asked is what it learned: the same chat format, image tokens and box
convention, and on thinking generations the think block opened (thinking on) or an empty one
written (off), as the official template's `add_generation_prompt` writes it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .conversation import Conversation
from .encode import Encoded, Piece, encode, render, tokenize

if TYPE_CHECKING:
    from ..models.processor import VLProcessor
    from .clips import VideoClip


def split_reference(conv: Conversation) -> tuple[Conversation, Conversation]:
    """(prompt: the turns before the last assistant turn, reference: that turn alone)."""
    last = max((i for i, t in enumerate(conv.turns) if t.role == "assistant"), default=None)
    if last is None:
        raise ValueError(f"{conv.id}: no assistant turn to use as the reference")
    return Conversation(conv.id, conv.turns[:last], conv.source_id), Conversation(conv.id, [conv.turns[last]])


def prompt_pieces(
    conv: Conversation, processor: VLProcessor, images: list, videos: list = (), thinking: bool | None = None
) -> list[Piece]:
    """The conversation (ending with a user turn) and the generation prompt, as rendered pieces.

    images: decoded images, or sizes alone (`check.Size`) where only the token count matters."""
    family = processor.family
    # The template's default (None) thinks: its system turn is written as with thinking on.
    return render(conv, processor, images, videos=videos, thinking=thinking is not False) + [
        Piece(family.chat.im_start, False, True),
        Piece(family.generation_prompt(thinking), False),
    ]


def prompt_length(
    conv: Conversation, processor: VLProcessor, images: list, videos: list = (), thinking: bool | None = None
) -> int:
    """Tokens of the prompt, from image sizes and planned clips alone (GRPO's prompt check)."""
    return len(tokenize(prompt_pieces(conv, processor, images, videos, thinking), processor.tokenizer)[0])


def encode_prompt(
    conv: Conversation,
    processor: VLProcessor,
    images: list,
    videos: list[VideoClip] = (),
    thinking: bool | None = None,
) -> Encoded:
    """The prompt as model input: its ids, and the pixel tensors exactly as training builds them.

    videos: loaded clips (`data.clips.load_clip`), in the conversation's order."""
    ids, labels, types = tokenize(
        prompt_pieces(conv, processor, images, videos, thinking), processor.tokenizer
    )
    enc = encode(Conversation(conv.id), processor, images, videos=videos)  # the media alone
    return dataclasses.replace(enc, input_ids=ids, labels=labels, mm_token_type_ids=types)
