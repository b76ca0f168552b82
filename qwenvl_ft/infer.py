"""Generation with a base model, a run's adapter or a merged model, from the prompts training uses.

    predictor = Predictor.load("runs/my-run")              # adapter on its base (from qwenvl_ft.json)
    answers = predictor.generate([(conversation, images)])  # greedy by default

A prompt is the conversation rendered exactly as the training encoder renders it (same chat
format, image tokens and box convention), ending with the family's generation prompt (the
assistant header; on thinking generations with the think block opened, or an empty one when
`thinking` is off); so what a model learned is what it is asked. Generation stops at the family's
stop tokens, which are cut. Answers keep their other special tokens (box tokens are the grounding
answer); the reasoning of a thinking generation is split off (`generate_answers` keeps it apart,
`generate` drops it), so boxes are parsed and answers scored on the answer alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .data.clips import VideoClip
from .data.conversation import Conversation
from .data.encode import Encoded
from .data.prompts import encode_prompt
from .models import get_family, resolve_family
from .models.base import ModelFamily
from .models.capabilities import effort_problem
from .models.processor import VLProcessor
from .runs import DTYPES, checkpoint_meta, is_adapter, load_adapter_model, processor_dir, read_run


@dataclass
class Answer:
    text: str
    """The answer, without its reasoning."""
    reasoning: str | None = None
    """The reasoning before it (None: the answer gave none)."""


def check_thinking(family: ModelFamily, thinking: bool | None) -> None:
    """ValueError naming the family when `thinking` is switched on one without a thinking mode."""
    if thinking is not None and not family.thinking:
        state = "on" if thinking else "off"
        raise ValueError(f"thinking {state}: {family.title} ({family.name}) has no thinking mode")


def run_effort(family: ModelFamily, asked: str | None, meta: dict) -> str | None:
    """The reasoning effort to prompt with: the one asked for, else the run's (its qwenvl_ft.json,
    from `data.reasoning_effort`), else None: the template's default. ValueError, naming the family,
    for an effort it does not take or a generation without one."""
    problem = effort_problem(family, asked, "--reasoning-effort")
    if problem:
        raise ValueError(problem)
    return asked if asked is not None or not family.reasoning_efforts else meta.get("reasoning_effort")


def run_thinking(family: ModelFamily, asked: bool | None, meta: dict) -> bool | None:
    """The thinking mode to prompt with: the one asked for, else the one the run was trained in (its
    qwenvl_ft.json `thinking`, `training.lifecycle.trained_thinking`), else None: the template's
    default. So a run trained on answers without reasoning is asked with the empty think block it
    learned to answer after (README 'Thinking at inference')."""
    check_thinking(family, asked)
    if asked is not None or not family.thinking:
        return asked
    return meta.get("thinking")


def left_padded(
    prompts: list[Encoded], pad: int, model: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Encoded inputs as one left-padded batch (each ends at the last column: where generation starts,
    where the retrieval models read their last token), media concatenated; on `model`'s device and
    in its dtype (None: as built, on the CPU: a collator's batch, which the Trainer places)."""
    longest = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[row, longest - n :] = torch.tensor(p.input_ids)
        mask[row, longest - n :] = 1
        types[row, longest - n :] = torch.tensor(p.mm_token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
    with_images = [p for p in prompts if p.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([p.pixel_values for p in with_images])
        if with_images[0].image_grid_thw is not None:
            batch["image_grid_thw"] = torch.cat([p.image_grid_thw for p in with_images])
    for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        values = [getattr(p, key) for p in prompts if getattr(p, key) is not None]
        if values:
            batch[key] = torch.cat(values)
    if model is None:
        return batch
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    return {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()}


@dataclass
class Predictor:
    model: torch.nn.Module
    processor: VLProcessor
    family: ModelFamily
    thinking: bool | None = None
    """Thinking on (True) or off (False) in the prompt; None: the template's default. Only for
    generations that declare `thinking`."""
    trained: str | None = None
    """How the loaded run was trained (its metadata's `thinking_why`), when the thinking mode came
    from there rather than from the caller."""

    def __post_init__(self) -> None:
        check_thinking(self.family, self.thinking)

    def thinking_line(self) -> str | None:
        """What the CLI says about the thinking mode when it came from the run, not from a flag."""
        if self.trained is None or self.thinking is None:
            return None
        state, other = ("on", "off") if self.thinking else ("off", "on")
        effort = self.processor.reasoning_effort
        effort = f", reasoning effort {effort}" if effort and self.thinking else ""
        return (
            f"thinking {state}{effort}, as the run was trained ({self.trained}); --thinking {other} overrides"
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        dtype: str = "fp32",
        device: str | None = None,
        base: str | Path | None = None,
        thinking: bool | None = None,
        reasoning_effort: str | None = None,
    ) -> Predictor:
        """A base, merged or fully fine-tuned checkpoint directory, or a LoRA run / checkpoint directory.

        thinking, reasoning_effort: None gives the mode the run was trained in (README 'Thinking at
        inference'), else the template's default."""
        path = Path(path)
        torch_dtype = DTYPES[dtype]
        asked = thinking
        if is_adapter(path):  # a LoRA run: the adapter on its recorded base
            meta = read_run(path)
            family = get_family(meta["family"])
            thinking = run_thinking(family, asked, meta)  # refused before the weights load
            effort = run_effort(family, reasoning_effort, meta)
            base_path = Path(base or meta["base_model"])
            model = load_adapter_model(path, base_path, family, torch_dtype)
            processor = family.load_processor(str(processor_dir(path, base_path)))
        else:
            meta = checkpoint_meta(path)
            family = resolve_family(str(path), None)
            thinking = run_thinking(family, asked, meta)
            effort = run_effort(family, reasoning_effort, meta)
            model = family.load_model(str(path), dtype=torch_dtype)
            processor = family.load_processor(str(path))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        processor.reasoning_effort = effort
        trained = meta.get("thinking_why") if asked is None and thinking is not None else None
        return cls(model.to(device).eval(), processor, family, thinking, trained)

    def prompt(self, conv: Conversation, images: list[Image.Image], videos: list[VideoClip] = ()) -> Encoded:
        """The conversation (ending with a user turn) and the generation prompt, as the model input
        (data/prompts.py). videos: loaded clips (`data.clips.load_clip`), in the conversation's order."""
        return encode_prompt(conv, self.processor, images, videos, self.thinking)

    @torch.no_grad()
    def generate(
        self,
        samples: list[tuple[Conversation, list[Image.Image]]],
        max_new_tokens: int = 128,
        batch_size: int = 8,
        **generation: object,
    ) -> list[str]:
        """One answer per (conversation, images), reasoning removed; greedy unless `generation` says otherwise."""
        return [a.text for a in self.generate_answers(samples, max_new_tokens, batch_size, **generation)]

    @torch.no_grad()
    def generate_answers(
        self,
        samples: list[tuple[Conversation, list[Image.Image]]]
        | list[tuple[Conversation, list[Image.Image], list[VideoClip]]],
        max_new_tokens: int = 128,
        batch_size: int = 8,
        **generation: object,
    ) -> list[Answer]:
        """One answer per (conversation, images[, videos]), with its reasoning apart."""
        tok = self.processor.tokenizer
        generation.setdefault("eos_token_id", self.stop_ids())
        generation.setdefault("pad_token_id", tok.pad_token_id)
        out: list[Answer] = []
        for start in range(0, len(samples), batch_size):
            prompts = [self.prompt(*sample) for sample in samples[start : start + batch_size]]
            inputs = self.batch(prompts)
            ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generation)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out += [self.split(self.decode(row)) for row in new.tolist()]
        return out

    def split(self, text: str) -> Answer:
        """Generated text (stop token cut) as reasoning and answer, for this predictor's prompt."""
        if not self.family.thinking:
            return Answer(text)
        think = self.family.chat.think
        opened = self.family.generation_prompt(self.thinking).endswith(think.open + "\n")
        reasoning, answer = think.split(text, opened)
        return Answer(answer, reasoning)

    def batch(self, prompts: list[Encoded], model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Encoded prompts as one left-padded batch (every prompt ends where generation starts) on the
        device and in the dtype of `model` (default: this predictor's)."""
        return left_padded(prompts, self.processor.tokenizer.pad_token_id, model or self.model)

    def stop_ids(self) -> list[int]:
        """The ids of the family's stop tokens: generation ends at the first."""
        return self.processor.tokenizer.convert_tokens_to_ids(list(self.family.chat.stop_tokens))

    def decode(self, ids: list[int]) -> str:
        """Generated ids up to the first stop token, as text with the other special tokens kept."""
        stops = set(self.stop_ids())
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        return self.processor.tokenizer.decode(ids[:cut], skip_special_tokens=False)
