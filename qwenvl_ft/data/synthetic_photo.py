"""Photo-like synthetic images, for measuring and testing image decoding (bench/bench_encode.py,
tests/unit/data/test_image_decode.py).

Flat-coloured shapes (synthetic.py) are what JPEG and any resampling reproduce almost perfectly, so
they say little about how a decode shortcut changes a camera photo. These have what photos have:
smooth lighting gradients, shaded objects with sharp edges, fine periodic texture near the
resolution limit (foliage, fabric, text) and sensor noise. Deterministic for a seed; numpy and PIL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def camera_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image of `size` (width, height) with a photo's mix of smooth and fine detail."""
    w, h = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    channels = []
    for _ in range(3):  # lighting: a tilted plane plus a slow wave, per channel
        a, b, c = rng.uniform(60, 160), rng.uniform(-60, 60), rng.uniform(-60, 60)
        fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.3)
        channels.append(a + b * x + c * y + 25 * np.sin(6.2832 * (fx * x + fy * y) + phase))
    image = Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(image)
    scale = min(w, h)
    for _ in range(12):  # objects with sharp edges
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.04, 0.2) * scale
        box = (cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    for _ in range(6):  # texture: stripes 2-6 px apart in a few patches
        x0, y0 = int(rng.uniform(0, w * 0.8)), int(rng.uniform(0, h * 0.8))
        pw, ph = int(rng.uniform(0.05, 0.2) * w), int(rng.uniform(0.05, 0.2) * h)
        period = int(rng.integers(2, 7))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for k in range(x0, x0 + pw, period):
            draw.line([(k, y0), (k + ph // 3, y0 + ph)], fill=colour, width=1)
    image = image.filter(ImageFilter.GaussianBlur(0.7))  # a lens is never perfectly sharp

    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.normal(0.0, 3.0, pixels.shape).astype(np.int16)  # sensor noise, a few levels
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
