"""Loading images named by samples: local paths, http(s) URLs (only when allowed), data: URIs,
in-memory PIL images and Hugging Face `Image` feature dicts ({"bytes", "path"}).

`image_size` reads only the header, so token budgets are known without decoding pixels;
`load_image` decodes fully (a truncated or corrupt file fails here, with its name). Both raise
only `ImageError`, whatever PIL raises, and both refuse images over PIL's decompression-bomb
limit (`PIL.Image.MAX_IMAGE_PIXELS`) whether PIL itself would only warn or refuse, so the data
check and training agree on them.

With `reduce_to` (the recipe's `data.image_decode: draft`), a JPEG much larger than the size the
model resizes it to is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT, PIL's draft mode):
the largest reduction that still leaves at least the target size in both dimensions, so the
normal resize that follows only resamples from fewer pixels. Decoding and resizing a 12 MP photo to
0.8 MP then takes about 0.05 s instead of 0.23 s (one core). The result is a `ReducedImage`, which
keeps the file's own size for token budgets and box coordinates. Orientation is the stored one in
both modes (no EXIF transpose), so boxes keep meaning pixels of the file.
"""

from __future__ import annotations

import base64
import io
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..models.processor import ReducedImage

URL_TIMEOUT_S = 30


class ImageError(ValueError):
    """An image that cannot be used; the message names it."""


def describe(ref: Any) -> str:
    if isinstance(ref, (str, Path)):
        return str(ref)
    if isinstance(ref, dict):
        return str(ref.get("path") or "<image bytes>")
    return f"<in-memory {type(ref).__name__}>"


def _open(ref: Any, allow_urls: bool) -> Image.Image:
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, dict):  # datasets' Image feature without decoding
        if ref.get("bytes"):
            return Image.open(io.BytesIO(ref["bytes"]))
        ref = ref.get("path")
    if not isinstance(ref, (str, Path)) or not str(ref):
        raise ImageError(f"not an image reference: {ref!r}")
    text = str(ref)
    if text.startswith("data:"):
        try:
            return Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[1])))
        except (IndexError, ValueError) as e:
            raise ImageError(f"bad data: URI ({e})") from None
    if "://" in text:
        if not allow_urls:
            raise ImageError(
                f"{text}: image URLs are not fetched unless the recipe sets data.allow_urls: true"
            )
        try:
            with urllib.request.urlopen(text, timeout=URL_TIMEOUT_S) as resp:
                return Image.open(io.BytesIO(resp.read()))
        except OSError as e:
            raise ImageError(f"{text}: cannot fetch ({e})") from None
    path = Path(text)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    return Image.open(path)


def _open_checked(ref: Any, allow_urls: bool) -> Image.Image:
    """`_open` with PIL's decompression-bomb limit as an error at any size over it."""
    with warnings.catch_warnings():  # PIL warns between the limit and twice it, raises above
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _open(ref, allow_urls)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        if im is not ref:
            im.close()
        raise ImageError(
            f"{describe(ref)}: too large: {im.width}x{im.height} = {im.width * im.height} pixels, over "
            f"PIL's decompression-bomb limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)"
        )
    return im


def _as_image_error(ref: Any, e: Exception, what: str) -> ImageError:
    if isinstance(e, ImageError):
        return e
    if isinstance(e, UnidentifiedImageError):
        return ImageError(f"{describe(ref)}: not a readable image")
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(f"{describe(ref)}: too large: {e}")
    if isinstance(e, OSError):  # truncated / corrupt data surfaces on load()
        return ImageError(f"{describe(ref)}: {what} ({e})")
    # PIL raises SyntaxError, struct.error, ValueError... on some broken headers
    return ImageError(f"{describe(ref)}: {what} ({type(e).__name__}: {e})")


def image_size(ref: Any, allow_urls: bool = False) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with _open_checked(ref, allow_urls) as im:
            return im.size
    except Exception as e:
        raise _as_image_error(ref, e, "cannot read") from None


def verify_image(ref: Any, allow_urls: bool = False) -> tuple[int, int]:
    """(width, height) of an image whose data decodes; a corrupt or truncated file raises `ImageError`
    as `load_image` would. A JPEG decodes at 1/8 scale: libjpeg's scaled decode still reads and
    entropy-decodes all of the file's data, which is where truncation and corruption show, and only
    the inverse DCT shrinks (a 0.63 MP photo: 0.97 ms instead of 1.66, with the same errors).
    Other formats decode in full."""
    try:
        with _open_checked(ref, allow_urls) as im:
            full = im.size
            if im is not ref:
                im.draft(im.mode, (max(1, full[0] // 8), max(1, full[1] // 8)))
            im.load()
            return full
    except Exception as e:
        raise _as_image_error(ref, e, "corrupt image") from None


def draft_scale(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The largest JPEG decode reduction (8, 4, 2 or 1) whose result, ceil(size / s) on each side,
    is still at least `target` (width, height) on both sides."""
    (w, h), (tw, th) = size, target
    for s in (8, 4, 2):
        if -(-w // s) >= tw and -(-h // s) >= th:
            return s
    return 1


def load_image(
    ref: Any,
    allow_urls: bool = False,
    reduce_to: Callable[[int, int], tuple[int, int]] | None = None,
) -> Image.Image | ReducedImage:
    """The decoded RGB image; corrupt or truncated files raise `ImageError` naming the file.

    reduce_to: (width, height) of the file -> the (width, height) its pixels are resized to.
    Given, a JPEG at least twice that size in both dimensions is decoded at reduced scale and
    returned as a `ReducedImage`; anything else (other formats, smaller JPEGs, in-memory images)
    loads exactly as without it.
    """
    try:
        im = _open_checked(ref, allow_urls)
        full = im.size
        if reduce_to is not None and im is not ref:  # never change a caller's own image object
            scale = draft_scale(full, reduce_to(*full))
            if scale > 1:
                # Asking for (w // s, h // s) makes draft() choose exactly s (it takes the largest
                # of 8, 4, 2 not above size // asked); it decodes ceil(w / s) x ceil(h / s). The
                # mode asked for is the file's own: only the scale changes, not the colours.
                im.draft(im.mode, (full[0] // scale, full[1] // scale))
        im.load()
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        return rgb if rgb.size == full else ReducedImage(rgb, *full)
    except Exception as e:
        raise _as_image_error(ref, e, "corrupt image") from None


def load_for(processor, ref: Any, allow_urls: bool = False) -> Image.Image | ReducedImage:
    """An image for `processor.images`, decoded as its `image_decode` says (`load_image`'s reduce_to)."""
    return load_image(ref, allow_urls, processor.decode_target if processor.image_decode == "draft" else None)
