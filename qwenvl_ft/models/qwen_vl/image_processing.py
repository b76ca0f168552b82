"""First-generation image preprocessing: every image to 448x448 (bicubic), scaled to [0, 1], CLIP mean/std.

Matches the original's torchvision pipeline (Resize((448, 448), BICUBIC) on a PIL image, ToTensor,
Normalize), which resizes through PIL as this does, without needing torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class QwenVLImageProcessor:
    def __init__(self, image_size: int = 448, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        self.image_size = image_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> QwenVLImageProcessor:
        """From our preprocessor_config.json, else an original checkpoint's config.json (visual.image_size)."""
        path = Path(path)
        if (path / "preprocessor_config.json").is_file():
            cfg = json.loads((path / "preprocessor_config.json").read_text())
            return cls(
                cfg.get("image_size", 448), cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)
            )
        visual = json.loads((path / "config.json").read_text()).get("visual", {})
        return cls(visual.get("image_size", 448))

    def __call__(self, images: list[Image.Image], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(self.image_std, dtype=np.float32)[:, None, None]
        arrays = []
        for image in images:
            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
            arrays.append((array - mean) / std)
        return {"pixel_values": torch.from_numpy(np.stack(arrays))}

    def save_pretrained(self, path: str | Path) -> None:
        (Path(path) / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "QwenVLImageProcessor",
                    "image_size": self.image_size,
                    "image_mean": list(self.image_mean),
                    "image_std": list(self.image_std),
                },
                indent=2,
            )
            + "\n"
        )
