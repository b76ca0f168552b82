"""Draw predicted and reference boxes of grounding predictions side by side, to see what a model learned.

    python data_tools/render_predictions.py DATA_FILE PREDICTIONS... --out boxes.png \
        [--titles before after] [--rows 3] [--scale 3]

PREDICTIONS are JSONL files from `qwenvl-ft predict` or `qwenvl-ft eval MODEL --predictions`
on DATA_FILE (one column each, e.g. the untrained and the trained model). The first --rows
samples of the first file are drawn, one row each, the same samples in every column; a repeated
image and question is drawn once. The reference box is green, just outside its pixels; the
first predicted box is red, just inside its own (parsed back to pixels in the generation's
convention, as `qwenvl-ft eval` scores it), so a perfect prediction shows both. Each panel's
title has the IoU. Small images are enlarged --scale times (nearest neighbour) to stay readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw
from render_boxes import find_sample, load_images

from qwenvl_ft.data.readers import DataError
from qwenvl_ft.eval.metrics import box_iou
from qwenvl_ft.eval.report import predicted_boxes

REFERENCE, PREDICTED = (0, 170, 0), (230, 0, 0)
TITLE_HEIGHT = 16
LINE = 3


def read_records(path: Path) -> dict[str, dict]:
    """Predictions by sample id, in file order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {(r := json.loads(line))["id"]: r for line in lines if line.strip()}


def panel(image: Image.Image, record: dict, title: str, question: str, scale: int) -> Image.Image:
    """The image enlarged, its reference and predicted boxes drawn; title, IoU and question above it."""
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    ref = record["reference_boxes"][0]
    preds = predicted_boxes(record)
    x1, y1, x2, y2 = (round(v * scale) for v in ref)  # x2, y2 exclusive
    draw.rectangle([x1 - LINE, y1 - LINE, x2 - 1 + LINE, y2 - 1 + LINE], outline=REFERENCE, width=LINE)
    if preds:
        x1, y1, x2, y2 = (round(v * scale) for v in preds[0])
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=PREDICTED, width=LINE)
        title += f": IoU {box_iou(preds[0], ref):.2f}"
    else:
        title += ": no box"
    title += f"   {question}"
    out = Image.new("RGB", (big.width, big.height + TITLE_HEIGHT), (255, 255, 255))
    out.paste(big, (0, TITLE_HEIGHT))
    ImageDraw.Draw(out).text((4, 2), title, fill=(0, 0, 0))
    return out


def render(
    data: Path, predictions: list[Path], titles: list[str], rows: int, scale: int, out: Path
) -> list[str]:
    """Write the grid of panels to `out`; returns the sample ids drawn."""
    columns = [read_records(p) for p in predictions]
    ids, grid, drawn = [], [], set()
    for sample_id, record in columns[0].items():
        if len(grid) == rows:
            break
        if not record.get("reference_boxes"):
            continue
        conv = find_sample(data, None, sample_id)
        image = load_images(conv)[0]
        question = " ".join(str(s.value) for s in conv.turns[0].segments if s.kind == "text").strip()
        if (image.tobytes(), question) in drawn:  # a set can repeat an image and question: draw it once
            continue
        drawn.add((image.tobytes(), question))
        ids.append(sample_id)
        missing = [str(p) for p, c in zip(predictions, columns, strict=True) if sample_id not in c]
        if missing:
            raise DataError(f"sample {sample_id} is not in {', '.join(missing)}")
        grid.append(
            [panel(image, c[sample_id], t, question, scale) for c, t in zip(columns, titles, strict=True)]
        )
    if not grid:
        raise DataError(f"{predictions[0]}: no grounding prediction to draw")
    w, h = grid[0][0].size
    gap = 6
    width, height = len(columns) * (w + gap) - gap, len(grid) * (h + gap) + TITLE_HEIGHT
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    for r, row in enumerate(grid):
        for c, p in enumerate(row):
            sheet.paste(p, (c * (w + gap), r * (h + gap)))
    legend = "green: reference box, red: predicted box"
    ImageDraw.Draw(sheet).text((4, height - TITLE_HEIGHT + 2), legend, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="the data file the predictions were made on")
    parser.add_argument("predictions", type=Path, nargs="+", help="predictions JSONL, one column each")
    parser.add_argument("--out", type=Path, required=True, help="output .png")
    parser.add_argument("--titles", nargs="+", help="column titles (default: the file names)")
    parser.add_argument("--rows", type=int, default=1, help="samples drawn, from the first (default 1)")
    parser.add_argument("--scale", type=int, default=3, help="enlargement of the images (default 3)")
    args = parser.parse_args(argv)
    titles = args.titles or [p.stem for p in args.predictions]
    if len(titles) != len(args.predictions):
        parser.error(f"{len(titles)} titles for {len(args.predictions)} prediction files")
    try:
        ids = render(args.data, args.predictions, titles, args.rows, args.scale, args.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: samples {', '.join(ids)}, columns {', '.join(titles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
