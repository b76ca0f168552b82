"""A processor for Qwen2-VL and later that needs no torchvision.

transformers' `Qwen2VLProcessor` (and the 2.5 / 3 ones) insist on a video processor, which needs
torchvision; `AutoProcessor.from_pretrained` on a real checkpoint therefore fails on machines
without it. This one pairs the checkpoint's tokenizer with the PIL image processor (same pixel
values) and reads and writes the same files as a real checkpoint directory.

Images decoded at reduced scale (`data.images.load_for` with `image_decode = "draft"`: a large JPEG
no smaller than the size this processor resizes it to) come as a `ReducedImage`, which `images`
resizes to exactly the size the full decode gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import PreTrainedTokenizerBase

    from .base import ModelFamily


@dataclass
class ReducedImage:
    """A JPEG decoded at reduced scale, standing in for the full image (data/images.py `load_image`).

    `width` and `height` are the file's (what token budgets and box coordinates use, as for a full
    decode); `image` holds the decoded pixels, smaller than that but at least the size the processor
    resizes the file to in both dimensions. `VLProcessor.images` resizes it to that size.
    """

    image: Image.Image
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass
class VLProcessor:
    family: ModelFamily
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    """transformers `Qwen2VLImageProcessorPil` configured for the family."""
    video_config: Any = None
    """The recipe's `data.video` (frame sampling and budgets); None: the generation's published rules."""
    thinking: str | None = None
    """The recipe's `data.thinking` (how reasoning is rendered); None: the official template's way."""
    reasoning_effort: str | None = None
    """The template's `reasoning_effort` (generations that have one): the recipe's
    `data.reasoning_effort` in training, `--reasoning-effort` or the run's at inference; None: its default."""
    image_decode: Literal["draft", "exact"] = "exact"
    """The recipe's `data.image_decode`: how `data.images.load_for` decodes JPEGs larger than the resize target."""
    special_text: Literal["error", "escape"] = "error"
    """The recipe's `data.special_text`: text spelling a control token is an error, or plain text."""

    @classmethod
    def from_pretrained(
        cls, family: ModelFamily, path: str, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> VLProcessor:
        from transformers import AutoTokenizer

        if (Path(path) / "tokenizer.json").is_file() or not (Path(path) / "qwen.tiktoken").is_file():
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:  # an original first-generation checkpoint: its own qwen.tiktoken, no remote code
            from .tokenizer import build_tokenizer

            tokenizer = build_tokenizer(
                family.special_tokens, family.chat_template, vocab_file=Path(path) / "qwen.tiktoken"
            )
        proc = cls(family, tokenizer, family.image_processor(path))
        if min_pixels or max_pixels:
            proc.set_pixel_range(min_pixels, max_pixels)
        return proc

    @classmethod
    def for_family(cls, family: ModelFamily, tokenizer: PreTrainedTokenizerBase) -> VLProcessor:
        """A fresh processor with the family's published image settings (used by make-tiny)."""
        return cls(family, tokenizer, family.image_processor(None))

    @property
    def min_pixels(self) -> int:
        if self.image_processor is None or self.family.vision.fixed_size:  # counting only / fixed size
            return self.family.vision.min_pixels
        return int(self.image_processor.size["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        if self.image_processor is None or self.family.vision.fixed_size:
            return self.family.vision.max_pixels
        return int(self.image_processor.size["longest_edge"])

    def set_pixel_range(self, min_pixels: int | None, max_pixels: int | None) -> None:
        if self.family.vision.fixed_size:
            raise ValueError(
                f"{self.family.title} resizes every image to {self.family.vision.fixed_size}x"
                f"{self.family.vision.fixed_size}: min_pixels / max_pixels do not apply"
            )
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

    def decode_target(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image processor resizes a width x height image to."""
        if self.family.vision.fixed_size:  # the image processor's own square (smaller on tiny towers)
            side = self.image_processor.image_size
            return side, side
        h, w = self.resized_size(height, width)
        return w, h

    def images(self, images: list[Image.Image | ReducedImage]) -> dict[str, torch.Tensor]:
        """pixel_values, plus image_grid_thw (images x 3) for the generations with dynamic resolution."""
        if not any(isinstance(im, ReducedImage) for im in images):
            out = self.image_processor(images=images, return_tensors="pt")
            return {k: out[k] for k in ("pixel_values", "image_grid_thw") if k in out}
        import torch

        # One call per image: a reduced image is resized here, to the size computed from the file's
        # size (the image processor would compute it from the reduced size, which can round to a
        # different grid), and handed over with resizing off. Per-image results concatenate to
        # exactly what one call returns.
        parts = [self._reduced(im) if isinstance(im, ReducedImage) else self.images([im]) for im in images]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _reduced(self, im: ReducedImage) -> dict[str, torch.Tensor]:
        if self.family.vision.fixed_size:  # always resized to its fixed square: the normal call
            return self.images([im.image])
        w, h = self.decode_target(im.width, im.height)
        # As the image processor resizes (PIL, its resample filter), from the reduced decode.
        resized = im.image.resize((w, h), self.image_processor.resample)
        out = self.image_processor(images=[resized], do_resize=False, return_tensors="pt")
        return {k: out[k] for k in ("pixel_values", "image_grid_thw") if k in out}

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer files, preprocessor_config.json and chat_template.jinja like a real checkpoint."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        # Real checkpoints name their processor class, so AutoProcessor (where torchvision exists) works.
        cfg_file = path / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        cfg["processor_class"] = self.family.processor_class
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
        (path / "chat_template.jinja").write_text(self.family.chat_template)
