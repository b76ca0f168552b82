"""Thinking at inference matches training (README 'Thinking at inference'), end to end on the tiny
Qwen3.5: a run on answers without reasoning records thinking off and a run on answers with reasoning
records it on; `Predictor.load`, `eval` and `predict` with no flag then prompt in that mode (the
prompt equals the checkpoint's own template rendered with that `enable_thinking`), an explicit
`--thinking` wins, and a merged model keeps the run's mode. Whether the default gives the trained
accuracy is the slow learning test's (tests/e2e/test_learning.py evaluates Qwen3.5 with no flag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoTokenizer

from qwenvl_ft.cli import main
from qwenvl_ft.config import load_recipe
from qwenvl_ft.data.readers import to_conversation
from qwenvl_ft.infer import Predictor
from qwenvl_ft.train import train

REPO = Path(__file__).resolve().parents[2]
QUESTION = {
    "role": "user",
    "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": "Colour?"}],
}


def write_data(folder: Path, reasoning: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "red.png")
    answer = {"role": "assistant", "content": "Red."}
    if reasoning:
        answer["reasoning_content"] = "Every pixel is red."
    path = folder / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"s{i}", "messages": [QUESTION, answer]}) + "\n" for i in range(4))
    )
    return path


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """name -> (run dir, data): the tiny Qwen3.5 trained 2 LoRA steps on answers with / without reasoning."""
    out = {}
    for name, reasoning in (("with", True), ("without", False)):
        folder = tmp_path_factory.mktemp(f"thinking_{name}")
        data = write_data(folder, reasoning)
        cfg = load_recipe(
            REPO / "recipes/tiny/qwen3_5_lora.yaml",
            [
                f"model.path={tiny_model('qwen3_5')}",
                f"output.dir={folder / 'run'}",
                f"data.train=[{{path: {data}}}]",
                "data.num_workers=0",
                "model.dtype=fp32",
                "train.max_steps=2",
                "train.save_steps=1000",
            ],
        )
        train(cfg)
        out[name] = (folder / "run", data)
    return out


def official_prompt(model: Path, enable_thinking: bool, image_tokens: int) -> list[int]:
    """The checkpoint's own template: the question and the generation prompt, image expanded."""
    tok = AutoTokenizer.from_pretrained(model)
    text = tok.apply_chat_template(
        [QUESTION], tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
    return tok(text.replace("<|image_pad|>", "<|image_pad|>" * image_tokens), add_special_tokens=False)[
        "input_ids"
    ]


@pytest.mark.parametrize("name", ["with", "without"])
def test_the_run_records_its_mode_and_inference_defaults_to_it(runs, tiny_model, name):
    run, data = runs[name]
    trained = name == "with"
    meta = json.loads((run / "qwenvl_ft.json").read_text())
    assert meta["thinking"] is trained
    assert meta["thinking_why"] == f"{4 if trained else 0} of 4 trained samples showed reasoning"
    red = Image.open(data.parent / "red.png")
    conv = to_conversation({"messages": [QUESTION]}, "q", "openai", data.parent)
    for asked, mode in ((None, trained), (not trained, not trained)):  # an explicit flag wins
        predictor = Predictor.load(run, dtype="fp32", thinking=asked)
        assert predictor.thinking is mode
        n = predictor.processor.image_tokens(64, 64)
        assert predictor.prompt(conv, [red]).input_ids == official_prompt(tiny_model("qwen3_5"), mode, n)
        line = predictor.thinking_line()
        if asked is None:
            state, other = ("on", "off") if trained else ("off", "on")
            assert line == (
                f"thinking {state}, as the run was trained ({meta['thinking_why']}); --thinking {other} overrides"
            )
        else:
            assert line is None
    base = Predictor.load(tiny_model("qwen3_5"), dtype="fp32")  # a base checkpoint: the template's default
    assert base.thinking is None and base.thinking_line() is None


def test_eval_and_predict_say_the_mode_and_a_flag_wins(runs, tmp_path, capsys):
    run, data = runs["without"]
    args = ["eval", str(run), "--data", str(data), "--max-new-tokens", "2", "--dtype", "fp32", "--limit", "1"]
    assert main(args) == 0
    assert (
        "thinking off, as the run was trained (0 of 4 trained samples showed reasoning)"
        in capsys.readouterr().out
    )
    assert main([*args, "--thinking", "on"]) == 0
    assert "as the run was trained" not in capsys.readouterr().out
    preds = tmp_path / "p.jsonl"
    assert main(["predict", str(run), str(data), "--output", str(preds), "--max-new-tokens", "2",
                 "--dtype", "fp32", "--limit", "1"]) == 0  # fmt: skip
    assert "thinking off, as the run was trained" in capsys.readouterr().out


def test_a_merged_model_keeps_the_runs_mode(runs, tiny_model, tmp_path):
    run, data = runs["without"]
    merged = tmp_path / "merged"
    assert main(["merge", str(run), "--output", str(merged), "--dtype", "fp32"]) == 0
    meta = json.loads((merged / "qwenvl_ft.json").read_text())
    assert meta["thinking"] is False and meta["thinking_why"] == "0 of 4 trained samples showed reasoning"
    predictor = Predictor.load(merged, dtype="fp32")
    red = Image.open(data.parent / "red.png")
    conv = to_conversation({"messages": [QUESTION]}, "q", "openai", data.parent)
    n = predictor.processor.image_tokens(64, 64)
    assert predictor.prompt(conv, [red]).input_ids == official_prompt(tiny_model("qwen3_5"), False, n)


@pytest.fixture(scope="module")
def effort_run(tiny_model, tmp_path_factory):
    """The tiny Qwen3.8 trained 2 LoRA steps on answers with reasoning at data.reasoning_effort: low."""
    folder = tmp_path_factory.mktemp("effort")
    data = write_data(folder, reasoning=True)
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen3_8_lora.yaml",
        [
            f"model.path={tiny_model('qwen3_8')}",
            f"output.dir={folder / 'run'}",
            f"data.train=[{{path: {data}}}]",
            "data.num_workers=0",
            "data.reasoning_effort=low",
            "train.max_steps=2",
            "train.save_steps=1000",
        ],
    )
    train(cfg)
    return folder / "run", data


def test_a_qwen3_8_run_is_asked_at_the_effort_it_was_trained_at(effort_run, tiny_model):
    run, data = effort_run
    meta = json.loads((run / "qwenvl_ft.json").read_text())
    assert (meta["family"], meta["reasoning_effort"], meta["thinking"]) == ("qwen3_8", "low", True)
    red = Image.open(data.parent / "red.png")
    conv = to_conversation({"messages": [QUESTION]}, "q", "openai", data.parent)
    tok = AutoTokenizer.from_pretrained(tiny_model("qwen3_8"))
    texts = []
    for asked, effort in ((None, "low"), ("medium", "medium")):  # an explicit effort wins
        predictor = Predictor.load(run, dtype="fp32", reasoning_effort=asked)
        n = predictor.processor.image_tokens(64, 64)
        text = tok.apply_chat_template(
            [QUESTION], tokenize=False, add_generation_prompt=True, reasoning_effort=effort
        )
        texts.append(text)
        expected = tok(text.replace("<|image_pad|>", "<|image_pad|>" * n), add_special_tokens=False)[
            "input_ids"
        ]
        assert predictor.prompt(conv, [red]).input_ids == expected
    assert "Reasoning effort is set to low." in texts[0] and "Reasoning effort" not in texts[1]
    line = Predictor.load(run, dtype="fp32").thinking_line()
    assert line.startswith(
        "thinking on, reasoning effort low, as the run was trained (4 of 4 trained samples"
    )


@pytest.mark.parametrize(
    ("family", "effort", "message"),
    [
        ("qwen2_5_vl", "low", "--reasoning-effort: low, but Qwen2.5-VL (qwen2_5_vl) has no reasoning effort"),
        ("qwen3_5", "low", "--reasoning-effort: low, but Qwen3.5 (qwen3_5) has no reasoning effort"),
        ("qwen3_8", "high", "--reasoning-effort: high, but Qwen3.8 takes xhigh, medium, low"),
    ],
)
def test_the_effort_flag_is_refused_by_name_before_weights_load(
    tiny_model, tmp_path, capsys, family, effort, message
):
    data = write_data(tmp_path, reasoning=False)
    args = ["predict", str(tiny_model(family)), str(data), "--output", str(tmp_path / "p.jsonl")]
    assert main([*args, "--reasoning-effort", effort]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
