"""Hugging Face datasets on disk (save_to_disk folders, parquet) read like JSONL, images included."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_ft.config import DatasetSpec
from qwenvl_ft.data.images import ImageError, image_size, load_image
from qwenvl_ft.data.readers import DataError
from qwenvl_ft.data.sources import Source

datasets = pytest.importorskip("datasets")
REPO = Path(__file__).resolve().parents[3]

MESSAGES = [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."}]


def png_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_save_to_disk_with_image_feature(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"messages": [MESSAGES], "images": [[{"bytes": png_bytes(), "path": None}]]},
        features=datasets.Features(
            {
                "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
                "images": datasets.List(datasets.Image()),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    source = Source(DatasetSpec(path=str(tmp_path / "ds")))
    conv = source.conversation(0)
    assert conv.id == f"{tmp_path / 'ds'}[0]"
    image_ref = conv.turns[0].segments[0].value
    assert isinstance(image_ref, dict) and image_ref["bytes"]  # left undecoded until the sample is used
    assert image_size(image_ref) == (40, 30) and load_image(image_ref).mode == "RGB"


def test_parquet_with_paths_resolves_against_its_folder(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    datasets.Dataset.from_dict({"messages": [MESSAGES], "images": [["a.png"]]}).to_parquet(
        str(tmp_path / "d.parquet")
    )
    conv = Source(DatasetSpec(path=str(tmp_path / "d.parquet"))).conversation(0)
    assert conv.turns[0].segments[0].value == str(tmp_path / "a.png")


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"unsupported dataset type '.csv'"):
        Source(DatasetSpec(path=str(tmp_path / "x.csv")))
    with pytest.raises(DataError, match=r"nope.jsonl: dataset not found"):
        Source(DatasetSpec(path=str(tmp_path / "nope.jsonl")))


def test_urls_need_permission():
    with pytest.raises(
        ImageError, match=r"image URLs are not fetched unless the recipe sets data.allow_urls: true"
    ):
        image_size("https://example.com/cat.png")
