"""Regenerate the bundled demo dataset in data/demo/ (deterministic; a few KB).

    python data_tools/make_demo_data.py [--out data/demo] [--count 8]

Writes PNG images of coloured shapes and `demo.jsonl` in the `messages` format: half caption
samples, half grounding samples whose boxes are in pixels through `objects`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qwenvl_ft.data.synthetic import draw_shapes


def build(out: Path, count: int, size: tuple[int, int] = (160, 120)) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        image, shapes = draw_shapes(seed=1000 + i, size=size, count=2)
        rel = f"images/{i:03d}.png"
        image.save(out / rel, optimize=True)
        if i % 2 == 0:
            a, b = shapes
            sample = {
                "id": f"demo-{i:03d}",
                "messages": [
                    {"role": "user", "content": "<image>Describe the picture."},
                    {"role": "assistant", "content": f"A {a.name} and a {b.name} on a plain background."},
                ],
                "images": [rel],
            }
        else:
            target = shapes[i % len(shapes)]
            sample = {
                "id": f"demo-{i:03d}",
                "messages": [
                    {"role": "user", "content": f"<image>Find the {target.name}."},
                    {"role": "assistant", "content": "<ref-object><bbox>"},
                ],
                "images": [rel],
                "objects": {"ref": [target.name], "bbox": [list(target.box)]},
            }
        lines.append(json.dumps(sample))
    path = out / "demo.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="data/demo", type=Path)
    parser.add_argument("--count", default=8, type=int)
    args = parser.parse_args()
    path = build(args.out, args.count)
    print(f"wrote {path} and {args.count} images")


if __name__ == "__main__":
    main()
