"""Convert a dataset between the qwen_vl, messages and llava file formats.

    python data_tools/convert_format.py INPUT --to {qwen_vl,messages,llava} --out OUTPUT \
        [--from auto|qwen_vl|messages|llava|openai] [--image-root DIR] [--boxes-as-text] \
        [--absolute-paths]

INPUT is read with `qwenvl_ft.data.readers.read_file` (.json list or .jsonl; format detected per
record unless --from); OUTPUT is a JSON list for .json or one record per line for .jsonl.

- qwen_vl:  {"id", "conversations": [{"from": "user"|"assistant", "value"}]}, images as
            "Picture N: <img>PATH</img>\\n", boxes as <ref>T</ref><box>(x1,y1),(x2,y2)</box> in [0, 1000).
- messages: {"id", "messages": [{"role", "content"}], "images", "videos", "objects": {"ref", "bbox",
            ["bbox_type": "norm1000"], ["image_id"]}} with <image>/<video>/<ref-object>/<bbox> placeholders.
- llava:    {"id", "image": str|list, "conversations": [{"from": "human"|"gpt", "value"}]}, "<image>\\n".

Boxes: pixel boxes written to qwen_vl are converted to [0, 1000) with the toolkit's rounding
(round(x / width * 1000), clamped to 999), which opens the image with PIL to read its size;
[0, 1000) boxes written to messages stay normalized ("bbox_type": "norm1000"). LLaVA has no box
syntax: boxes and refs are refused unless --boxes-as-text writes them in Qwen-VL text form.
Local media paths are written relative to the output file's folder (or absolute with
--absolute-paths) so the output reads back from wherever it is moved along with its images.
Samples without an id get their 0-based position as id.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from qwenvl_ft.data.conversation import Box, Conversation
from qwenvl_ft.data.readers import DataError, read_file
from qwenvl_ft.models.base import to_family_coords

FORMATS = ("qwen_vl", "messages", "llava")
READ_FORMATS = ("auto", "qwen_vl", "messages", "llava", "openai")
# Placeholders the messages and llava readers replace; literal ones in text would be misread.
_PLACEHOLDERS = re.compile(r"<image>|<video>|<ref-object>|<bbox>")
LLAVA_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


class ConvertError(ValueError):
    """A sample the target format cannot express; the message starts with the sample's location."""


def original_id(conv: Conversation, index: int) -> str:
    """The dataset's own id, else the position."""
    return conv.source_id if conv.source_id is not None else str(index)


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


@dataclass
class Writer:
    """Per-run settings and caches shared by the three record writers."""

    out_dir: str
    boxes_as_text: bool = False
    absolute_paths: bool = False
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)

    def path(self, value: object) -> object:
        """A media path as it should be written in the output."""
        if not isinstance(value, str) or "://" in value or value.startswith("data:"):
            return value  # URLs, data URIs and in-memory images are written unchanged
        if self.absolute_paths:
            return os.path.abspath(value)
        try:
            return Path(os.path.relpath(os.path.abspath(value), self.out_dir)).as_posix()
        except ValueError:  # another drive on Windows: no relative path exists
            return os.path.abspath(value)

    def image_size(self, path: str, where: str) -> tuple[int, int]:
        if path not in self.sizes:
            try:
                with Image.open(path) as im:  # lazy: reads the header only
                    self.sizes[path] = im.size
            except (OSError, ValueError) as e:
                raise ConvertError(
                    f"{where}: cannot read the size of {path} to write a pixel box in [0, 1000): {e}"
                ) from None
        return self.sizes[path]

    def norm1000(self, box: Box, images: list[object], where: str) -> tuple[int, int, int, int]:
        """A box as Qwen-VL's integers in [0, 1000) of its image."""
        xyxy = (box.x1, box.y1, box.x2, box.y2)
        if box.normalized:
            return tuple(min(999, max(0, round(v))) for v in xyxy)
        if not 0 <= box.image < len(images):
            raise ConvertError(
                f"{where}: a box refers to image {box.image + 1} but the sample has {len(images)} image(s)"
            )
        if not isinstance(images[box.image], str):
            raise ConvertError(f"{where}: cannot read the size of a non-path image for a pixel box")
        size = self.image_size(images[box.image], where)
        return to_family_coords(xyxy, size, size, "norm1000")

    def box_text(self, box: Box, images: list[object], where: str) -> str:
        x1, y1, x2, y2 = self.norm1000(box, images, where)
        return f"<box>({x1},{y1}),({x2},{y2})</box>"


def _images(conv: Conversation) -> list[object]:
    return [s.value for t in conv.turns for s in t.segments if s.kind == "image"]


def _check_text(text: str, where: str) -> str:
    if m := _PLACEHOLDERS.search(text):
        raise ConvertError(
            f"{where}: text contains a literal {m.group(0)}, which the reader would take for a placeholder"
        )
    return text


def to_qwen_vl(conv: Conversation, sample_id: str, w: Writer) -> dict[str, Any]:
    images, n_images, turns = _images(conv), 0, []
    for turn in conv.turns:
        parts = []
        for seg in turn.segments:
            if seg.kind == "text":
                parts.append(str(seg.value))
            elif seg.kind == "image":
                n_images += 1
                parts.append(f"Picture {n_images}: <img>{w.path(seg.value)}</img>\n")
            elif seg.kind == "ref":
                parts.append(f"<ref>{seg.value}</ref>")
            elif seg.kind == "box":
                # Qwen-VL ties a box to the latest image; any other image cannot be expressed.
                if seg.value.image != max(n_images - 1, 0):
                    raise ConvertError(
                        f"{conv.id}: a box on image {seg.value.image + 1} follows picture {n_images}; "
                        "qwen_vl puts a box on the latest picture"
                    )
                parts.append(w.box_text(seg.value, images, conv.id))
            else:
                raise ConvertError(f"{conv.id}: qwen_vl has no syntax for {seg.kind} segments")
        turns.append({"from": turn.role, "value": "".join(parts)})
    return {"id": sample_id, "conversations": turns}


def to_messages(conv: Conversation, sample_id: str, w: Writer) -> dict[str, Any]:
    tags = {"image": "<image>", "video": "<video>", "ref": "<ref-object>", "box": "<bbox>"}
    lists: dict[str, list[Any]] = {k: [] for k in tags}
    messages = []
    for turn in conv.turns:
        parts = []
        for seg in turn.segments:
            if seg.kind == "text":
                parts.append(_check_text(str(seg.value), conv.id))
            else:
                parts.append(tags[seg.kind])
                lists[seg.kind].append(seg.value)
        messages.append({"role": turn.role, "content": "".join(parts)})
    record: dict[str, Any] = {"id": sample_id, "messages": messages}
    if lists["image"]:
        record["images"] = [w.path(v) for v in lists["image"]]
    if lists["video"]:
        record["videos"] = [w.path(v) for v in lists["video"]]
    boxes: list[Box] = lists["box"]
    if lists["ref"] or boxes:
        record["objects"] = {
            "ref": [str(r) for r in lists["ref"]],
            "bbox": [[_num(v) for v in (b.x1, b.y1, b.x2, b.y2)] for b in boxes],
        }
        kinds = {b.normalized for b in boxes}
        if len(kinds) > 1:
            raise ConvertError(f"{conv.id}: mixes pixel and [0, 1000) boxes; messages needs one kind")
        if kinds == {True}:
            record["objects"]["bbox_type"] = "norm1000"
        if any(b.image for b in boxes):
            record["objects"]["image_id"] = [b.image for b in boxes]
    return record


def to_llava(conv: Conversation, sample_id: str, w: Writer) -> dict[str, Any]:
    images, videos, turns = [], [], []
    for turn in conv.turns:
        parts = []
        for seg in turn.segments:
            if seg.kind == "text":
                parts.append(_check_text(str(seg.value), conv.id))
            elif seg.kind == "image":
                images.append(w.path(seg.value))
                parts.append("<image>\n")  # the llava reader takes this newline as the placeholder's
            elif seg.kind == "video":
                videos.append(w.path(seg.value))
                parts.append("<video>")
            elif not w.boxes_as_text:
                raise ConvertError(
                    f"{conv.id}: llava has no syntax for {seg.kind} segments; "
                    "pass --boxes-as-text to write them as Qwen-VL text"
                )
            elif seg.kind == "ref":
                parts.append(f"<ref>{seg.value}</ref>")
            else:
                parts.append(w.box_text(seg.value, _images(conv), conv.id))
        turns.append({"from": LLAVA_ROLES[turn.role], "value": "".join(parts)})
    record: dict[str, Any] = {"id": sample_id}
    if images:
        record["image"] = images[0] if len(images) == 1 else images
    if videos:
        record["video"] = videos[0] if len(videos) == 1 else videos
    record["conversations"] = turns
    return record


WRITERS = {"qwen_vl": to_qwen_vl, "messages": to_messages, "llava": to_llava}


def convert_records(convs: Iterable[Conversation], to: str, w: Writer) -> Iterator[dict[str, Any]]:
    """Neutral conversations -> records of format `to`, counting samples, images and boxes."""
    for i, conv in enumerate(convs):
        record = WRITERS[to](conv, original_id(conv, i), w)
        kinds = Counter(s.kind for t in conv.turns for s in t.segments)
        w.stats.update(samples=1, images=kinds["image"], videos=kinds["video"], boxes=kinds["box"])
        yield record


def write_records(records: Iterable[dict[str, Any]], out: Path) -> None:
    """Stream records to a .jsonl (one per line) or .json (a list) file, replacing it only on success."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if out.suffix == ".jsonl":
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            else:
                f.write("[")
                for i, r in enumerate(records):
                    f.write(("," if i else "") + "\n  " + json.dumps(r, ensure_ascii=False))
                f.write("\n]\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def convert(
    src: Path,
    out: Path,
    to: str,
    fmt: str = "auto",
    image_root: str | None = None,
    boxes_as_text: bool = False,
    absolute_paths: bool = False,
) -> Counter:
    """Convert the file `src` into `out` in format `to`; returns the counts for the summary."""
    if out.suffix not in (".json", ".jsonl"):
        raise ConvertError(f"{out}: the output must be a .json or .jsonl file")
    if out.resolve() == src.resolve():
        raise ConvertError(f"{out}: the output would overwrite the input")
    out.parent.mkdir(parents=True, exist_ok=True)
    w = Writer(os.path.abspath(out.parent), boxes_as_text, absolute_paths)
    write_records(convert_records(read_file(src, fmt, image_root), to, w), out)
    return w.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", type=Path, help="input .json or .jsonl")
    parser.add_argument("--to", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", required=True, type=Path, help="output .json or .jsonl")
    parser.add_argument("--from", dest="fmt", default="auto", choices=READ_FORMATS, help="input format")
    parser.add_argument("--image-root", help="folder relative media paths resolve against")
    parser.add_argument("--boxes-as-text", action="store_true", help="llava: write refs/boxes as text")
    parser.add_argument("--absolute-paths", action="store_true", help="write absolute media paths")
    args = parser.parse_args(argv)
    try:
        stats = convert(
            args.input, args.out, args.to, args.fmt, args.image_root, args.boxes_as_text, args.absolute_paths
        )
    except (DataError, ConvertError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out} ({args.to}): {stats['samples']} samples, {stats['images']} images, "
        f"{stats['videos']} videos, {stats['boxes']} boxes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
