"""A processor for Qwen2-VL and later that needs no torchvision.

transformers' `Qwen2VLProcessor` (and the 2.5 / 3 ones) insist on a video processor, which needs
torchvision; `AutoProcessor.from_pretrained` on a real checkpoint therefore fails on machines
without it. This one pairs the checkpoint's tokenizer with the PIL image processor (same pixel
values) and reads and writes the same files as a real checkpoint directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import PreTrainedTokenizerBase

    from .base import ModelFamily


@dataclass
class VLProcessor:
    family: ModelFamily
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    """transformers `Qwen2VLImageProcessorPil` configured for the family."""

    @classmethod
    def from_pretrained(
        cls, family: ModelFamily, path: str, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> VLProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        proc = cls(family, tokenizer, image_processor)
        if min_pixels or max_pixels:
            proc.set_pixel_range(min_pixels, max_pixels)
        return proc

    @classmethod
    def for_family(cls, family: ModelFamily, tokenizer: PreTrainedTokenizerBase) -> VLProcessor:
        """A fresh processor with the family's published image settings (used by make-tiny)."""
        from transformers import Qwen2VLImageProcessorPil

        v = family.vision
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": v.min_pixels, "longest_edge": v.max_pixels},
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            merge_size=v.merge_size,
            image_mean=list(v.image_mean),
            image_std=list(v.image_std),
        )
        return cls(family, tokenizer, image_processor)

    @property
    def min_pixels(self) -> int:
        if self.image_processor is None:  # token counting only (fixed-size generations, checks)
            return self.family.vision.min_pixels
        return int(self.image_processor.size["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        if self.image_processor is None:
            return self.family.vision.max_pixels
        return int(self.image_processor.size["longest_edge"])

    def set_pixel_range(self, min_pixels: int | None, max_pixels: int | None) -> None:
        size = dict(self.image_processor.size)
        if min_pixels:
            size["shortest_edge"] = min_pixels
        if max_pixels:
            size["longest_edge"] = max_pixels
        if size["shortest_edge"] > size["longest_edge"]:
            raise ValueError(
                f"min_pixels {size['shortest_edge']} exceeds max_pixels {size['longest_edge']} for "
                f"{self.family.title}; raise max_pixels or lower min_pixels as well"
            )
        self.image_processor.size = size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return self.family.resized_size(height, width, self.min_pixels, self.max_pixels)

    def image_tokens(self, height: int, width: int) -> int:
        return self.family.image_tokens(height, width, self.min_pixels, self.max_pixels)

    def images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """pixel_values (patches x features) and image_grid_thw (images x 3) for a list of PIL images."""
        out = self.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer files, preprocessor_config.json and chat_template.jinja like a real checkpoint."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        # Real checkpoints name their processor class, so AutoProcessor (where torchvision exists) works.
        cfg_file = path / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["processor_class"] = self.family.processor_class
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
        (path / "chat_template.jinja").write_text(self.family.chat_template)
