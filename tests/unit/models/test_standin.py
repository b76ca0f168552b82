"""The stand-in vision tower (`make-tiny --standin-vision`): what the language model receives from an image.

Features are read where the language model takes them: the embeddings entering the family's
`paths.after_vision` module, at the image pad tokens.
"""

from __future__ import annotations

import pytest
import torch
from family_facts import by_architecture, need, registered

from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import encode
from qwenvl_ft.data.synthetic import COLOURS, draw_grid_shapes
from qwenvl_ft.models import FAMILIES, ModelFamily
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.tiny.builders import builder_for

STANDIN = [n for n, f in FAMILIES.items() if builder_for(f).has_standin_vision()]
IMAGES = [draw_grid_shapes(seed, 96, 3, 1) for seed in range(60)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_features(family: ModelFamily, model, processor, image) -> torch.Tensor:
    """(image tokens, hidden): the language model's input embeddings at the image's pad tokens."""
    conv = Conversation(
        id="probe",
        turns=[
            Turn("user", [Segment("image", image), Segment("text", "Where?")]),
            Turn("assistant", [Segment("text", "Here.")]),
        ],
    )
    enc = encode(conv, processor, [image])
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"] if "inputs_embeds" in kwargs else args[0]

    after = model.get_submodule(family.paths.after_vision)
    hook = after.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(
                input_ids=torch.tensor([enc.input_ids]),
                mm_token_type_ids=torch.tensor([enc.mm_token_type_ids]),
                pixel_values=enc.pixel_values,
                image_grid_thw=enc.image_grid_thw,
            )
    finally:
        hook.remove()
    pad = processor.tokenizer.convert_tokens_to_ids(family.chat.image_pad)
    return seen["embeds"][0][torch.tensor(enc.input_ids) == pad]


def tiny(name: str, path, standin: bool):
    family = FAMILIES[name]
    # 96x96 images kept as they are where the processor resizes (9216 pixels); Qwen-VL's is fixed.
    pixels = {} if family.vision.fixed_size else {"min_pixels": 9216, "max_pixels": 9216}
    make_tiny(family, path, real_vocab=False, standin_vision=standin, **pixels)
    return family, family.load_model(str(path), dtype=torch.float32).eval(), family.load_processor(str(path))


def nearest_centroid_accuracy(features: torch.Tensor, labels: list) -> float:
    """Centroids from the first half, scored on the second: the labels are plainly in the features."""
    half = len(labels) // 2
    centroids = {
        label: features[[i for i in range(half) if labels[i] == label]].mean(0)
        for label in set(labels[:half])
    }
    hits = [
        min(centroids, key=lambda c: (features[i] - centroids[c]).norm()) == labels[i]
        for i in range(half, len(labels))
    ]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("name", registered())
def test_the_families_with_a_standin(name):
    assert (name in STANDIN) == need(name, "standin_vision").standin_vision


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - set(STANDIN)))
def test_families_without_a_standin_say_so(name):
    with pytest.raises(NotImplementedError, match="no stand-in vision tower"):
        builder_for(FAMILIES[name]).standin_vision(None)


@pytest.mark.parametrize("name", by_architecture(STANDIN))
def test_standin_features_follow_the_image_a_random_tower_barely_does(tmp_path, name):
    # Spread of the mean image feature over 16 images, relative to its size. Measured: random
    # towers 0.07 (Qwen3-VL) and 0.05 (Qwen-VL), stand-ins 0.79 and 0.42.
    spread = {}
    for standin in (False, True):
        family, model, processor = tiny(name, tmp_path / str(standin), standin)
        f = torch.stack([image_features(family, model, processor, im).mean(0) for im, _ in IMAGES[:16]])
        spread[standin] = float((f - f.mean(0)).norm(dim=1).mean() / f.norm(dim=1).mean())
    assert spread[True] > 0.3 and spread[True] > 4 * spread[False]


@pytest.mark.parametrize("name", by_architecture([n for n in STANDIN if not FAMILIES[n].vision.fixed_size]))
def test_the_shape_token_alone_carries_colour_and_place(tmp_path, name):
    """One image token per cell of the grid: the shape's carries its colour and place, the others are 0."""
    family, model, processor = tiny(name, tmp_path, standin=True)
    shapes, colours, cells = [], [], []
    for image, (shape,) in IMAGES:
        tokens = image_features(family, model, processor, image)
        assert tokens.shape[0] == 9
        cell = (shape.box[1] // 32) * 3 + shape.box[0] // 32
        norms = tokens.norm(dim=1)
        assert int(norms.argmax()) == cell
        assert (norms[torch.arange(9) != cell] < 1e-3 * norms[cell]).all()
        shapes.append(tokens[cell])
        colours.append(shape.colour)
        cells.append(cell)
    features = torch.stack(shapes)
    assert set(colours) == set(COLOURS)
    assert nearest_centroid_accuracy(features[:, :3], colours) == 1.0  # channels 0..2: colour
    assert nearest_centroid_accuracy(features[:, 8:], cells) == 1.0  # the rest: place


def test_make_tiny_command_builds_the_standin_with_its_pixel_range(tmp_path, capsys):
    from qwenvl_ft.cli import main

    out = tmp_path / "m"
    args = ["make-tiny", "qwen3_vl", str(out), "--small-vocab", "--standin-vision", "--no-check"]
    assert main([*args, "--min-pixels", "9216", "--max-pixels", "9216"]) == 0
    assert "stand-in vision tower" in capsys.readouterr().out
    family = FAMILIES["qwen3_vl"]
    processor = family.load_processor(str(out))
    assert (processor.min_pixels, processor.max_pixels) == (9216, 9216)
    image, (shape,) = IMAGES[0]
    model = family.load_model(str(out), dtype=torch.float32).eval()
    norms = image_features(family, model, processor, image).norm(dim=1)
    assert int((norms > 0.1).sum()) == 1  # the saved weights are the stand-in's

    assert main(["make-tiny", "qwen2_vl", str(tmp_path / "q"), "--small-vocab", "--standin-vision"]) == 2
    assert "Qwen2-VL: no stand-in vision tower" in capsys.readouterr().err
