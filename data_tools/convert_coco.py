"""Convert COCO detection or RefCOCO referring annotations into the neutral `messages` JSONL.

    python data_tools/convert_coco.py instances.json --out det.jsonl \
        [--image-prefix images/train2017] [--prompt "<image>Locate every object in the image."] \
        [--skip-invalid]
    python data_tools/convert_coco.py refs.json --refcoco --out ref.jsonl [--image-prefix ...]

Detection input (COCO): {"images": [{"id", "file_name", "width", "height"}],
"annotations": [{"image_id", "category_id", "bbox": [x, y, w, h]}], "categories": [{"id", "name"}]}.
One line per image that has annotations: the assistant names each category once (in order of its
first annotation) followed by all its boxes, e.g. "<ref-object><bbox><bbox>, <ref-object><bbox>".

RefCOCO input: a JSON list of {"file_name", "bbox": [x, y, w, h], "sentences": [...]}, where a
sentence is a string or {"sent": str} (the refs.p layout); optional "width" and "height" enable
the bounds check, optional "id" names the samples. One sample per sentence:
user "<image>Locate: SENTENCE", assistant "<ref-object><bbox>".

Boxes are written in pixels as [x1, y1, x2, y2] (x2 = x + w), rounded to 4 decimals. An
annotation with an unknown image or category, a non-positive width/height or a box outside its
image is an error naming its index; with --skip-invalid it is skipped and counted instead.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from collections import Counter
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = "<image>Locate every object in the image."
REFER_PROMPT = "<image>Locate: "


class AnnotationError(ValueError):
    """An annotation that cannot be converted; the message names its index."""


def _num(v: float) -> int | float:
    # Integral coordinates stay ints so the JSONL reads like hand-written data; 4 decimals hide
    # float noise such as 0.1 + 0.2 from x + w.
    r = round(float(v), 4)
    return int(r) if r.is_integer() else r


def xywh_to_xyxy(bbox: Any, size: tuple[float, float] | None, where: str) -> list[int | float]:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2] in pixels, validated against the image `size`."""
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        raise AnnotationError(f"{where}: bbox must be [x, y, w, h] numbers, got {bbox!r}")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise AnnotationError(f"{where}: bbox {bbox} has non-positive width or height")
    if size is not None:
        width, height = size
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise AnnotationError(f"{where}: bbox {bbox} lies outside its {width}x{height} image")
    return [_num(x), _num(y), _num(x + w), _num(y + h)]


def image_path(file_name: str, prefix: str | None) -> str:
    # posixpath: the JSONL is read on any OS and the reader accepts forward slashes everywhere.
    return posixpath.join(prefix, file_name) if prefix else file_name


def _grounding_sample(
    sample_id: Any, image: str, prompt: str, groups: dict[str, list[list[int | float]]]
) -> dict[str, Any]:
    """One messages record: each ref once, followed by all of its boxes."""
    answer = ", ".join("<ref-object>" + "<bbox>" * len(boxes) for boxes in groups.values())
    return {
        "id": sample_id,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ],
        "images": [image],
        "objects": {
            "ref": list(groups),
            "bbox": [box for boxes in groups.values() for box in boxes],
        },
    }


def _index_coco(data: dict[str, Any]) -> tuple[dict[Any, dict[str, Any]], dict[Any, str]]:
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"COCO input needs a list under {key!r}")
    for key, needed in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        for i, entry in enumerate(data[key]):
            missing = [k for k in needed if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise AnnotationError(f"{key}[{i}]: missing {', '.join(repr(k) for k in missing)}")
    images = {img["id"]: img for img in data["images"]}
    categories = {cat["id"]: cat["name"] for cat in data["categories"]}
    return images, categories


def convert_detection(
    data: dict[str, Any],
    prompt: str = DEFAULT_PROMPT,
    image_prefix: str | None = None,
    skip_invalid: bool = False,
) -> tuple[list[dict[str, Any]], Counter]:
    """COCO detection JSON -> (messages records, counts of images written/skipped, invalid annotations)."""
    images, categories = _index_coco(data)
    stats: Counter = Counter()
    # Per image: category name -> boxes; dicts keep the order of first appearance.
    per_image: dict[Any, dict[str, list[list[int | float]]]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotation {i}"
        try:
            if ann.get("image_id") not in images:
                raise AnnotationError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
            if ann.get("category_id") not in categories:
                raise AnnotationError(
                    f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'"
                )
            img = images[ann["image_id"]]
            box = xywh_to_xyxy(ann.get("bbox"), (img["width"], img["height"]), where)
        except AnnotationError:
            if not skip_invalid:
                raise
            stats["invalid annotations skipped"] += 1
            continue
        groups = per_image.setdefault(ann["image_id"], {})
        groups.setdefault(categories[ann["category_id"]], []).append(box)
    samples = []
    for image_id, img in images.items():
        if image_id not in per_image:
            stats["images without annotations skipped"] += 1
            continue
        path = image_path(img["file_name"], image_prefix)
        samples.append(_grounding_sample(image_id, path, prompt, per_image[image_id]))
    stats["samples written"] = len(samples)
    return samples, stats


def _sentences(ann: dict[str, Any], where: str) -> list[str]:
    raw = ann.get("sentences")
    if not isinstance(raw, list) or not raw:
        raise AnnotationError(f"{where}: 'sentences' must be a non-empty list, got {raw!r}")
    out = []
    for s in raw:
        text = s.get("sent") if isinstance(s, dict) else s
        if not isinstance(text, str) or not text.strip():
            raise AnnotationError(f"{where}: a sentence must be a non-empty string, got {s!r}")
        out.append(text)
    return out


def convert_refcoco(
    data: list[dict[str, Any]], image_prefix: str | None = None, skip_invalid: bool = False
) -> tuple[list[dict[str, Any]], Counter]:
    """RefCOCO-style list -> (one messages record per sentence, counts)."""
    if not isinstance(data, list):
        raise AnnotationError(f"RefCOCO input must be a JSON list, got {type(data).__name__}")
    stats: Counter = Counter()
    samples = []
    for i, ann in enumerate(data):
        where = f"annotation {i}"
        try:
            if not isinstance(ann, dict) or not isinstance(ann.get("file_name"), str):
                raise AnnotationError(f"{where}: needs a 'file_name' string")
            size = (ann["width"], ann["height"]) if "width" in ann and "height" in ann else None
            box = xywh_to_xyxy(ann.get("bbox"), size, where)
            sentences = _sentences(ann, where)
        except AnnotationError:
            if not skip_invalid:
                raise
            stats["invalid annotations skipped"] += 1
            continue
        base_id = ann.get("id", i)
        for j, sentence in enumerate(sentences):
            samples.append(
                {
                    "id": f"{base_id}-{j}",
                    "messages": [
                        {"role": "user", "content": REFER_PROMPT + sentence},
                        {"role": "assistant", "content": "<ref-object><bbox>"},
                    ],
                    "images": [image_path(ann["file_name"], image_prefix)],
                    "objects": {"ref": [sentence], "bbox": [box]},
                }
            )
    stats["samples written"] = len(samples)
    return samples, stats


def write_jsonl(samples: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="COCO instances JSON, or a RefCOCO list with --refcoco")
    parser.add_argument("--out", type=Path, required=True, help="output .jsonl (messages format)")
    parser.add_argument("--refcoco", action="store_true", help="input is RefCOCO-style referring data")
    parser.add_argument("--image-prefix", help="folder joined before every file_name")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="user turn for detection samples")
    parser.add_argument("--skip-invalid", action="store_true", help="skip and count bad annotations")
    args = parser.parse_args(argv)
    if args.out.suffix != ".jsonl":
        parser.error(f"--out must be a .jsonl file, got {args.out}")
    if args.prompt.count("<image>") != 1:
        # The reader matches each <image> placeholder with one entry of "images".
        parser.error(f"--prompt must contain exactly one <image>, got {args.prompt!r}")
    data = json.loads(args.input.read_text(encoding="utf-8"))
    try:
        if args.refcoco:
            samples, stats = convert_refcoco(data, args.image_prefix, args.skip_invalid)
        else:
            samples, stats = convert_detection(data, args.prompt, args.image_prefix, args.skip_invalid)
    except AnnotationError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    write_jsonl(samples, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
