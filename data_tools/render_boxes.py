"""Draw a sample's boxes and ref labels onto its image(s), to check grounding data by eye.

    python data_tools/render_boxes.py DATA_FILE [--index N | --id ID] --out sample.png \
        [--from auto|qwen_vl|messages|llava|openai] [--image-root DIR]

DATA_FILE is anything `qwenvl_ft.data.readers.read_file` reads. --index is the 0-based position
of the sample (default 0); --id matches the dataset's own id. Pixel boxes are drawn as they are;
[0, 1000) boxes are scaled by the image size. Each box gets its own colour and the text of the
ref before it (or "box N") above it. A sample with one image is saved to --out; a sample with
several images is saved image by image as OUT_1.png, OUT_2.png, ... (each box on its own image).
Prints the written paths and every box in pixels.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from qwenvl_ft.data.conversation import Box, Conversation
from qwenvl_ft.data.readers import DataError, read_file

# Distinct, saturated colours that stay readable on photos and on the synthetic shapes.
PALETTE = [
    (255, 0, 0),
    (0, 200, 0),
    (0, 90, 255),
    (255, 150, 0),
    (200, 0, 200),
    (0, 200, 200),
    (255, 220, 0),
    (120, 60, 0),
]


@dataclass
class Drawn:
    """One box to draw: its label, its image index and its corners in pixels."""

    label: str
    image: int
    xyxy: tuple[float, float, float, float]


def find_sample(path: Path, index: int | None, sample_id: str | None, **read_kw) -> Conversation:
    """The sample at `index` or with id `sample_id` (the dataset's id, or the reader's full location)."""
    for i, conv in enumerate(read_file(path, **read_kw)):
        if sample_id is None and i == (index or 0):
            return conv
        if sample_id is not None and sample_id in (conv.id, conv.source_id):
            return conv
    wanted = f"id {sample_id!r}" if sample_id is not None else f"index {index or 0}"
    raise DataError(f"{path}: no sample with {wanted}")


def labelled_boxes(conv: Conversation) -> list[tuple[str, Box]]:
    """Each box with the latest ref before it in the same turn (Qwen-VL's <ref>a</ref><box><box>)."""
    out: list[tuple[str, Box]] = []
    for turn in conv.turns:
        ref = None
        for seg in turn.segments:
            if seg.kind == "ref":
                ref = str(seg.value)
            elif seg.kind == "box":
                out.append((ref or f"box {len(out) + 1}", seg.value))
    return out


def load_images(conv: Conversation) -> list[Image.Image]:
    images = []
    for seg in (s for t in conv.turns for s in t.segments if s.kind == "image"):
        if isinstance(seg.value, Image.Image):
            images.append(seg.value.convert("RGB"))
            continue
        try:
            with Image.open(str(seg.value)) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"{conv.id}: cannot open image {seg.value}: {e}") from None
    return images


def draw_box(image: Image.Image, d: Drawn, colour: tuple[int, int, int]) -> None:
    """The outline inside the box's pixels (x2, y2 exclusive) and the label on a filled tag above it."""
    draw = ImageDraw.Draw(image)
    width = max(2, min(image.size) // 150)
    x1, y1, x2, y2 = (round(v) for v in d.xyxy)
    draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), d.label, font=font)
    tw, th = right - left + 4, bottom - top + 4
    # Above the box when there is room, else just inside its top edge.
    ty = y1 - th if y1 - th >= 0 else y1 + width
    tx = min(max(0, x1), max(0, image.width - tw))
    draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=colour)
    draw.text((tx + 2 - left, ty + 2 - top), d.label, fill=(255, 255, 255), font=font)


def render(conv: Conversation, out: Path) -> tuple[list[Path], list[Drawn]]:
    """Draw every box of `conv`; returns the written PNG paths and the boxes in pixels."""
    images = load_images(conv)
    if not images:
        raise DataError(f"{conv.id}: the sample has no image to draw on")
    drawn = []
    for label, box in labelled_boxes(conv):
        if not 0 <= box.image < len(images):
            raise DataError(f"{conv.id}: a box refers to image {box.image + 1} of {len(images)}")
        drawn.append(Drawn(label, box.image, box.pixels(images[box.image].size)))
    for i, d in enumerate(drawn):
        draw_box(images[d.image], d, PALETTE[i % len(PALETTE)])
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}_{i}.png") for i in range(1, len(images) + 1)]
    for image, path in zip(images, paths, strict=True):
        image.save(path, format="PNG")
    return paths, drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="a .json or .jsonl data file")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, help="0-based sample position (default 0)")
    which.add_argument("--id", dest="sample_id", help="the sample's id in the dataset")
    parser.add_argument("--out", type=Path, required=True, help="output .png")
    parser.add_argument("--from", dest="fmt", default="auto", help="input format (default: detect)")
    parser.add_argument("--image-root", help="folder relative image paths resolve against")
    args = parser.parse_args(argv)
    try:
        conv = find_sample(args.data, args.index, args.sample_id, fmt=args.fmt, image_root=args.image_root)
        paths, drawn = render(conv, args.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{conv.id}: wrote " + ", ".join(map(str, paths)))
    for d in drawn:
        coords = ", ".join(f"{v:g}" for v in d.xyxy)
        print(f"  image {d.image + 1}: {d.label}: [{coords}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
