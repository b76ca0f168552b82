"""End to end, the pipeline learns: a tiny model trained through the CLI finds shapes it could not before.

The task is the quickstart's (`qwenvl-ft data synth`): 96x96 images cut into a 3x3 grid, one
coloured shape in a random cell, "Where is the {colour} {shape}?" answered by its box in the
family's convention. After training, accuracy at IoU 0.5 on held-out images must clearly beat
the untrained model and the best fixed box (the most frequent training box). Held out are the
combinations of colour, shape and cell that training never draws (1 in 5), so no held-out image
occurs in training, though each colour, shape and cell does in other combinations.

Everything the language model learns goes through the code under test: data loading, the chat
template, the assistant-only label mask, box conversion to the family's convention, rotary
positions, the trainer, LoRA, `qwenvl-ft eval` on a model (generation, box parsing back to pixels,
IoU). Qwen3-VL trains with the quickstart's recipe as it is (recipes/tiny/qwen3_vl_grounding.yaml:
LoRA, 400 steps of 16 samples), so this also holds the quickstart to its table; measured 1.000
against 0.000 untrained and 0.109 for the fixed box, in 35 s on 2 shared cores. Qwen-VL (full
fine-tuning, its own box format and resampler, 1,000 steps) is marked slow: 0.984 in 6 minutes.
Qwen3.5 (three linear-attention layers and one full-attention layer, the thinking template,
evaluated with no flag: the run records that it trained with thinking off, and eval asks so) is
marked slow too: the same recipe for 800 steps reaches 1.000
against 0.000 untrained, in 17 minutes on one thread, its 248,320-row head dominating. Its other
path (slow): the same recipe on answers with a short reasoning each; the run records thinking on and
eval with no flag thinks and then answers: 0.969 (31 minutes on a shared core).

Deliberate bugs, each patched in and run once on Qwen3-VL with the present setup, made this
test fail: labels shifted by one token (a double shift) gave 0.000, and x and y swapped when
boxes are written gave 0.312 (the model learns the swapped task and is right only on the
diagonal). The first version of the test (800 steps of full fine-tuning, ungated stand-in, held-out
images drawn from the same combinations as training) failed on them with 0.000 and 0.141. Unit
tests pin each part against hand-worked values; this test checks that they work together.

The vision tower is the stand-in for a pretrained one (`make-tiny --standin-vision`,
qwenvl_ft/tiny/standin.py): a random tiny ViT's features barely depend on the image, and real
fine-tuning always starts from a pretrained tower. Tower and projector stay frozen.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from family_facts import FACTS, UNSET, need, registered

from qwenvl_ft.cli import main
from qwenvl_ft.data.synthetic import write_grounding_set
from qwenvl_ft.models import get_family
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.tiny.builders import builder_for

REPO = Path(__file__).resolve().parents[2]


def learners() -> list:
    """Families with a stand-in vision tower whose learning setup tests/family_facts.py gives (a family
    without facts runs and fails, naming what it lacks); slow setups run with --run-slow."""
    params = []
    for name in registered(lambda f: builder_for(f).has_standin_vision()):
        learning = FACTS[name].learning if name in FACTS else UNSET
        if learning is None:  # sampled by another family with the same stand-in
            continue
        slow = learning is not UNSET and learning.slow
        params.append(pytest.param(name, marks=pytest.mark.slow) if slow else name)
    return params


@pytest.fixture
def one_thread():
    """Models this small train many times faster on one thread when the CPU is shared (40 steps:
    1.6 s against 32 s on two threads under load); the results are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def accuracy(model: Path, data: Path, out: Path, max_new_tokens: int = 32) -> float:
    report = out / f"{model.name}.json"
    # No --thinking: a thinking generation's run is asked in the mode it was trained in (off here: its
    # answers carry no reasoning), the untrained model in its template's default.
    args = [
        "eval",
        str(model),
        "--data",
        str(data),
        "--dtype",
        "fp32",
        "--max-new-tokens",
        str(max_new_tokens),
    ]
    assert main([*args, "--batch-size", "16", "--output", str(report)]) == 0
    return json.loads(report.read_text())["grounding"]["acc@0.5"]


def boxes(data: Path) -> list[tuple[int, ...]]:
    return [tuple(json.loads(line)["objects"]["bbox"][0]) for line in data.read_text().splitlines()]


@pytest.mark.parametrize("name", learners())
def test_a_tiny_model_learns_to_ground_shapes(tmp_path, one_thread, name):
    setup = need(name, "learning").learning
    model = tmp_path / "model"
    make_tiny(get_family(name), model, real_vocab=False, standin_vision=True, **setup.tiny)
    train = write_grounding_set(tmp_path / "train", 2000, seed=1)
    held_out = write_grounding_set(tmp_path / "eval", 64, seed=2, heldout=True)

    run = tmp_path / "run"
    args = [
        "train",
        str(REPO / setup.recipe),
        f"model.path={model}",
        f"output.dir={run}",
        f"data.train=[{{path: {train}}}]",
        "data.num_workers=0",
        *setup.overrides,
    ]
    assert main(args) == 0

    before = accuracy(model, held_out, tmp_path)
    after = accuracy(run, held_out, tmp_path)
    if get_family(name).thinking:  # the defaults gave the trained accuracy: the run's mode was used
        assert json.loads((run / "qwenvl_ft.json").read_text())["thinking"] is False
    # The best fixed answer: the most frequent training box, scored on the held-out boxes
    # (every box fills its cell, so IoU >= 0.5 means the same cell).
    fixed = Counter(boxes(train)).most_common(1)[0][0]
    eval_boxes = boxes(held_out)
    fixed_acc = sum(b == fixed for b in eval_boxes) / len(eval_boxes)
    print(f"{name}: acc@0.5 untrained {before:.3f}, fixed box {fixed_acc:.3f}, trained {after:.3f}")
    assert before < 0.2 and fixed_acc < 0.25
    assert after >= 0.6 and after >= max(before, fixed_acc) + 0.4


def with_reasoning(data: Path) -> Path:
    """The grounding set with a short reasoning before each answer, as `reasoning_content`."""
    lines = []
    for line in data.read_text().splitlines():
        sample = json.loads(line)
        question = sample["messages"][0]["content"].removeprefix("<image>Where is the ").rstrip("?")
        sample["messages"][1]["reasoning_content"] = f"I look for the {question}."
        lines.append(json.dumps(sample))
    out = data.with_name("reasoning.jsonl")
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [n for n in registered(lambda f: f.thinking) if FACTS.get(n) and FACTS[n].learning]
)
def test_a_run_trained_with_reasoning_is_asked_with_thinking_on(tmp_path, one_thread, name):
    """The other path of 'Thinking at inference': answers trained after their reasoning; eval with no
    flag thinks (the run records thinking on), writes the reasoning and then the box."""
    setup = need(name, "learning").learning
    model = tmp_path / "model"
    make_tiny(get_family(name), model, real_vocab=False, standin_vision=True, **setup.tiny)
    train = with_reasoning(write_grounding_set(tmp_path / "train", 2000, seed=1))
    held_out = write_grounding_set(tmp_path / "eval", 64, seed=2, heldout=True)
    run = tmp_path / "run"
    args = ["train", str(REPO / setup.recipe), f"model.path={model}", f"output.dir={run}"]
    assert main([*args, f"data.train=[{{path: {train}}}]", "data.num_workers=0", *setup.overrides]) == 0
    assert json.loads((run / "qwenvl_ft.json").read_text())["thinking"] is True
    after = accuracy(run, held_out, tmp_path, max_new_tokens=64)
    print(f"{name} with reasoning: acc@0.5 trained {after:.3f}")
    assert after >= 0.6
