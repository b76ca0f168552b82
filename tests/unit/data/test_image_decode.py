"""data.image_decode: draft decodes large JPEGs at reduced scale, never below the size the model
resizes them to, and gives the pixel values of a full decode up to resampling noise; exact (and
every PNG, small JPEG and in-memory image) loads exactly as before."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from qwenvl_ft.config import DataConfig, DatasetSpec
from qwenvl_ft.data.dataset import build_dataset
from qwenvl_ft.data.images import ImageError, ReducedImage, draft_scale, load_for, load_image
from qwenvl_ft.data.synthetic_photo import camera_photo
from qwenvl_ft.models import get_family
from qwenvl_ft.models.processor import VLProcessor
from qwenvl_ft.models.tokenizer import build_tokenizer

# Measured on camera_photo JPEGs (quality 90, seeds 0-3, 1280x960 to 1600x1200, Qwen2-VL, Qwen3-VL
# and Qwen-VL processors): mean |draft - exact| of pixel_values 0.0039-0.0062, max 0.078-0.242
# (normalised units; one 8-bit level is 1/(255 * std), 0.0078-0.015). Bounds with about 2x margin.
MEAN_TOLERANCE = 0.015
MAX_TOLERANCE = 0.5


def processor(name: str, max_pixels: int | None = None, mode: str = "draft") -> VLProcessor:
    family = get_family(name)
    proc = VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template))
    if max_pixels:
        proc.set_pixel_range(min(proc.min_pixels, max_pixels), max_pixels)
    proc.image_decode = mode
    return proc


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg(camera_photo((1600, 1200), seed=1))


def full_decode(data: bytes) -> Image.Image:
    """What loading did before draft decoding existed (and what a transformers script does)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.mark.parametrize(
    ("name", "max_pixels"), [("qwen2_vl", 200704), ("qwen3_vl", 65536), ("qwen_vl", None)]
)
def test_draft_gives_the_full_decodes_pixel_values_up_to_resampling_noise(photo, name, max_pixels):
    proc = processor(name, max_pixels)
    reduced = load_for(proc, {"bytes": photo})
    assert isinstance(reduced, ReducedImage) and reduced.size == (1600, 1200)
    assert reduced.image.width < 1600  # a real reduction, else this test compares exact with exact
    draft = proc.images([reduced])
    exact = proc.image_processor(images=[full_decode(photo)], return_tensors="pt")
    assert draft["pixel_values"].shape == exact["pixel_values"].shape
    if "image_grid_thw" in exact:
        assert torch.equal(draft["image_grid_thw"], exact["image_grid_thw"])
    diff = (draft["pixel_values"] - exact["pixel_values"]).abs()
    assert diff.mean() < MEAN_TOLERANCE and diff.max() < MAX_TOLERANCE, (diff.mean(), diff.max())


def test_the_reduced_path_resizes_exactly_as_the_image_processor():
    """Given the full pixels, the path a reduced image takes (resize to the target computed from the
    file's size, then the image processor without resizing) is the image processor's own, bit for bit."""
    image = camera_photo((700, 500), seed=2)
    for name, max_pixels in [("qwen2_vl", 50176), ("qwen3_vl", 65536), ("qwen_vl", None)]:
        proc = processor(name, max_pixels)
        ours = proc.images([ReducedImage(image, *image.size), image])  # mixed with a plain image
        theirs = proc.image_processor(images=[image, image], return_tensors="pt")
        assert ours.keys() == {k for k in ("pixel_values", "image_grid_thw") if k in theirs}
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)


# (file size, target) -> the scale by hand: the largest s in 8, 4, 2, 1 with ceil(side / s) >= target
@pytest.mark.parametrize(
    ("size", "target", "scale"),
    [
        ((4032, 3024), (1008, 756), 4),  # 4032 / 4 = 1008 exactly
        ((4032, 3024), (1036, 756), 2),  # 1008 < 1036: only half
        ((999, 999), (500, 500), 2),  # ceil(999 / 2) = 500
        ((999, 999), (501, 500), 1),
        ((3000, 200), (448, 28), 4),  # 8 leaves 375 < 448 wide (and 25 < 28 high)
        ((448, 448), (448, 448), 1),
        ((6000, 4000), (448, 448), 8),
    ],
)
def test_draft_scale_is_the_largest_reduction_that_keeps_the_target(size, target, scale):
    assert draft_scale(size, target) == scale


@pytest.mark.parametrize(
    ("name", "max_pixels", "size"),
    [
        ("qwen2_vl", 200704, (1601, 1199)),
        ("qwen2_vl", 100352, (1600, 1000)),  # its 800x500 decode alone would resize to another grid
        ("qwen2_vl", 50176, (3000, 200)),
        ("qwen3_vl", 65536, (1003, 2011)),  # min_pixels = max_pixels: the target can round up
        ("qwen2_5_vl", 401408, (2400, 1800)),
        ("qwen_vl", None, (1000, 3000)),
    ],
)
def test_draft_never_decodes_below_the_resize_target(name, max_pixels, size):
    proc = processor(name, max_pixels)
    data = jpeg(camera_photo(size, seed=0))
    target = proc.decode_target(*size)
    image = load_for(proc, {"bytes": data})
    decoded = image.image.size if isinstance(image, ReducedImage) else image.size
    s = draft_scale(size, target)
    assert decoded == (-(-size[0] // s), -(-size[1] // s))
    assert decoded[0] >= target[0] and decoded[1] >= target[1]
    # The token count and the pixel grid agree with the full decode's
    exact = proc.image_processor(images=[full_decode(data)], return_tensors="pt")
    assert proc.images([image])["pixel_values"].shape == exact["pixel_values"].shape


def test_exact_mode_is_the_old_full_decode_byte_for_byte(photo, tmp_path):
    proc = processor("qwen2_vl", 200704, mode="exact")
    path = tmp_path / "p.jpg"
    path.write_bytes(photo)
    image = load_for(proc, str(path))
    assert isinstance(image, Image.Image) and image.tobytes() == full_decode(photo).tobytes()
    ours = proc.images([image])["pixel_values"]
    assert torch.equal(
        ours, proc.image_processor(images=[full_decode(photo)], return_tensors="pt")["pixel_values"]
    )
    assert load_image(str(path)).tobytes() == image.tobytes()  # no reduce_to: the same


def test_png_small_jpeg_and_in_memory_images_are_unaffected(tmp_path):
    proc = processor("qwen2_vl", 50176)
    big = camera_photo((1200, 900), seed=3)
    big.save(tmp_path / "big.png")
    png = load_for(proc, str(tmp_path / "big.png"))
    assert isinstance(png, Image.Image) and png.tobytes() == big.tobytes()
    small = jpeg(camera_photo((300, 200), seed=3))  # under twice the target: nothing to gain
    assert isinstance(load_for(proc, {"bytes": small}), Image.Image)
    assert load_for(proc, big) is big  # a caller's image object is used as it is


def test_exif_rotated_jpeg_keeps_its_stored_orientation_in_both_modes():
    """No mode applies EXIF orientation (boxes are in pixels of the file as stored): draft reduces
    the stored image, and its size for budgets and boxes is the stored one."""
    stored = camera_photo((1600, 1000), seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = jpeg(stored, exif=exif.tobytes())
    exact = processor("qwen2_vl", 100352, mode="exact")
    draft = processor("qwen2_vl", 100352)
    image = load_for(draft, {"bytes": data})
    assert isinstance(image, ReducedImage) and image.size == (1600, 1000)
    assert image.image.width > image.image.height  # reduced as stored, not turned
    full = load_for(exact, {"bytes": data})
    assert full.size == (1600, 1000)
    diff = (draft.images([image])["pixel_values"] - exact.images([full])["pixel_values"]).abs()
    assert diff.mean() < MEAN_TOLERANCE and diff.max() < MAX_TOLERANCE


def test_truncated_jpeg_still_fails_in_draft_mode(photo):
    with pytest.raises(ImageError, match="corrupt image"):
        load_for(processor("qwen2_vl", 50176), {"bytes": photo[: len(photo) // 2]})


def test_training_samples_from_drafted_images_keep_the_checked_length(tmp_path):
    """The dataset encodes a drafted photo to the token count the data check computed from the
    header, with boxes written from the file's size, as in exact mode."""
    for i, size in enumerate([(2000, 1500), (640, 480)]):
        camera_photo(size, seed=i).save(tmp_path / f"{i}.jpg", quality=90)
    lines = [
        {
            "messages": [
                {"role": "user", "content": "<image>Where is it?"},
                {"role": "assistant", "content": "<ref-object><bbox>"},
            ],
            "images": [f"{i}.jpg"],
            "objects": {"ref": ["it"], "bbox": [[50, 60, 400, 300]]},  # pixels of the file
        }
        for i in range(2)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = DataConfig(train=[DatasetSpec(path=str(tmp_path / "d.jsonl"))])
    encoded = {}
    for mode in ("exact", "draft"):
        ds, report = build_dataset(
            data, processor("qwen2_vl", 200704, mode), 0, cache_dir=None, progress=False
        )
        encoded[mode] = [ds[i] for i in range(len(ds))]
    for e, d in zip(encoded["exact"], encoded["draft"], strict=True):
        assert e.input_ids == d.input_ids and e.labels == d.labels
        assert torch.equal(e.image_grid_thw, d.image_grid_thw)
        assert (e.pixel_values - d.pixel_values).abs().mean() < MEAN_TOLERANCE
