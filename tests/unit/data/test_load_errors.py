"""A checked sample that fails to load during training (its image deleted, corrupted or replaced
after the check): data.on_load_error "stop" ends with `file:line (id X): what`, also from a loader
worker; "skip" trains on a stand-in of the same length (else the nearest shorter), logs the sample
once and counts it across loader workers."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from qwenvl_ft.config import ConfigError, DataConfig, DatasetSpec, load_recipe
from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.dataset import SampleLoadError, build_dataset

REPO = Path(__file__).resolve().parents[3]


def checked(tmp_path: Path, proc, on_load_error: str):
    """The demo data copied to tmp_path, checked, as a dataset; and the copy's folder."""
    shutil.copytree(REPO / "data/demo", tmp_path / "demo")
    data = DataConfig(
        train=[DatasetSpec(path=str(tmp_path / "demo/demo.jsonl"))], on_load_error=on_load_error
    )
    ds, report = build_dataset(data, proc, seed=0, cache_dir=None, progress=False)
    assert report.ok and len(ds) == 8
    return ds, tmp_path / "demo"


def position(ds, source_index: int) -> int:
    """Where the file's sample `source_index` (0-based) is in the dataset's mixed order."""
    return [ds.item(k).index for k in range(len(ds))].index(source_index)


def test_stop_names_the_sample_and_what_happened(tmp_path, bpe_processor):
    ds, demo = checked(tmp_path, bpe_processor, "stop")
    (demo / "images/002.png").unlink()
    (demo / "images/005.png").write_bytes(b"not a png any more")
    Image.new("RGB", (640, 480)).save(demo / "images/001.png")  # more visual tokens than checked
    after = "(it passed the data check, so the data changed since; data.on_load_error: skip trains on"
    expected = {
        2: f"{demo}/demo.jsonl:3 (id demo-002): {demo}/images/002.png: image file not found {after}",
        5: f"{demo}/demo.jsonl:6 (id demo-005): {demo}/images/005.png: not a readable image {after}",
        1: f"{demo}/demo.jsonl:2 (id demo-001): encoded ",
    }
    for k, message in expected.items():
        with pytest.raises(SampleLoadError) as e:
            ds[position(ds, k)]
        assert str(e.value).startswith(message), str(e.value)
    assert "the data check counted 75; the data changed since it was checked" in _message(ds, 1)
    assert len(ds[position(ds, 0)].input_ids) == ds.item(position(ds, 0)).length  # the others load

    # From a loader worker the error arrives as the same one line, not the worker's traceback.
    loader = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=list, sampler=[position(ds, 2)])
    try:
        next(iter(loader))
        raise AssertionError("loaded")
    except SampleLoadError as e:
        # Dropping the traceback frees the loader's iterator now: torch's re-raising frame holds the
        # exception, a cycle the garbage collector breaks later, and its worker then takes 5 s to stop.
        message, e.__traceback__ = str(e), None
    assert message == _message(ds, 2) and "Traceback" not in message


def _message(ds, k: int) -> str:
    try:
        ds[position(ds, k)]
    except SampleLoadError as e:
        return str(e)
    raise AssertionError("loaded")


def test_skip_trains_on_a_stand_in_of_the_same_length(tmp_path, bpe_processor, caplog):
    ds, demo = checked(tmp_path, bpe_processor, "skip")
    lengths = ds.lengths()
    i = position(ds, 4)
    peers = [k for k in range(len(ds)) if k != i and lengths[k] == lengths[i]]
    assert peers, lengths  # the demo data has samples of equal length
    (demo / "images/004.png").unlink()
    with caplog.at_level(logging.WARNING, logger="qwenvl_ft"):
        enc = ds[i]
        again = ds[i]
    # The stand-in: the next sample of the same length in dataset order (else the previous one).
    stand_in = min([k for k in peers if k > i], default=max(peers))
    assert enc.input_ids == again.input_ids == ds[stand_in].input_ids and len(enc.input_ids) == lengths[i]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped {demo}/demo.jsonl:5 (id demo-004): {demo}/images/004.png: image file not found "
        "(data.on_load_error: skip; 1 sample(s) skipped so far)"
    ]  # once, though the sample was asked for twice
    assert ds.skipped() == 1


def test_skip_without_a_sample_of_the_same_length_takes_the_nearest_shorter(tmp_path, bpe_processor):
    ds, demo = checked(tmp_path, bpe_processor, "skip")
    lengths = ds.lengths().tolist()
    unique = [k for k in range(len(ds)) if lengths.count(lengths[k]) == 1 and lengths[k] > min(lengths)]
    assert unique, lengths
    i = unique[0]
    (demo / f"images/00{ds.item(i).index}.png").unlink()
    # Nearest shorter: it still fits the packed row planned for i. Among equals the last in order.
    _, stand_in = max((lengths[k], k) for k in range(len(ds)) if lengths[k] < lengths[i])
    assert ds[i].input_ids == ds[stand_in].input_ids
    assert ds.skipped() == 1


def test_skip_counts_across_loader_workers(tmp_path, bpe_processor):
    ds, demo = checked(tmp_path, bpe_processor, "skip")
    (demo / "images/004.png").unlink()
    (demo / "images/006.png").write_bytes((demo / "images/000.png").read_bytes()[:100])  # truncated
    collate = PaddingCollator(pad_token_id=0)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(b["input_ids"].shape[0] for b in batches) == 8  # every batch full: stand-ins, not holes
    assert ds.skipped() == 2  # failures in the workers, counted in this process (shared memory)


def test_recipe_field(tmp_path):
    assert DataConfig().on_load_error == "stop"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  path: m\ndata:\n  train:\n    - path: d.jsonl\n  on_load_error: skip\n")
    assert load_recipe(recipe).data.on_load_error == "skip"
    with pytest.raises(ConfigError, match=r"data.on_load_error.*'stop', 'skip'"):
        load_recipe(recipe, ["data.on_load_error=ignore"])
