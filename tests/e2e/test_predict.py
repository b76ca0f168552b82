"""`qwenvl-ft predict` and the `Predictor` API on a tiny model: batching, resuming, records."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from qwenvl_ft.cli import main
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.infer import Predictor

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"


def test_batched_generation_equals_one_by_one(tiny_model):
    """Left padding must not change an answer: prompts of different lengths, with and without images."""
    predictor = Predictor.load(tiny_model("qwen2_5_vl"), device="cpu")
    red = Image.new("RGB", (100, 80), (200, 10, 10))
    samples = [
        (
            Conversation(
                "a", [Turn("user", [Segment("image", red), Segment("text", "Where is the red square?")])]
            ),
            [red],
        ),
        (Conversation("b", [Turn("user", [Segment("text", "Hi")])]), []),
    ]
    together = predictor.generate(samples, max_new_tokens=6)
    alone = [predictor.generate([s], max_new_tokens=6)[0] for s in samples]
    assert together == alone and all(together)
    # The prompt ends with the assistant header, exactly as training renders the turn.
    ids = predictor.prompt(*samples[1]).input_ids
    assert predictor.processor.tokenizer.decode(ids).endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_first_generation_generates_in_batches(tiny_model):
    """Qwen-VL takes the shared batch (with mm_token_type_ids) in generate(), as in training."""
    predictor = Predictor.load(tiny_model("qwen_vl"), device="cpu")
    red = Image.new("RGB", (100, 80), (200, 10, 10))
    ask = Conversation("a", [Turn("user", [Segment("image", red), Segment("text", "Where is it?")])])
    hi = Conversation("b", [Turn("user", [Segment("text", "Hi")])])
    together = predictor.generate([(ask, [red]), (hi, [])], max_new_tokens=4)
    assert together == [predictor.generate([s], max_new_tokens=4)[0] for s in [(ask, [red]), (hi, [])]]


def test_predict_writes_a_line_per_sample_and_resumes(tiny_model, tmp_path):
    out = tmp_path / "preds.jsonl"
    args = [
        "predict",
        str(tiny_model("qwen2_5_vl")),
        str(DEMO),
        "--output",
        str(out),
        "--max-new-tokens",
        "4",
        "--dtype",
        "fp32",
        "--batch-size",
        "3",
    ]
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"demo-{i:03d}" for i in range(8)]
    box = next(r for r in lines if r["id"] == "demo-001")
    assert box["reference_boxes"] == [[48.0, 50.0, 107.0, 109.0]] and box["image_sizes"] == [[160, 120]]
    # Interrupted after three samples: the rerun writes only the five missing ones.
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:3]))
    assert main(args) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in again] == [r["id"] for r in lines]
    assert [r["prediction"] for r in again] == [r["prediction"] for r in lines]  # greedy: deterministic
    assert all(r["prediction"] for r in again)


def test_eval_scores_a_model_directly(tiny_model, tmp_path, capsys):
    """`eval MODEL --data` generates and scores in one go; the grounding lines are the box samples."""
    report = tmp_path / "r.json"
    args = ["eval", str(tiny_model("qwen2_5_vl")), "--data", str(DEMO), "--dtype", "fp32"]
    assert main([*args, "--max-new-tokens", "4", "--task", "caption", "--output", str(report)]) == 0
    scores = json.loads(report.read_text())
    boxes = sum(1 for line in DEMO.read_text().splitlines() if '"bbox"' in line)
    assert scores["grounding"]["n"] == boxes and scores["caption"]["n"] == 8 - boxes
    assert "grounding.acc@0.5" in capsys.readouterr().out


def test_eval_says_what_is_missing(tiny_model, tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="--data"):
        main(["eval", str(tiny_model("qwen2_5_vl"))])
    preds = tmp_path / "p.jsonl"
    preds.write_text("")
    with pytest.raises(SystemExit, match="predictions file"):
        main(["eval", str(preds), "--data", str(DEMO)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["eval", str(tmp_path / "nope.jsonl")])
