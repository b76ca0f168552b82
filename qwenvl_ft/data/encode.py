"""Render a neutral conversation in a generation's chat format and tokenize it with labels.

The rendering follows the family's `ChatFormat` (ChatML for every generation). Text between
special tokens is tokenized as one run, with offsets, so the ids are exactly those of tokenizing
the whole rendered string, and each token's label is decided by the character it starts at.
By default every assistant turn's content and its closing `<|im_end|>` are supervised; the
role header, the newline after `<|im_end|>`, system and user turns are -100. `original_qwen_vl`
reproduces the original Qwen-VL finetune.py: it also supervises every `<|im_start|>` and every
turn's closing `<|im_end|>` and newline, system and user turns included.

Reasoning (`Turn.reasoning`) is rendered on the generations that declare `thinking`, as their
official template writes it (`ChatFormat.think`): a `<think>\n...\n</think>\n\n` block after the
assistant header, on the turns the recipe's `data.thinking` (the processor's `thinking`) shows it
on; it is supervised with its tags. A shown turn without reasoning gets the template's empty block,
which stays prompt (-100): with thinking off, inference writes it into the prompt. Generations
without a thinking mode train reasoning as plain text opening the answer, exactly as the data wrote
it (`inline`, their default: R1-style `<think>...</think>` answers), or not at all (`drop`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

from ..models.capabilities import thinking_mode_problem
from .conversation import Box, Conversation, Turn
from .readers import DataError
from .special_text import check_data_text, tokenize_escaped

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..models.processor import VLProcessor
    from .clips import VideoClip

IGNORE = -100


@dataclass
class Piece:
    """A rendered piece: plain text, or one special token repeated `repeat` times."""

    text: str
    supervised: bool
    special: bool = False
    repeat: int = 1
    modality: int = 0
    """0 text, 1 image, 2 video: transformers' `mm_token_type_ids` for the mRoPE position rules."""
    literal: tuple[str, ...] = ()
    """Control tokens this text from the data spells, to be tokenized as the plain text they are
    (`data.special_text: escape`, data/special_text.py)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    mm_token_type_ids: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    """Seconds per temporal patch of each video, for the generations that put time in rotary positions."""


def render(
    conv: Conversation,
    processor: VLProcessor,
    images: list[Image.Image],
    supervise: Literal["all_assistant", "last_assistant", "original_qwen_vl"] = "all_assistant",
    videos: list[VideoClip] = (),
    thinking: bool | None = None,
) -> list[Piece]:
    """The conversation as pieces in the family's chat format; `images` and `videos` in order.

    thinking: the template's `enable_thinking` for the system turn of generations with a reasoning
    effort (Qwen3.8 writes its instruction only while thinking is on); None: on when a think block
    shows reasoning (`effort_instruction`)."""
    chat = processor.family.chat
    turns = list(conv.turns)
    last_assistant = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=-1)
    shown = shown_reasoning(conv, processor)
    instruction = effort_instruction(processor, shown, thinking)
    pieces: list[Piece] = []
    frame = supervise == "original_qwen_vl"  # the ChatML frame tokens are targets too
    has_system = bool(turns) and turns[0].role == "system"
    default_system = chat.default_system if instruction is None else instruction or None
    if default_system is not None and not has_system:
        pieces += [
            Piece(chat.im_start, frame, True),
            Piece(f"system\n{default_system}", False),
            Piece(chat.im_end, frame, True),
            Piece("\n", frame),
        ]
    n_image = n_video = 0
    for i, turn in enumerate(turns):
        sup = turn.role == "assistant" and (supervise != "last_assistant" or i == last_assistant)
        where = f"turn {i + 1} ({turn.role})"
        data = partial(data_piece, processor=processor, where=where)
        head = []  # our text before the turn's content: the reasoning effort's at the system turn
        if i == 0 and has_system and instruction is not None:
            text = "".join(str(s.value) for s in turn.segments if s.kind == "text").strip()
            if not text and not instruction:  # the template writes no empty system turn
                continue
            head = [Piece(instruction + ("\n\n" if text else ""), False)] if instruction else []
        pieces += [Piece(chat.im_start, frame, True), Piece(f"{turn.role}\n", False), *head]
        if shown[i] is not None:
            block, shown_sup = chat.think.block(shown[i]), sup and bool(shown[i])
            head, _, tail = block.partition(shown[i]) if shown[i] else (block, "", "")
            pieces += [Piece(head, shown_sup), data(shown[i], shown_sup, "reasoning"), Piece(tail, shown_sup)]
        content_start = len(pieces)
        if turn.reasoning and not processor.family.thinking and processor.thinking != "drop":
            pieces.append(data(inline_reasoning(turn), sup, "reasoning"))
        for seg in turn.segments:
            if seg.kind == "text":
                pieces.append(data(str(seg.value), sup))
            elif seg.kind == "image":
                image = images[n_image]
                n_image += 1
                # The image's own text ("Picture N: ", a newline) on generations that write one:
                # as the source wrote it when it did (first-generation data), else the generation's.
                before, after = (
                    seg.around or (chat.image_prefix.format(n=n_image), chat.image_suffix)
                    if chat.image_prefix
                    else ("", "")
                )
                if before:
                    pieces.append(data(before, sup, "image text"))
                n = processor.image_tokens(image.height, image.width)
                pieces += [
                    Piece(chat.image_open, False, True),
                    Piece(chat.image_pad, False, True, n, modality=1),
                    Piece(chat.image_close, False, True),
                ]
                if after:
                    pieces.append(Piece(after, sup))
            elif seg.kind == "ref":  # the family's ref markup around the data's text
                before, _, after = processor.family.boxes.ref.partition("{}")
                pieces += [Piece(before, sup), data(str(seg.value), sup, "referring text"), Piece(after, sup)]
            elif seg.kind == "box":
                pieces.append(Piece(box_text(seg.value, images, processor, conv.id), sup))
            elif seg.kind == "video":
                clip = videos[n_video]
                n_video += 1
                for span in processor.family.video_spans(clip.grid, clip.timestamps):
                    if isinstance(span, str):
                        pieces.append(Piece(span, False))
                    else:
                        token, repeat = span
                        modality = 2 if token == chat.video_pad else 0
                        pieces.append(Piece(token, False, True, repeat, modality=modality))
            else:
                raise ValueError(f"{conv.id}: unknown segment kind {seg.kind!r}")
        if chat.trim_content:
            _trim(pieces, content_start)
        pieces += [Piece(chat.im_end, sup or frame, True), Piece("\n", frame)]
    return pieces


def effort_instruction(processor: VLProcessor, shown: list[str | None], thinking: bool | None) -> str | None:
    """The reasoning-effort text opening the system turn, "" for none; None for generations without a
    reasoning effort (their system turn is the data's or the template's default).

    The template writes it only while thinking is on. Training renders each sample as inference asks
    the mode that produces it (README 'Thinking at inference'): a sample whose think blocks show
    reasoning with thinking on, one whose blocks are all empty as with `enable_thinking=false`."""
    family = processor.family
    if not family.reasoning_efforts:
        return None
    if thinking is None:
        thinking = any(shown)
    return family.effort_instruction(processor.reasoning_effort) if thinking else ""


def data_piece(
    text: str, supervised: bool, what: str = "text", *, processor: VLProcessor, where: str
) -> Piece:
    """Text the data wrote (not our markup): refused, or escaped, when it spells a control token."""
    return Piece(text, supervised, literal=check_data_text(text, processor, f"{where} {what}"))


def inline_reasoning(turn: Turn) -> str:
    """The reasoning as plain text opening the answer (`data.thinking: inline`, the default on
    generations without a thinking mode): as the data wrote it, or in a think block when it came as
    a `reasoning_content` field."""
    return turn.reasoning_verbatim or f"<think>\n{turn.reasoning.strip()}\n</think>\n\n"


def shown_reasoning(conv: Conversation, processor: VLProcessor) -> list[str | None]:
    """Per turn, the reasoning its think block shows ("" for the empty block), or None for no block:
    the family's official template as the recipe's `data.thinking` (`processor.thinking`) adjusts it.

    Raises DataError when the conversation carries reasoning that this recipe cannot render.
    """
    family, mode, turns = processor.family, processor.thinking, conv.turns
    reasoning = [(t.reasoning or "").strip() for t in turns]
    problem = thinking_mode_problem(family, mode)
    if problem:
        raise DataError(problem)
    if not family.thinking:  # no think blocks; `inline` reasoning is text of the answer (render)
        return [None] * len(turns)
    history = family.chat.think.history if mode in (None, "template", "drop") else mode
    # The template's last query is the last user turn: the assistant turns after it show reasoning.
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
    return [
        ("" if mode == "drop" else reasoning[i])
        if t.role == "assistant" and (history == "keep" or i > last_user)
        else None
        for i, t in enumerate(turns)
    ]


def _trim(pieces: list[Piece], start: int) -> None:
    """Strip whitespace around the content pieces[start:] as the template's `|trim` does on the text."""
    for step in (1, -1):
        ends = range(start, len(pieces)) if step == 1 else range(len(pieces) - 1, start - 1, -1)
        for j in ends:
            if pieces[j].special:
                break
            pieces[j].text = pieces[j].text.lstrip() if step == 1 else pieces[j].text.rstrip()
            if pieces[j].text:
                break


def box_text(box: Box, images: list[Image.Image], processor: VLProcessor, where: str) -> str:
    """A box in the family's convention; sources in [0, 1000) go through pixels of the original image."""
    if not 0 <= box.image < len(images):
        raise ValueError(
            f"{where}: a box refers to image {box.image + 1} but the sample has {len(images)} image(s)"
        )
    image = images[box.image]
    size = (image.width, image.height)  # the data check passes sizes, not decoded images
    resized = processor.resized_size(image.height, image.width)[::-1]
    return processor.family.format_box(box.pixels(size), size, resized)


def tokenize(pieces: list[Piece], tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Token ids, labels and modality types for rendered pieces (labelling rule: module docstring).

    Runs go to a fast tokenizer's Rust backend directly (the same ids and offsets as its __call__,
    whose Python overhead per run was a fifth of the data check's time); a run with escaped
    control tokens through `tokenize_escaped`."""
    parts: list[Piece | list[Piece]] = []  # special pieces, and runs of text pieces between them
    for p in pieces:
        if p.special:
            parts.append(p)
        elif p.text:
            if parts and isinstance(parts[-1], list):
                parts[-1].append(p)
            else:
                parts.append([p])
    runs = [part for part in parts if isinstance(part, list)]
    texts = ["".join(p.text for p in run) for run in runs]
    escaped = [_escaped(run) for run in runs]
    plain = [k for k, e in enumerate(escaped) if not e]
    tokens: dict[int, list[tuple[int, int]]] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer of a fast one
    if backend is not None and getattr(backend, "encode_special_tokens", False):
        backend.encode_special_tokens = False  # as __call__ sets it: a split_special_tokens call leaves it on
    for k in plain:
        if backend is not None:  # what the tokenizer's __call__ runs, without its per-call Python cost
            enc = backend.encode(texts[k], add_special_tokens=False)
            tokens[k] = [(t, start) for t, (start, _) in zip(enc.ids, enc.offsets, strict=True)]
        else:
            enc = tokenizer(texts[k], add_special_tokens=False, return_offsets_mapping=True)
            tokens[k] = [
                (t, start) for t, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
            ]
    for k, spans in enumerate(escaped):
        if spans:
            tokens[k] = tokenize_escaped(texts[k], spans, tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    types: list[int] = []
    k = 0
    for part in parts:
        if isinstance(part, Piece):
            tid = tokenizer.convert_tokens_to_ids(part.text)
            ids.extend([tid] * part.repeat)
            labels.extend([tid if part.supervised else IGNORE] * part.repeat)
            types.extend([part.modality] * part.repeat)
            continue
        # Which piece each character belongs to, so a token is labelled by where it starts.
        owner = [j for j, p in enumerate(part) for _ in p.text]
        for tid, start in tokens[k]:
            ids.append(tid)
            labels.append(tid if part[owner[min(start, len(owner) - 1)]].supervised else IGNORE)
            types.append(0)
        k += 1
    return ids, labels, types


def _escaped(run: list[Piece]) -> list[tuple[int, int]]:
    """Character spans, in the run's joined text, of the control tokens its pieces spell as text."""
    spans, at = [], 0
    for p in run:
        spans += [
            (at + m.start(), at + m.end()) for t in p.literal for m in re.finditer(re.escape(t), p.text)
        ]
        at += len(p.text)
    return spans


def encode(
    conv: Conversation,
    processor: VLProcessor,
    images: list[Image.Image],
    supervise: Literal["all_assistant", "last_assistant", "original_qwen_vl"] = "all_assistant",
    videos: list[VideoClip] = (),
) -> Encoded:
    """Token ids, labels and pixel tensors for one conversation with its loaded images and videos."""
    import torch

    ids, labels, types = tokenize(render(conv, processor, images, supervise, videos), processor.tokenizer)
    pixels = processor.images(images) if images else {}
    enc = Encoded(ids, labels, types, pixels.get("pixel_values"), pixels.get("image_grid_thw"))
    if videos:
        enc.pixel_values_videos = torch.cat([c.pixel_values for c in videos])
        enc.video_grid_thw = torch.tensor([c.grid for c in videos])
        if processor.family.video.timestamps == "rope":
            enc.second_per_grid_ts = torch.tensor([c.seconds_per_grid for c in videos])
    return enc
