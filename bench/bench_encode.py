"""Encoding throughput and padding efficiency on CPU, ours against the transformers path, one run.

    python bench/bench_encode.py [--samples 400] [--family qwen2_5_vl] [--out bench/results/encode_cpu.json]
    python bench/bench_encode.py --case photos [--max-pixels 802816]   # -> bench/results/encode_photos_cpu.json

Data: synthetic multi-turn samples with one image each (sizes 64..640 px a side, 1..3 turns),
written as `messages` JSONL plus PNG files, so both sides read, decode, resize and tokenize the
same bytes.

- ours: `SFTDataset[i]` (read the line, load the image, resize + normalise, render, tokenize,
  assistant-only labels).
- baseline: what `Qwen2_5_VLProcessor.__call__` does (the processor class itself cannot be built
  without torchvision): `apply_chat_template`, the PIL image processor, `<|image_pad|>` expanded
  per image, the tokenizer. It computes no labels, so it is a lower bound on a user's script.

Padding efficiency (real tokens / tokens in the batch) for batches of 8 in random order: ours
(per-batch padding to a multiple of 8) against padding every sample to max_length.

`--case photos`: camera-like photos (`synthetic_photo.camera_photo`: gradients, shaded shapes, fine
texture, sensor noise) of several sizes, each as JPEG (quality 90) and PNG, one image and one short
turn a sample; per size and format, samples/s of ours with `data.image_decode` draft and exact
against the baseline above, and how far draft's pixel_values are from the baseline's (and, for
scale, how far JPEG's own compression moves them from the lossless source's).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from qwenvl_ft import __version__
from qwenvl_ft.config import DataConfig, DatasetSpec
from qwenvl_ft.data.collate import PaddingCollator, padding_efficiency
from qwenvl_ft.data.dataset import build_dataset
from qwenvl_ft.data.synthetic import draw_shapes
from qwenvl_ft.data.synthetic_photo import camera_photo
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.tokenizer import build_tokenizer

WORDS = "the a red blue green square circle triangle left right top bottom near far small large shape image".split()


def make_data(root: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        size = (rng.randint(64, 640), rng.randint(64, 640))
        image, _ = draw_shapes(seed=i, size=size, count=2)
        image.save(root / f"{i}.png")
        messages = []
        for t in range(rng.randint(1, 3)):
            question = " ".join(rng.choices(WORDS, k=rng.randint(4, 20)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(5, 120)))
            messages += [
                {"role": "user", "content": ("<image>" if t == 0 else "") + question + "?"},
                {"role": "assistant", "content": answer + "."},
            ]
        lines.append(json.dumps({"id": i, "messages": messages, "images": [f"{i}.png"]}))
    path = root / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def baseline_encode(path: Path, proc: VLProcessor, pixels_out: list | None = None) -> float:
    """Seconds to encode every sample the way the transformers processor does (each sample's
    pixel_values appended to `pixels_out` when given)."""
    from PIL import Image

    tok, ip = proc.tokenizer, proc.image_processor
    pad = proc.family.chat.image_pad
    start = time.perf_counter()
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        image = Image.open(path.parent / rec["images"][0]).convert("RGB")
        messages = []
        for m in rec["messages"]:
            text = m["content"].replace("<image>", "")
            content = ([{"type": "image"}] if "<image>" in m["content"] else []) + [
                {"type": "text", "text": text}
            ]
            messages.append({"role": m["role"], "content": content})
        text = tok.apply_chat_template(messages, tokenize=False, chat_template=proc.family.chat_template)
        pixels = ip(images=[image], return_tensors="pt")
        n = int(pixels["image_grid_thw"][0].prod()) // ip.merge_size**2
        text = text.replace(pad, pad * n)
        tok(text, return_tensors="pt")
        if pixels_out is not None:
            pixels_out.append(pixels["pixel_values"])
    return time.perf_counter() - start


def ours_encode(ds) -> float:
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - start


PHOTO_SIZES = [(4032, 3024), (2048, 1536), (1024, 768), (640, 480)]
"""12 MP and 3 MP (over the cap: drafted), 0.8 MP and 0.3 MP (within it: decoded in full)."""


def photos(family_name: str, max_pixels: int, repeats: int, per_size: int = 9) -> dict:
    """The camera-photo case: samples/s per size and format, draft / exact / baseline."""
    family = get_family(family_name)
    proc = VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template))
    proc.set_pixel_range(None, max_pixels)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in PHOTO_SIZES:
            sources = [camera_photo(size, seed) for seed in range(3)]  # each used per_size / 3 times
            for fmt in ("jpg", "png"):
                root = Path(tmp) / f"{size[0]}x{size[1]}-{fmt}"
                root.mkdir()
                for k, image in enumerate(sources):
                    image.save(root / f"{k}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
                lines = [
                    {
                        "id": i,
                        "messages": [
                            {"role": "user", "content": "<image>What is in the picture?"},
                            {"role": "assistant", "content": "A few shapes on a textured background."},
                        ],
                        "images": [f"{i % len(sources)}.{fmt}"],
                    }
                    for i in range(per_size)
                ]
                path = root / "bench.jsonl"
                path.write_text("".join(json.dumps(line) + "\n" for line in lines))
                cases.append(photo_case(proc, path, size, fmt, sources, repeats))
                print(json.dumps(cases[-1]), file=sys.stderr)
    return {
        "command": "python " + " ".join(sys.argv),
        "version": __version__,
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
        "family": family.name,
        "max_pixels": max_pixels,
        "samples_per_case": per_size,
        "cases": cases,
    }


def photo_case(proc: VLProcessor, path: Path, size, fmt: str, sources, repeats: int) -> dict:
    data = DataConfig(train=[DatasetSpec(path=str(path))], max_length=4096)
    sets = {}
    for mode in ("draft", "exact"):
        proc.image_decode = mode
        sets[mode] = build_dataset(data, proc, seed=0, cache_dir=None, progress=False)[0]
    times: dict[str, list[float]] = {"draft": [], "exact": [], "baseline": []}
    base_pixels: list[torch.Tensor] = []
    for r in range(repeats):  # interleaved, so drift in machine load hits every side alike
        for mode in ("draft", "exact"):
            proc.image_decode = mode
            times[mode].append(ours_encode(sets[mode]))
        times["baseline"].append(baseline_encode(path, proc, base_pixels if r == 0 else None))
    n = len(sets["draft"])
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    # Draft's pixel_values against the baseline's, sample by sample (item.index: the line; the
    # dataset's order is mixed)
    proc.image_decode = "draft"
    diffs = [
        (sets["draft"][i].pixel_values - base_pixels[item.index]).abs()
        for i, item in enumerate(sets["draft"].items)
    ]
    out = {
        "size": f"{size[0]}x{size[1]}",
        "format": fmt,
        "resized_to": "x".join(map(str, proc.resized_size(size[1], size[0])[::-1])),
        "draft_samples_per_s": round(rate["draft"], 2),
        "exact_samples_per_s": round(rate["exact"], 2),
        "baseline_samples_per_s": round(rate["baseline"], 2),
        "draft_over_baseline": round(rate["draft"] / rate["baseline"], 3),
        "exact_over_baseline": round(rate["exact"] / rate["baseline"], 3),
        "draft_vs_baseline_pixel_values_mean_abs": round(
            float(torch.cat([d.flatten() for d in diffs]).mean()), 5
        ),
        "draft_vs_baseline_pixel_values_max_abs": round(float(max(d.max() for d in diffs)), 4),
    }
    if fmt == "jpg":  # for scale: what JPEG quality 90 itself changes, against the lossless source
        lossless = [proc.image_processor(images=[s], return_tensors="pt")["pixel_values"] for s in sources]
        jpeg = [(base_pixels[k] - lossless[k]).abs() for k in range(len(sources))]
        out["jpeg_q90_vs_source_pixel_values_mean_abs"] = round(
            float(torch.cat([d.flatten() for d in jpeg]).mean()), 5
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", choices=["shapes", "photos"], default="shapes")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="default 401408 (shapes), 802816 (photos: the recipes' cap)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker's view; both sides get the same
    if args.case == "photos":
        result = photos(args.family, args.max_pixels or 802816, args.repeats)
        write(result, args.out or Path("bench/results/encode_photos_cpu.json"))
        return
    args.max_pixels = args.max_pixels or 401408  # 512*28*28, a common fine-tuning cap
    args.out = args.out or Path("bench/results/encode_cpu.json")

    family = get_family(args.family)
    proc = VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template))
    proc.set_pixel_range(None, args.max_pixels)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_data(Path(tmp), args.samples, seed=0)
        data = DataConfig(train=[DatasetSpec(path=str(path))], max_length=args.max_length)
        t0 = time.perf_counter()
        ds, report = build_dataset(data, proc, seed=0, cache_dir=None, progress=False)
        check_s = time.perf_counter() - t0
        ours, base = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides alike
            ours.append(ours_encode(ds))
            base.append(baseline_encode(path, proc))
        collate = PaddingCollator(proc.tokenizer.pad_token_id)
        order = list(range(len(ds)))
        random.Random(0).shuffle(order)
        batches = [collate([ds[i] for i in order[k : k + 8]]) for k in range(0, len(order) - 7, 8)]
        ours_eff = sum(float(b["attention_mask"].sum()) for b in batches) / sum(
            b["input_ids"].numel() for b in batches
        )
        lengths = ds.lengths()
        max_len_eff = sum(lengths) / (len(lengths) * args.max_length)

    n = len(ds)
    result = {
        "command": "python " + " ".join(sys.argv),
        "version": __version__,
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
        "family": family.name,
        "samples": n,
        "tokens_per_sample_mean": round(statistics.mean(lengths), 1),
        "ours_samples_per_s": round(n / statistics.median(ours), 1),
        "baseline_samples_per_s": round(n / statistics.median(base), 1),
        "ours_over_baseline": round(statistics.median(base) / statistics.median(ours), 3),
        "one_time_check_s": round(check_s, 2),
        "padding_efficiency_ours": round(ours_eff, 3),
        "padding_efficiency_pad_to_max_length": round(max_len_eff, 3),
        "dropped": len(report.dropped),
        "per_batch_efficiency_min": round(min(padding_efficiency(b) for b in batches), 3),
    }
    write(result, args.out)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
