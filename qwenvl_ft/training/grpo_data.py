"""GRPO's prompts: the data check's extra rules and the dataset of encoded prompts.

A GRPO sample is an ordinary SFT sample: its last assistant turn is the reference (what the rewards
compare with) and the turns before it the prompt, split as `qwenvl-ft predict` splits them and
rendered by `infer.Predictor.prompt`, so prompts are exactly the ones inference and evaluation
use, in every generation's own template (the first-generation Qwen-VL included). The SFT data check
runs first (roles, images, boxes on their image, lengths); then, per usable sample:

- with `grounding_iou` among the rewards, the reference must hold at least one box, all on one
  image (an error at the sample's file:line otherwise);
- the prompt's exact token count (visual tokens included) plus `grpo.max_new_tokens` must fit
  `data.max_length`, else the sample is dropped and reported like an overlong SFT sample.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from ..data.check import CheckReport, Problem, Size, error_message
from ..data.clips import load_clip, plan_clip
from ..data.conversation import Conversation
from ..data.encode import Piece, render, tokenize
from ..data.images import image_size, load_image
from ..data.readers import DataError
from ..infer import Predictor
from ..predict import split_reference

if TYPE_CHECKING:
    from ..config import RecipeConfig
    from ..data.check import PlanItem
    from ..data.sources import Source
    from ..models.processor import VLProcessor


def kept(source: Source, item: PlanItem) -> Conversation:
    """The sample as the data check planned it (its first `turns` turns when it was truncated)."""
    conv = source.conversation(item.index)
    return Conversation(conv.id, conv.turns[: item.turns], conv.source_id)


def prompt_length(predictor: Predictor, prompt: Conversation, sizes: list[Size], clips: list = ()) -> int:
    """Tokens of the prompt as `Predictor.prompt` renders it, from image sizes and planned clips alone."""
    pieces = render(prompt, predictor.processor, sizes, videos=clips) + [
        Piece(predictor.family.chat.im_start, False, True),
        Piece(predictor.family.generation_prompt(predictor.thinking), False),
    ]
    return len(tokenize(pieces, predictor.processor.tokenizer)[0])


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


def check_prompts(
    cfg: RecipeConfig, sources: list[Source], report: CheckReport, processor: VLProcessor
) -> CheckReport:
    """The GRPO rules (module docstring) over the samples the SFT check found usable, in place."""
    wants_boxes = any(r.name == "grounding_iou" for r in cfg.grpo.rewards)
    predictor = Predictor(None, processor, processor.family, cfg.grpo.thinking)
    budget, plan = cfg.data.max_length, []
    for item in report.plan:
        conv = kept(sources[item.source], item)
        try:
            problem = prompt_problem(conv, wants_boxes)
            if problem:
                report.errors.append(Problem(conv.id, problem))
                continue
            prompt = split_reference(conv)[0]
            sizes = [
                Size(*image_size(s.value, cfg.data.allow_urls))
                for t in prompt.turns
                for s in t.segments
                if s.kind == "image"
            ]
            clips = [
                plan_clip(s.value, processor) for t in prompt.turns for s in t.segments if s.kind == "video"
            ]
            n = prompt_length(predictor, prompt, sizes, clips)
        except Exception as e:  # as the SFT check: an error at the sample, never a crash
            report.errors.append(Problem(conv.id, error_message(e)))
            continue
        if n + cfg.grpo.max_new_tokens > budget:
            report.dropped.append(
                Problem(
                    conv.id,
                    f"prompt {n} tokens + grpo.max_new_tokens {cfg.grpo.max_new_tokens} > "
                    f"max_length {budget}: dropped",
                )
            )
            continue
        plan.append(replace(item, length=n))
    report.plan = plan
    return report


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
    """Checked samples as {"index", "prompt": Encoded, "sample": reward record}; images and video clips
    load here, in the loader's workers, images decoded exactly as `predict` decodes them."""

    def __init__(
        self,
        sources: list[Source],
        items: list[PlanItem],
        processor: VLProcessor,
        thinking: bool | None,
        allow_urls: bool = False,
    ):
        self.sources, self.items, self.allow_urls = sources, items, allow_urls
        self.predictor = Predictor(None, processor, processor.family, thinking)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        item = self.items[k]
        conv = kept(self.sources[item.source], item)
        prompt, ref = split_reference(conv)
        try:
            segments = [s for t in prompt.turns for s in t.segments]
            images = [load_image(s.value, self.allow_urls) for s in segments if s.kind == "image"]
            processor = self.predictor.processor
            videos = [
                load_clip(plan_clip(s.value, processor), processor) for s in segments if s.kind == "video"
            ]
        except Exception as e:  # changed on disk since the check
            raise DataError(f"{conv.id}: {error_message(e)}") from None
        return {
            "index": k,
            "prompt": self.predictor.prompt(prompt, images, videos),
            "sample": sample_record(conv, ref, images, self.predictor.processor),
        }


def as_list(items: list[dict]) -> list[dict]:
    """The collator: a GRPO batch stays a list of prompts (the trainer pads after sampling)."""
    return items
