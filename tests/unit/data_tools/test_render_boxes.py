"""render_boxes: boxes drawn on the sample's image(s) in pixels, for pixel and [0, 1000) boxes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "data_tools"))

import render_boxes  # noqa: E402

from qwenvl_ft.data.synthetic import draw_shapes  # noqa: E402


def shapes_file(tmp_path: Path, normalized: bool = False) -> tuple[Path, list]:
    image, shapes = draw_shapes(seed=3, size=(200, 150), count=2)
    image.save(tmp_path / "shapes.png")
    w, h = image.size
    boxes = [list(s.box) for s in shapes]
    if normalized:
        boxes = [
            [round(x1 / w * 1000), round(y1 / h * 1000), round(x2 / w * 1000), round(y2 / h * 1000)]
            for x1, y1, x2, y2 in boxes
        ]
    objects = {"ref": [s.name for s in shapes], "bbox": boxes}
    if normalized:
        objects["bbox_type"] = "norm1000"
    records = [
        {"id": "other", "messages": [{"role": "user", "content": "hi"}]},
        {
            "id": "shapes",
            "messages": [
                {"role": "user", "content": "<image>Find both shapes."},
                {"role": "assistant", "content": "<ref-object><bbox> and <ref-object><bbox>"},
            ],
            "images": ["shapes.png"],
            "objects": objects,
        },
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, shapes


def outline_pixels(box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """Points on the left, right and bottom edges (the label sits above or at the top edge)."""
    x1, y1, x2, y2 = box
    my, mx = (y1 + y2) // 2, (x1 + x2) // 2
    return [(x1, my), (x2 - 1, my), (mx, y2 - 1)]


def test_render_pixel_boxes(tmp_path, capsys):
    data, shapes = shapes_file(tmp_path)
    out = tmp_path / "render" / "sample.png"
    assert render_boxes.main([str(data), "--id", "shapes", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (200, 150)
    for i, shape in enumerate(shapes):
        for xy in outline_pixels(shape.box):
            assert image.getpixel(xy) == render_boxes.PALETTE[i], (shape.name, xy)
    printed = capsys.readouterr().out
    assert str(out) in printed
    x1, y1, x2, y2 = shapes[0].box
    assert f"image 1: {shapes[0].name}: [{x1}, {y1}, {x2}, {y2}]" in printed


def test_render_normalized_boxes_by_index(tmp_path):
    data, shapes = shapes_file(tmp_path, normalized=True)
    out = tmp_path / "n.png"
    assert render_boxes.main([str(data), "--index", "1", "--out", str(out)]) == 0
    image = Image.open(out)
    for i, shape in enumerate(shapes):
        # Scaled back by 200x150, [0, 1000) boxes land within a pixel of the originals.
        for xy in outline_pixels(shape.box):
            assert image.getpixel(xy) == render_boxes.PALETTE[i], (shape.name, xy)


def test_render_several_images(tmp_path):
    for name, size in (("a.png", (120, 80)), ("b.png", (80, 120))):
        Image.new("RGB", size, (255, 255, 255)).save(tmp_path / name)
    record = {
        "id": "two",
        "messages": [
            {"role": "user", "content": "<image><image>Where?"},
            {"role": "assistant", "content": "<ref-object><bbox>"},
        ],
        "images": ["a.png", "b.png"],
        "objects": {"ref": ["thing"], "bbox": [[10, 40, 50, 100]], "image_id": [1]},
    }
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(record) + "\n")
    assert render_boxes.main([str(data), "--out", str(tmp_path / "s.png")]) == 0
    first, second = Image.open(tmp_path / "s_1.png"), Image.open(tmp_path / "s_2.png")
    assert first.getcolors() == [(120 * 80, (255, 255, 255))]  # no box on the first image
    assert second.size == (80, 120) and second.getpixel((10, 70)) == render_boxes.PALETTE[0]


def test_unknown_id_is_an_error(tmp_path, capsys):
    data, _ = shapes_file(tmp_path)
    assert render_boxes.main([str(data), "--id", "nope", "--out", str(tmp_path / "x.png")]) == 1
    assert "no sample with id 'nope'" in capsys.readouterr().err
