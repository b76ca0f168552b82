"""GRPO's prompts: the data check's extra rules and the dataset of encoded prompts.

A GRPO sample is an ordinary SFT sample: its last assistant turn is the reference (what the rewards
compare with) and the turns before it the prompt, split as `qwenvl-ft predict` splits them and
rendered by `data.prompts` (as `infer.Predictor.prompt` renders them), so prompts are exactly the
ones inference and evaluation use, in every generation's own template (the first-generation Qwen-VL included). The SFT data check
runs first (roles, images, boxes on their image, lengths); then, per usable sample:

- with `grounding_iou` among the rewards, the reference must hold at least one box, all on one
  image (an error at the sample's file:line otherwise);
- the prompt's exact token count (visual tokens included) plus `grpo.max_new_tokens` must fit
  `data.max_length`, else the sample is dropped and reported like an overlong SFT sample.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from torch.utils.data import Dataset

from ..data.check import SampleRules, Size
from ..data.checking import Outcome, Problem, error_message
from ..data.clips import load_clip, plan_clip
from ..data.conversation import Conversation
from ..data.images import image_size, load_image
from ..data.plan import Plan, PlanItem
from ..data.prompts import encode_prompt, prompt_length, split_reference
from ..data.readers import DataError

if TYPE_CHECKING:
    import numpy as np

    from ..config import RecipeConfig
    from ..data.sources import Source
    from ..models.processor import VLProcessor


def kept(source: Source, item: PlanItem) -> Conversation:
    """The sample as the data check planned it (its first `turns` turns when it was truncated)."""
    conv = source.conversation(item.index)
    return Conversation(conv.id, conv.turns[: item.turns], conv.source_id)


def prompt_problem(conv: Conversation, wants_boxes: bool) -> str | None:
    """Why this sample cannot be a GRPO prompt with these rewards (None: it can)."""
    ref = split_reference(conv)[1]
    boxes = [s.value for s in ref.turns[0].segments if s.kind == "box"]
    if wants_boxes and not boxes:
        return (
            "the reference answer (the last assistant turn) has no box, but 'grpo.rewards' asks for "
            "grounding_iou, which compares the answer's boxes with the reference's"
        )
    if len({b.image for b in boxes}) > 1:
        return "the reference boxes lie on several images; grounding_iou scores the boxes of one image"
    return None


@dataclass(frozen=True)
class PromptRules(SampleRules):
    """The SFT sample check, then GRPO's prompt rules (module docstring), in one pass of the check loop.

    The plan row's `length` is the prompt's token count (what `data.prompts.encode_prompt` encodes)."""

    thinking: bool | None = None
    max_new_tokens: int = 128
    wants_boxes: bool = False
    unit: ClassVar[str] = "prompt"

    def key(self) -> list:
        return [*super().key(), self.thinking, self.max_new_tokens, self.wants_boxes]

    def check(self, source: Source, s: int, i: int, processor: VLProcessor) -> Outcome:
        out = super().check(source, s, i, processor)
        if out.row is None:
            return out
        item = PlanItem(*out.row)
        conv = kept(source, item)
        try:
            problem = prompt_problem(conv, self.wants_boxes)
            if problem:
                return Outcome([Problem(conv.id, problem)])
            prompt = split_reference(conv)[0]
            sizes = [
                Size(*image_size(seg.value, self.allow_urls))
                for t in prompt.turns
                for seg in t.segments
                if seg.kind == "image"
            ]
            clips = [
                plan_clip(seg.value, processor)
                for t in prompt.turns
                for seg in t.segments
                if seg.kind == "video"
            ]
            n = prompt_length(prompt, processor, sizes, clips, self.thinking)
        except Exception as e:  # as the SFT check: an error at the sample, never a crash
            return Outcome([Problem(conv.id, error_message(e))])
        if n + self.max_new_tokens > self.max_length:
            message = f"prompt {n} tokens + grpo.max_new_tokens {self.max_new_tokens} > max_length {self.max_length}: dropped"
            return Outcome(dropped=Problem(conv.id, message))
        return Outcome(truncated=out.truncated, row=astuple(replace(item, length=n)))


def prompt_rules(cfg: RecipeConfig) -> PromptRules:
    """The recipe's GRPO prompt check."""
    d, g = cfg.data, cfg.grpo
    wants_boxes = any(r.name == "grounding_iou" for r in g.rewards)
    return PromptRules(
        d.max_length, d.overlength, d.supervise, d.allow_urls, True, g.thinking, g.max_new_tokens, wants_boxes
    )


def sample_record(conv: Conversation, ref: Conversation, images: list, processor: VLProcessor) -> dict:
    """What the rewards know about a prompt (the fields of a `predict` line; rewards.py docstring)."""
    segs = ref.turns[0].segments
    boxes = [s.value for s in segs if s.kind == "box"]
    return {
        "id": conv.source_id or conv.id,
        "where": conv.id,
        "reference": "".join(str(s.value) for s in segs if s.kind in ("text", "ref")),
        "reference_boxes": [list(b.pixels(images[b.image].size)) for b in boxes],
        "box_image": boxes[0].image if boxes else 0,
        "image_sizes": [list(im.size) for im in images],
        "resized_sizes": [list(processor.resized_size(im.height, im.width)[::-1]) for im in images],
        "family": processor.family.name,
    }


class PromptDataset(Dataset):
    """Checked samples in `order` (positions in the prompt check's plan) as {"index", "prompt": Encoded,
    "sample": reward record}; images and video clips load here, in the loader's workers, images
    decoded exactly as `predict` decodes them."""

    def __init__(
        self,
        sources: list[Source],
        plan: Plan,
        order: np.ndarray,
        processor: VLProcessor,
        thinking: bool | None,
        allow_urls: bool = False,
    ):
        self.sources, self.plan, self.order, self.allow_urls = sources, plan, order, allow_urls
        self.processor, self.thinking = processor, thinking

    def __len__(self) -> int:
        return len(self.order)

    def lengths(self) -> np.ndarray:
        """Each prompt's checked token count, for `data.group_by_length`."""
        return self.plan.lengths[self.order]

    def __getitem__(self, k: int) -> dict:
        item = self.plan[int(self.order[k])]
        conv = kept(self.sources[item.source], item)
        prompt, ref = split_reference(conv)
        try:
            segments = [s for t in prompt.turns for s in t.segments]
            images = [load_image(s.value, self.allow_urls) for s in segments if s.kind == "image"]
            processor = self.processor
            videos = [
                load_clip(plan_clip(s.value, processor), processor) for s in segments if s.kind == "video"
            ]
        except Exception as e:  # changed on disk since the check
            raise DataError(f"{conv.id}: {error_message(e)}") from None
        return {
            "index": k,
            "prompt": encode_prompt(prompt, self.processor, images, videos, self.thinking),
            "sample": sample_record(conv, ref, images, self.processor),
        }


def as_list(items: list[dict]) -> list[dict]:
    """The collator: a GRPO batch stays a list of prompts (the trainer pads after sampling)."""
    return items
