"""Preference pairs for DPO: read, check and encode a prompt with a chosen and a rejected answer.

Two layouts, detected per record (any record with a `chosen` or `rejected` key is a pair):

- ours: a prompt conversation in any SFT format (`messages`, `conversations`, openai content
  lists) ending with a user turn, and the two answers as the assistant turn that would follow:
      {"messages": [{"role": "user", "content": "<image>Where is the red circle?"}],
       "images": ["img/0.png"],
       "chosen": {"content": "<bbox>", "objects": {"bbox": [[10, 10, 40, 40]]}},
       "rejected": "It is in the top right corner."}
  An answer is a string (the assistant message's text in the record's format), or in the
  `messages` / openai formats a message object without its role, whose `objects` extend the
  record's for that answer only (so each answer can carry its own boxes in pixels).
- TRL's conversational preference layout: `chosen` and `rejected` are message lists, with the
  prompt in `prompt` or as their shared leading messages; images in `images`, their places marked
  by `{"type": "image"}` content parts:
      {"images": ["img/0.png"],
       "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}],
       "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "..."}]}],
       "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "..."}]}]}

Either way a pair becomes two neutral conversations with the same prompt turns, read by the SFT
readers (readers.py), so boxes, images and reasoning mean exactly what they mean in SFT data.

The pair check (`PairRules`, `check_pair_specs`) runs the SFT sample check on both conversations (roles,
images readable, boxes on their image, answers not empty) and adds: both answers present and
different, the prompt ending with a user turn, answers without images or videos, and the token
budget, prompt + the longer answer <= `data.max_length` (longer pairs are dropped; they are never
truncated). Problems are reported by file:line as in the SFT check.

Encoding (`encode_pair`): images are loaded, resized and turned into pixel values once per pair, and
the prompt's tokens are kept once; the answers are tokenized after it in the family's chat format.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .check import check_sample
from .checking import CheckReport, Outcome, Problem, check_datasets, check_split, error_message
from .clips import load_clip, plan_clip
from .conversation import Conversation
from .encode import IGNORE, render, shown_reasoning, tokenize
from .images import load_for
from .plan import PAIR_ROW, PairItem, Plan, row  # noqa: F401  (PairItem: where it was)
from .readers import DataError, detect_format, to_conversation
from .sources import Source

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch

    from ..config import DataConfig, DatasetSpec
    from ..models.processor import VLProcessor


@dataclass
class Pair:
    id: str
    chosen: Conversation
    rejected: Conversation
    """Both hold the same prompt turns, then their answer as the last (assistant) turn."""


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    prompt_types: list[int]
    """mm_token_type_ids of the prompt (the answers are text only)."""
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    media: dict[str, torch.Tensor] = field(default_factory=dict)
    """pixel_values / image_grid_thw / pixel_values_videos / video_grid_thw / second_per_grid_ts, once."""


def is_pair(record: Any) -> bool:
    return isinstance(record, dict) and ("chosen" in record or "rejected" in record)


def to_pair(record: dict[str, Any], where: str, fmt: str, base) -> Pair:
    """One record of either layout -> Pair; any problem is a DataError naming `where` (and the id)."""
    sample_id = f"{where} (id {record['id']})" if isinstance(record, dict) and "id" in record else where
    if not isinstance(record, dict):
        raise DataError(f"a pair must be a JSON object, got {type(record).__name__}", where)
    missing = [k for k in ("chosen", "rejected") if record.get(k) in (None, "", [])]
    if missing:
        raise DataError(
            f"a pair needs both 'chosen' and 'rejected': {' and '.join(missing)} missing", sample_id
        )
    try:
        if isinstance(record["chosen"], list) or isinstance(record["rejected"], list):
            full = _trl_records(record)
        else:
            full = _our_records(record, fmt)
    except DataError as e:
        raise DataError(e.what, sample_id) from None
    except Exception as e:  # a shape the layouts did not foresee is a malformed pair, not a crash
        raise DataError(f"malformed pair ({type(e).__name__}: {e})", sample_id) from None
    chosen, rejected = (to_conversation(r, where, fmt, base) for r in full)
    if chosen.turns[:-1] != rejected.turns[:-1]:
        raise DataError(
            "chosen and rejected do not share the same prompt (the messages before the answer)", chosen.id
        )
    if not chosen.turns[:-1] or chosen.turns[-2].role != "user":
        raise DataError(
            "the prompt must end with a user turn (the answers are the assistant turn after it)", chosen.id
        )
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv.turns[-1].role != "assistant":
            raise DataError(
                f"the {name} answer must be an assistant message, got {conv.turns[-1].role}", conv.id
            )
        if any(s.kind in ("image", "video") for s in conv.turns[-1].segments):
            raise DataError(f"the {name} answer holds an image or video: media belong in the prompt", conv.id)
    if chosen.turns[-1] == rejected.turns[-1]:
        raise DataError("chosen and rejected are the same answer: the pair prefers nothing", chosen.id)
    return Pair(chosen.id, chosen, rejected)


def _our_records(record: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """Ours: the prompt record with each answer appended as its assistant turn."""
    prompt = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    fmt = detect_format(prompt) if fmt == "auto" else fmt
    out = []
    for name in ("chosen", "rejected"):
        answer, full = record[name], copy.deepcopy(prompt)
        if fmt in ("qwen_vl", "llava"):
            if not isinstance(answer, str):
                raise DataError(f"'{name}' must be a string in the {fmt} format, got {type(answer).__name__}")
            full["conversations"] = [*full["conversations"], {"from": "assistant", "value": answer}]
        else:
            message = {"content": answer} if isinstance(answer, (str, list)) else dict(answer)
            if not isinstance(message, dict) or "content" not in message:
                raise DataError(f"'{name}' must be a string or a message object with 'content'")
            extra = message.pop("objects", None)
            if extra:  # this answer's boxes: after the prompt's, for this answer only
                objects = dict(full.get("objects") or {})
                for key, values in extra.items():
                    objects[key] = [*objects.get(key, []), *values] if isinstance(values, list) else values
                full["objects"] = objects
            full["messages"] = [*full["messages"], {"role": "assistant", **message}]
        out.append(full)
    return out


def _trl_records(record: dict[str, Any]) -> list[dict[str, Any]]:
    """TRL's layout: prompt (explicit or the shared leading messages) + each answer's messages."""
    rest = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected")}
    out = []
    for name in ("chosen", "rejected"):
        if not isinstance(record[name], list):
            raise DataError(
                f"'{name}' must be a message list like the other answer, got {type(record[name]).__name__}"
            )
        prompt = record.get("prompt") or []
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        messages = copy.deepcopy([*prompt, *record[name]])
        full = dict(rest, messages=messages)
        images = list(rest.get("images") or [])
        if _fill_image_parts(messages, images):  # content parts now carry the images themselves
            full.pop("images", None)
        out.append(full)
    return out


def _fill_image_parts(messages: list[dict[str, Any]], images: list[Any]) -> bool:
    """Give each bare `{"type": "image"}` part the next of `images`; True when any was filled."""
    filled = 0
    for msg in messages:
        content = msg.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image" and not part.get("image"):
                if filled >= len(images):
                    raise DataError(f"more image parts than the {len(images)} entries in 'images'")
                part["image"] = images[filled]
                filled += 1
    if filled and filled != len(images):
        raise DataError(f"{filled} image part(s) but {len(images)} entries in 'images'")
    return filled > 0


class PairSource(Source):
    """A dataset file of pairs, by index (Source's file handling, `to_pair` instead of the SFT reader)."""

    def pair(self, i: int) -> Pair:
        record, where = self.record(i)
        return to_pair(record, where, self.spec.format, self.base_of(i))


@dataclass(frozen=True)
class PairRules:
    """The pair check (module docstring), as the check loop (checking.py) runs it."""

    max_length: int
    allow_urls: bool = False
    unit: ClassVar[str] = "pair"
    dtype: ClassVar = PAIR_ROW

    def open(self, spec: DatasetSpec, cache_dir: Path | None) -> PairSource:
        return PairSource(spec, cache_dir)

    def key(self) -> list:
        return [self.max_length, self.allow_urls]

    def check(self, source: PairSource, s: int, i: int, processor: VLProcessor) -> Outcome:
        try:
            pair = source.pair(i)
            thinking = pair_thinking(pair, processor)
            checks = [  # the same images: decoded once, with the chosen answer
                check_sample(
                    conv,
                    processor,
                    self.max_length,
                    "drop",
                    "last_assistant",
                    self.allow_urls,
                    decode,
                    thinking,
                )
                for conv, decode in ((pair.chosen, True), (pair.rejected, False))
            ]
        except DataError as e:
            return Outcome([Problem(e.where or source.where(i), e.what)])
        except Exception as e:  # whatever decoding or encoding raises: an error at the pair
            return Outcome([Problem(source.where(i), error_message(e))])
        problems = list(dict.fromkeys(p for c in checks for p in c.problems))  # prompt ones once
        if problems:
            return Outcome([Problem(pair.id, p) for p in problems])
        chosen, rejected = checks
        if chosen.keep is None or rejected.keep is None:
            longer = max(chosen.length, rejected.length)
            return Outcome(
                dropped=Problem(
                    pair.id,
                    f"prompt + longer answer: {longer} tokens > max_length {self.max_length}: dropped",
                )
            )
        values = row(
            PAIR_ROW, source=s, index=i, chosen_length=chosen.length, rejected_length=rejected.length,
            images=chosen.kept_images, videos=len(chosen.kept_videos),
            video_frames=sum(len(c.indices) for c in chosen.kept_videos), reasoning=int(chosen.reasoning),
        )  # fmt: skip
        return Outcome(row=values)


def encode_pair(pair: Pair, processor: VLProcessor, images: list, videos: list = ()) -> EncodedPair:
    """The prompt's tokens and media once, each answer's tokens and labels after it."""
    import torch

    thinking = pair_thinking(pair, processor)
    (c_ids, c_labels, c_types), (r_ids, r_labels, _) = (
        tokenize(render(conv, processor, images, "last_assistant", videos, thinking), processor.tokenizer)
        for conv in (pair.chosen, pair.rejected)
    )
    # The prompt ends where the first answer token is supervised; both encodings share it exactly.
    start = min(_first_supervised(c_labels), _first_supervised(r_labels))
    if c_ids[:start] != r_ids[:start]:
        raise DataError("the two answers' encodings do not share the prompt's tokens (a bug)", pair.id)
    media = processor.images(images) if images else {}
    if videos:
        media["pixel_values_videos"] = torch.cat([c.pixel_values for c in videos])
        media["video_grid_thw"] = torch.tensor([c.grid for c in videos])
        if processor.family.video.timestamps == "rope":
            media["second_per_grid_ts"] = torch.tensor([c.seconds_per_grid for c in videos])
    return EncodedPair(
        c_ids[:start],
        c_types[:start],
        c_ids[start:],
        c_labels[start:],
        r_ids[start:],
        r_labels[start:],
        media,
    )


def pair_thinking(pair: Pair, processor: VLProcessor) -> bool | None:
    """Both answers' system turn on generations with a reasoning effort (`encode.effort_instruction`):
    thinking on when either answer shows reasoning, so that they share one prompt; None elsewhere."""
    if not processor.family.reasoning_efforts:
        return None
    return any(any(shown_reasoning(conv, processor)) for conv in (pair.chosen, pair.rejected))


def load_and_encode(pair: Pair, processor: VLProcessor, allow_urls: bool = False) -> EncodedPair:
    """Load the pair's images and videos (once) and encode it."""
    segments = [s for t in pair.chosen.turns for s in t.segments]
    images = [load_for(processor, s.value, allow_urls) for s in segments if s.kind == "image"]
    videos = [load_clip(plan_clip(s.value, processor), processor) for s in segments if s.kind == "video"]
    return encode_pair(pair, processor, images, videos)


def _first_supervised(labels: list[int]) -> int:
    return next(k for k, lab in enumerate(labels) if lab != IGNORE)


class PairDataset:
    """Checked pairs in `order` (positions in the check's plan), encoded on access (any load failure
    stops the run, by file:line)."""

    def __init__(
        self,
        sources: list[PairSource],
        plan: Plan,
        order: np.ndarray,
        processor: VLProcessor,
        allow_urls: bool,
    ):
        self.sources, self.plan, self.order = sources, plan, order
        self.processor, self.allow_urls = processor, allow_urls

    def __len__(self) -> int:
        return len(self.order)

    def lengths(self) -> np.ndarray:
        return self.plan.lengths[self.order]

    def skipped(self) -> int:
        return 0  # pairs are never skipped: a pair that fails to load stops the run

    def __getitem__(self, i: int) -> EncodedPair:
        from .dataset import SampleLoadError

        item = self.plan[int(self.order[i])]
        try:
            pair = self.sources[item.source].pair(item.index)
        except DataError as e:
            raise SampleLoadError(str(e)) from None
        try:
            enc = load_and_encode(pair, self.processor, self.allow_urls)
        except Exception as e:
            raise SampleLoadError(f"{pair.id}: {error_message(e)}") from None
        lengths = (len(enc.prompt_ids) + len(enc.chosen_ids), len(enc.prompt_ids) + len(enc.rejected_ids))
        if lengths != (item.chosen_length, item.rejected_length):
            raise SampleLoadError(
                f"{pair.id}: encoded {lengths} tokens but the pair check counted "
                f"{(item.chosen_length, item.rejected_length)}; the data changed since it was checked"
            )
        return enc


@dataclass
class PairCollator:
    """A batch of B pairs as 2B rows, the chosen answers first, then the rejected ones (TRL's order).

    Each pair's pixel values are stored once; its two rows each need them in the batch (the model
    matches image tokens to image features row by row).
    """

    pad_token_id: int

    def __call__(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        from .collate import PaddingCollator, media
        from .encode import Encoded

        def row(p: EncodedPair, ids: list[int], labels: list[int]) -> Encoded:
            n = len(p.prompt_ids)
            return Encoded(
                p.prompt_ids + ids, [IGNORE] * n + labels, p.prompt_types + [0] * len(ids), None, None
            )

        rows = [row(p, p.chosen_ids, p.chosen_labels) for p in pairs]
        rows += [row(p, p.rejected_ids, p.rejected_labels) for p in pairs]
        batch = PaddingCollator(self.pad_token_id)(rows)
        shared = [Encoded([], [], [], **_media_fields(p)) for p in pairs]
        batch.update(media(shared + shared))  # rows 0..B-1 then B..2B-1: the same images in the same order
        return batch


def _media_fields(p: EncodedPair) -> dict[str, torch.Tensor | None]:
    m = p.media
    return {
        "pixel_values": m.get("pixel_values"),
        "image_grid_thw": m.get("image_grid_thw"),
        "pixel_values_videos": m.get("pixel_values_videos"),
        "video_grid_thw": m.get("video_grid_thw"),
        "second_per_grid_ts": m.get("second_per_grid_ts"),
    }


def check_pair_specs(
    specs: list,
    processor: VLProcessor,
    max_length: int,
    allow_urls: bool = False,
    progress: bool = True,
    workers: int | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[PairSource], CheckReport]:
    """Check every pair (module docstring) of the dataset files; one that cannot be read is an error at
    the file. The plan holds a `PairItem` row per usable pair."""
    rules = PairRules(max_length, allow_urls)
    return check_datasets(rules, specs, processor, workers=workers, cache_dir=cache_dir, progress=progress)


def build_pair_dataset(
    data: DataConfig,
    processor: VLProcessor,
    seed: int,
    progress: bool = True,
    split: str = "train",
    cache_dir=None,
) -> tuple[PairDataset, CheckReport]:
    """Check every pair of `data.train` (or `data.eval`); refuse on any error; the usable pairs, mixed."""
    rules = PairRules(data.max_length, data.allow_urls)
    sources, report, order = check_split(
        rules, data, processor, seed, split, "pair check", cache_dir, progress
    )
    return PairDataset(sources, report.plan, order, processor, data.allow_urls), report
