"""`merge` carries the tensors transformers drops on load (e.g. Qwen3.5's mtp.* heads) into its output unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qwenvl_ft.merge import MergeError, carry_kept_tensors
from qwenvl_ft.models import FAMILIES, get_family


def _raw(file, key) -> bytes:
    with safe_open(str(file), "pt") as st:
        return st.get_tensor(key).view(torch.uint8).numpy().tobytes()


@pytest.fixture
def dirs(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "model.w": torch.randn(4, 4, generator=g),
            "mtp.fc.weight": torch.randn(8, 3, generator=g).to(torch.bfloat16),
            "mtp.layers.0.norm.weight": torch.randn(3, generator=g),
        },
        str(base / "model.safetensors"),
        metadata={"format": "pt"},
    )
    save_file({"model.w": torch.zeros(4, 4)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return base, out


def test_kept_tensors_are_copied_byte_for_byte_and_indexed(dirs):
    base, out = dirs
    assert carry_kept_tensors(base, out, ("mtp.",)) == 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "model.w": "model.safetensors",
        "mtp.fc.weight": "model-kept.safetensors",
        "mtp.layers.0.norm.weight": "model-kept.safetensors",
    }
    for key in ("mtp.fc.weight", "mtp.layers.0.norm.weight"):
        assert _raw(out / "model-kept.safetensors", key) == _raw(base / "model.safetensors", key)
    with safe_open(str(out / "model-kept.safetensors"), "pt") as st:
        assert st.get_tensor("mtp.fc.weight").dtype == torch.bfloat16  # never cast to the merge dtype
    # 16 fp32 (merged) + 24 bf16 + 3 fp32 (kept) = 64 + 48 + 12 bytes
    assert index["metadata"]["total_size"] == 124


def test_nothing_to_keep_leaves_the_output_alone(dirs):
    base, out = dirs
    assert carry_kept_tensors(base, out, ()) == 0
    assert carry_kept_tensors(base, out, ("nothing.",)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def test_a_kept_name_already_in_the_output_is_refused(dirs):
    base, out = dirs
    save_file({"mtp.fc.weight": torch.zeros(1)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match="already hold mtp.fc.weight"):
        carry_kept_tensors(base, out, ("mtp.",))


KEEPING = [name for name, f in FAMILIES.items() if f.kept_tensors]


@pytest.mark.parametrize("name", KEEPING)
def test_kept_tensors_are_ones_transformers_drops(name):
    """A family keeps only what its model class really drops on load (else merge would duplicate weights)."""
    import re

    family = get_family(name)
    ignored = family.model_class()._keys_to_ignore_on_load_unexpected or []
    for prefix in family.kept_tensors:
        assert any(re.match(p, prefix + "x") for p in ignored), (prefix, ignored)
