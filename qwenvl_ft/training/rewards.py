"""Rewards for GRPO (`train.method: grpo`): functions that score sampled answers, named in a recipe.

    grpo:
      rewards:
        - {name: grounding_iou, weight: 1.0}
        - {name: format, weight: 0.2}
        - {name: my_project.rewards:short_answer}   # any importable module:function

Every reward, built-in or the user's, has one signature:

    def reward(completions: list[str], references: list[str], samples: list[dict]) -> list[float]

- completions[i]: the i-th sampled answer as `predict` reports it: generation cut at the family's
  stop token, special tokens kept (box tokens are the answer), the reasoning of a thinking
  generation split off;
- references[i]: the reference answer's text (the sample's last assistant turn, boxes left out);
- samples[i]: what is known about the completion's prompt and the completion itself, the fields of a
  `predict` line: "id" (file:line), "reference", "reference_boxes" (pixels of the original image),
  "box_image" (the index of the image they lie on), "image_sizes" and "resized_sizes" ((width, height)
  per image), "family" (its name), "reasoning" (the completion's reasoning, None when it gave none),
  "raw" (the generated text before the reasoning was split off) and "think_opened" (the prompt ended
  inside an open think block).

It returns one float per completion (None is not allowed: score a broken answer 0). The group's
rewards are the weighted sum over the recipe's rewards, before the group-relative advantage.

Built-in rewards:
- grounding_iou: boxes parsed from the answer with the generation's own convention
  (`family.parse_boxes`), back to pixels of the original image, matched to the reference boxes with
  `eval.metrics.box_iou`. With one reference box and one predicted box it is their IoU, the number
  `qwenvl-ft eval` thresholds for acc@0.5. With several, each reference box is matched to at most
  one predicted box, greedily by highest IoU, and the matched IoUs are summed and divided by
  max(#reference, #predicted): a missing box and an extra box both cost (mean best-match IoU over
  the larger of the two lists). No box in the answer scores 0.
- exact_match: 1 when the answer equals the reference after the VQA normalisation of `eval`
  (`vqa_exact_match`), else 0.
- format: 1 when the answer parses: it holds a box in the generation's convention where the
  reference has boxes, else is not empty; and, for thinking generations, the think block is
  well-formed (`think_well_formed`). Else 0.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..eval.metrics import box_iou, vqa_exact_match
from ..models import get_family
from ..models.base import ThinkFormat

RewardFn = Callable[[list[str], list[str], list[dict]], list[float]]


def grounding_iou(completions: list[str], references: list[str], samples: list[dict]) -> list[float]:
    """Greedy one-to-one box matching, summed IoU over max(#reference, #predicted) (module docstring)."""
    out = []
    for text, sample in zip(completions, samples, strict=True):
        refs = sample["reference_boxes"]
        if not refs:
            raise ValueError(
                f"{sample['id']}: grounding_iou needs reference boxes and this sample has none "
                "(the data check refuses such samples before step one)"
            )
        k = sample.get("box_image", 0)
        family = get_family(sample["family"])
        preds = family.parse_boxes(text, tuple(sample["image_sizes"][k]), tuple(sample["resized_sizes"][k]))
        out.append(matched_iou(preds, refs))
    return out


def matched_iou(preds: list, refs: list) -> float:
    """Sum of greedily matched IoUs (each box used once) over max(len(preds), len(refs)); 0 with no box."""
    if not preds or not refs:
        return 0.0
    pairs = sorted(
        ((box_iou(p, r), i, j) for i, p in enumerate(preds) for j, r in enumerate(refs)), reverse=True
    )
    used_p, used_r, total = set(), set(), 0.0
    for iou, i, j in pairs:
        if i not in used_p and j not in used_r and iou > 0:
            used_p.add(i)
            used_r.add(j)
            total += iou
    return total / max(len(preds), len(refs))


def exact_match(completions: list[str], references: list[str], samples: list[dict]) -> list[float]:
    """VQA-normalised exact match of the answer with the reference text."""
    return [vqa_exact_match(c, r) for c, r in zip(completions, references, strict=True)]


def format_reward(completions: list[str], references: list[str], samples: list[dict]) -> list[float]:
    """1 when the answer parses (a box where the reference has boxes) and its think block is well-formed."""
    out = []
    for text, sample in zip(completions, samples, strict=True):
        family = get_family(sample["family"])
        if sample["reference_boxes"]:
            k = sample.get("box_image", 0)
            ok = bool(
                family.parse_boxes(text, tuple(sample["image_sizes"][k]), tuple(sample["resized_sizes"][k]))
            )
        else:
            ok = bool(text.strip())
        if family.thinking:
            ok = ok and think_well_formed(sample["raw"], family.chat.think, sample["think_opened"])
        out.append(float(ok))
    return out


def think_well_formed(raw: str, think: ThinkFormat, opened: bool) -> bool:
    """Whether generated text has one proper think block: when the prompt opened the block, the text
    closes it exactly once and opens none; otherwise it either has no think tags at all or starts with
    one block (`<think>` ... `</think>`), with a non-empty answer after the block in both cases."""
    if not opened:
        if think.open not in raw and think.close not in raw:
            return True
        head = raw.lstrip()
        if not head.startswith(think.open):
            return False
        raw = head[len(think.open) :]
    if raw.count(think.close) != 1 or think.open in raw:
        return False
    return bool(raw.partition(think.close)[2].strip())


BUILTIN: dict[str, RewardFn] = {
    "grounding_iou": grounding_iou,
    "exact_match": exact_match,
    "format": format_reward,
}


@dataclass
class Reward:
    """One reward of the recipe: its name (as written there), weight and function."""

    name: str
    weight: float
    fn: RewardFn

    def __call__(self, completions: list[str], references: list[str], samples: list[dict]) -> list[float]:
        """The function's scores, checked: one finite number per completion, else an error naming it."""
        values = self.fn(completions, references, samples)
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise TypeError(
                f"reward {self.name!r} must return a list of numbers, got {values!r:.200}"
            ) from None
        if len(values) != len(completions):
            raise ValueError(
                f"reward {self.name!r} returned {len(values)} scores for {len(completions)} completions"
            )
        if any(v != v or v in (float("inf"), float("-inf")) for v in values):
            raise ValueError(f"reward {self.name!r} returned a NaN or infinite score: {values}")
        return values


def load_reward(name: str) -> RewardFn:
    """A built-in reward by name, or a user's `module:function`; errors name the spec and the reason."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ValueError(
            f"unknown reward {name!r}: use a built-in one ({', '.join(BUILTIN)}) or 'module:function'"
        )
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward {name!r}: expected 'module:function', e.g. 'my_rewards:length_penalty'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while it is imported
        raise ValueError(
            f"reward {name!r}: cannot import module {module_name!r}: {type(e).__name__}: {e} "
            "(is it on PYTHONPATH, i.e. importable from where you launch?)"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {module_name}.{attr} is a {type(fn).__name__}, not a function")
    return fn


def load_rewards(specs: list) -> list[Reward]:
    """The recipe's `grpo.rewards` (objects with `name` and `weight`) as callable rewards."""
    return [Reward(s.name, s.weight, load_reward(s.name)) for s in specs]
