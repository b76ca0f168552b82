"""Visual-token budgets and box text, against hand-computed numbers and the transformers processor."""

from __future__ import annotations

import random

import pytest
from family_facts import BOX, FACTS, UNSET, need, registered
from PIL import Image

from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor


def budget_cases() -> list:
    """(family, Budget) for every hand-worked budget in tests/family_facts.py; (family, None) for a
    family without them, so its test fails and says so."""
    cases = []
    for name in registered():
        budgets = getattr(FACTS.get(name), "budgets", UNSET)
        for b in (None,) if budgets is UNSET else budgets:
            cases.append(pytest.param(name, b, id=name if b is None else f"{name}-{b.width}x{b.height}"))
    return cases


@pytest.mark.parametrize(("family", "budget"), budget_cases())
def test_budget_by_hand(family, budget):
    fam, b = get_family(family), budget or need(family, "budgets")
    assert fam.resized_size(b.height, b.width, max_pixels=b.max_pixels) == b.resized
    assert fam.image_tokens(b.height, b.width, max_pixels=b.max_pixels) == b.tokens


@pytest.mark.parametrize("family", registered(lambda f: f.vision.fixed_size is None))
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


# The sweep: sides under one or two patches, ratios of exactly 200, an exact factor, a photo.
SWEEP = [(1, 1), (1, 200), (200, 1), (14, 2800), (2800, 14), (27, 27), (28, 28), (32, 32), (2, 400),
         (400, 2), (112, 10), (10, 112), (33, 17), (640, 480), (3000, 2000)]  # fmt: skip


def published_pixel_settings(fam) -> list[tuple[int, int]]:
    """(min_pixels, max_pixels): the published preprocessor_config's, the model cards' recommended
    256..1280 visual tokens, and the tiny recipes' fixed 96x96."""
    f = fam.vision.factor
    return [(fam.vision.min_pixels, fam.vision.max_pixels), (256 * f * f, 1280 * f * f), (9216, 9216)]


@pytest.mark.parametrize("family", registered(lambda f: f.vision.fixed_size is None))
def test_the_check_counts_the_processors_features_at_every_size(family, real_tokenizer):
    """What the data check renders for an image of each size (the pad tokens it counts) equals the
    feature rows the image processor produces for it, under every published pixel setting: a
    difference is "image features and image tokens do not match" in the middle of a run."""
    from qwenvl_ft.data.check import Size
    from qwenvl_ft.data.conversation import Conversation, Segment, Turn
    from qwenvl_ft.data.encode import render

    fam = get_family(family)
    proc = VLProcessor.for_family(fam, real_tokenizer(family))
    conv = Conversation(
        "x", [Turn("user", [Segment("image", "x.png")]), Turn("assistant", [Segment("text", "a")])]
    )
    merge = fam.vision.merge_size**2
    for low, high in published_pixel_settings(fam):
        proc.set_pixel_range(low, high)
        for w, h in SWEEP:
            pieces = render(conv, proc, [Size(w, h)])
            counted = sum(p.repeat for p in pieces if p.text == fam.chat.image_pad)
            out = proc.images([Image.new("RGB", (w, h), (200, 30, 30))])
            rows = out["pixel_values"].shape[0] // merge
            assert counted == rows == int(out["image_grid_thw"][0].prod()) // merge, (w, h, low, high)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ValueError, match=r"aspect ratio of a 3000x10 image exceeds 200"):
        get_family("qwen2_vl").image_tokens(10, 3000)


@pytest.mark.parametrize("family", registered())
def test_box_text_by_hand(family):
    fam, facts = get_family(family), need(family, "ref_text", "box_text")
    resized = fam.resized_size(120, 160)[::-1]
    assert fam.format_ref("red square") == facts.ref_text
    assert fam.format_box(BOX, (160, 120), resized) == facts.box_text


def test_far_edge_stays_below_1000():
    assert (
        get_family("qwen2_vl").format_box((0, 0, 160, 120), (160, 120), (168, 112))
        == "<|box_start|>(0,0),(999,999)<|box_end|>"
    )


@pytest.mark.parametrize("family", registered())
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
