"""Generation with a base model, a run's adapter or a merged model, from the prompts training uses.

    predictor = Predictor.load("runs/my-run")              # adapter on its base (from qwenvl_ft.json)
    answers = predictor.generate([(conversation, images)])  # greedy by default

A prompt is the conversation rendered exactly as the training encoder renders it (same chat
format, image tokens and box convention), ending with the assistant header; so what a model
learned is what it is asked. Answers keep their special tokens (box tokens are the grounding
answer); only the closing <|im_end|> / <|endoftext|> is cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .data.conversation import Conversation
from .data.encode import Encoded, Piece, render, tokenize
from .merge import load_source, read_run
from .models import get_family, resolve_family
from .models.base import ModelFamily
from .models.processor import VLProcessor
from .training.setup import DTYPES


@dataclass
class Predictor:
    model: torch.nn.Module
    processor: VLProcessor
    family: ModelFamily

    @classmethod
    def load(
        cls, path: str | Path, dtype: str = "fp32", device: str | None = None, base: str | Path | None = None
    ) -> Predictor:
        """A base, merged or fully fine-tuned checkpoint directory, or a LoRA run / checkpoint directory."""
        path = Path(path)
        torch_dtype = DTYPES[dtype]
        if (path / "adapter_config.json").is_file():  # a LoRA run: the adapter on its recorded base
            meta = read_run(path)
            family = get_family(meta["family"])
            base_path = Path(base or meta["base_model"])
            model = load_source("lora", path, base_path, family, torch_dtype)
            processor = family.load_processor(
                str(path if (path / "tokenizer_config.json").is_file() else base_path)
            )
        else:
            family = resolve_family(str(path), None)
            model = family.load_model(str(path), dtype=torch_dtype)
            processor = family.load_processor(str(path))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device).eval(), processor, family)

    def prompt(self, conv: Conversation, images: list[Image.Image]) -> Encoded:
        """The conversation (ending with a user turn) and the assistant header, as the model input."""
        chat = self.family.chat
        pieces = render(conv, self.processor, images) + [
            Piece(chat.im_start, False, True),
            Piece("assistant\n", False),
        ]
        ids, labels, types = tokenize(pieces, self.processor.tokenizer)
        pixels = self.processor.images(images) if images else {}
        return Encoded(ids, labels, types, pixels.get("pixel_values"), pixels.get("image_grid_thw"))

    @torch.no_grad()
    def generate(
        self,
        samples: list[tuple[Conversation, list[Image.Image]]],
        max_new_tokens: int = 128,
        batch_size: int = 8,
        **generation: object,
    ) -> list[str]:
        """One answer per (conversation, images); greedy unless `generation` says otherwise."""
        out: list[str] = []
        for start in range(0, len(samples), batch_size):
            prompts = [self.prompt(c, images) for c, images in samples[start : start + batch_size]]
            inputs = self._batch(prompts)
            ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generation)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out += [self._answer(row) for row in new.tolist()]
        return out

    def _batch(self, prompts: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded: every prompt ends where generation starts."""
        pad = self.processor.tokenizer.pad_token_id
        longest = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        types = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            n = len(p.input_ids)
            ids[row, longest - n :] = torch.tensor(p.input_ids)
            mask[row, longest - n :] = 1
            types[row, longest - n :] = torch.tensor(p.mm_token_type_ids)
        device = next(self.model.parameters()).device
        batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
        with_images = [p for p in prompts if p.pixel_values is not None]
        if with_images:
            batch["pixel_values"] = torch.cat([p.pixel_values for p in with_images])
            if with_images[0].image_grid_thw is not None:
                batch["image_grid_thw"] = torch.cat([p.image_grid_thw for p in with_images])
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()}

    def _answer(self, ids: list[int]) -> str:
        tok = self.processor.tokenizer
        stops = {tok.convert_tokens_to_ids(t) for t in (self.family.chat.im_end, "<|endoftext|>")}
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        return tok.decode(ids[:cut], skip_special_tokens=False)
