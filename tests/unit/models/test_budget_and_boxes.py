"""Visual-token budgets and box text, against hand-computed numbers and the transformers processor."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor

# (family, width, height, max_pixels, expected resized (h, w), expected tokens), worked out by hand:
# Qwen2-VL 160x120: round(120/28)=4 -> 112, round(160/28)=6 -> 168; (112/28)*(168/28) = 24 tokens.
# Qwen2-VL 20x10: rounds to 28x28 = 784 < 3136, scale by sqrt(3136/200)=3.96: ceil(1.41)*28=56, ceil(2.83)*28=84.
# Qwen2-VL 1000x500 capped at 50176: beta = sqrt(500000/50176) = 3.157; floor(158.4/28)=5 -> 140, floor(316.8/28)=11 -> 308.
# Qwen3-VL 160x120 (factor 32): 128x160 = 20480 < 65536, scale 1.8475: ceil(6.93)=7 -> 224, ceil(9.24)=10 -> 320; 70 tokens.
# Qwen-VL: always 448x448 and 256 tokens.
CASES = [
    ("qwen2_vl", 160, 120, None, (112, 168), 24),
    ("qwen2_5_vl", 160, 120, None, (112, 168), 24),
    ("qwen2_vl", 20, 10, None, (56, 84), 6),
    ("qwen2_5_vl", 1000, 500, 50176, (140, 308), 55),
    ("qwen3_vl", 160, 120, None, (224, 320), 70),
    ("qwen_vl", 160, 120, None, (448, 448), 256),
]


@pytest.mark.parametrize(("family", "w", "h", "max_pixels", "resized", "tokens"), CASES)
def test_budget_by_hand(family, w, h, max_pixels, resized, tokens):
    fam = get_family(family)
    assert fam.resized_size(h, w, max_pixels=max_pixels) == resized
    assert fam.image_tokens(h, w, max_pixels=max_pixels) == tokens


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_budget_matches_transformers_image_processor(family, real_tokenizer):
    fam = get_family(family)
    proc = VLProcessor.for_family(fam, real_tokenizer(family))
    proc.set_pixel_range(None, 200_000)
    rng = random.Random(0)
    sizes = [(rng.randint(8, 900), rng.randint(8, 900)) for _ in range(12)] + [(2000, 30), (33, 1500)]
    for w, h in sizes:
        out = proc.images([Image.new("RGB", (w, h))])
        t, gh, gw = out["image_grid_thw"][0].tolist()
        merge = fam.vision.merge_size**2
        assert proc.image_tokens(h, w) == t * gh * gw // merge, (w, h)
        assert proc.resized_size(h, w) == (gh * fam.vision.patch_size, gw * fam.vision.patch_size)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ValueError, match=r"aspect ratio of a 3000x10 image exceeds 200"):
        get_family("qwen2_vl").image_tokens(10, 3000)


# Box (48, 50, 107, 109) on a 160x120 image. In [0, 1000): 48/160 -> 300, 50/120 -> 416.7 -> 417,
# 107/160 -> 668.75 -> 669, 109/120 -> 908.3 -> 908. Qwen2.5-VL resizes 160x120 to 168x112:
# 48*168/160 = 50.4 -> 50, 50*112/120 = 46.7 -> 47, 107*1.05 = 112.35 -> 112, 109*112/120 = 101.7 -> 102.
BOX_TEXT = {
    "qwen_vl": ("<ref>red square</ref>", "<box>(300,417),(669,908)</box>"),
    "qwen2_vl": (
        "<|object_ref_start|>red square<|object_ref_end|>",
        "<|box_start|>(300,417),(669,908)<|box_end|>",
    ),
    "qwen2_5_vl": (
        "<|object_ref_start|>red square<|object_ref_end|>",
        "<|box_start|>(50,47),(112,102)<|box_end|>",
    ),
    "qwen3_vl": ("red square", "[300, 417, 669, 908]"),
}


@pytest.mark.parametrize("family", sorted(BOX_TEXT))
def test_box_text_by_hand(family):
    fam = get_family(family)
    resized = fam.resized_size(120, 160)[::-1]
    ref, box = BOX_TEXT[family]
    assert fam.format_ref("red square") == ref
    assert fam.format_box((48, 50, 107, 109), (160, 120), resized) == box


def test_far_edge_stays_below_1000():
    assert (
        get_family("qwen2_vl").format_box((0, 0, 160, 120), (160, 120), (168, 112))
        == "<|box_start|>(0,0),(999,999)<|box_end|>"
    )


@pytest.mark.parametrize("family", ["qwen_vl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_round_trip_within_one_unit(family):
    fam = get_family(family)
    rng = random.Random(1)
    for _ in range(200):
        w, h = rng.randint(20, 3000), rng.randint(20, 3000)
        resized = fam.resized_size(h, w)[::-1]
        x1, x2 = sorted(rng.uniform(0, w) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, h) for _ in range(2))
        text = f"The answer: {fam.format_ref('it')}{fam.format_box((x1, y1, x2, y2), (w, h), resized)}."
        (back,) = fam.parse_boxes(text, (w, h), resized)
        unit_x = w / 1000 if fam.boxes.coords == "norm1000" else w / resized[0]
        unit_y = h / 1000 if fam.boxes.coords == "norm1000" else h / resized[1]
        for got, want, unit in zip(back, (x1, y1, x2, y2), (unit_x, unit_y, unit_x, unit_y), strict=True):
            assert abs(got - want) <= unit + 1e-9
