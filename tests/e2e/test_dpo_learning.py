"""DPO learns, and its run is an ordinary run.

A tiny Qwen3-VL is briefly SFT-trained on the synthetic grounding task (40 LoRA steps of
recipes/tiny/qwen3_vl_grounding.yaml, then merged): it answers in its box format but barely prefers
the right box. recipes/tiny/qwen3_vl_dpo.yaml then trains it on pairs (the correct box chosen, a
box in another cell rejected). On held-out pairs (combinations of colour, shape and cell no
training image has), the share of pairs whose chosen answer the model finds more likely, and the
mean log-probability margin chosen - rejected, must rise well above where the SFT model started.
Measured here: accuracy 0.59 -> 0.91, margin 0.2 -> 11.7 nats; about 35 s on one thread. (The recipe's
SFT term keeps the chosen answer likely, so the DPO model still answers with well-formed boxes.)

The DPO run then merges, and `predict` answers with a box from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwenvl_ft.cli import main
from qwenvl_ft.config import ConfigError, DatasetSpec, load_recipe
from qwenvl_ft.data.pairs import PairCollator, PairSource, load_and_encode
from qwenvl_ft.models import get_family
from qwenvl_ft.train import train
from qwenvl_ft.training.logprobs import sequence_logps

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """(merged SFT model, DPO run dir, held-out pairs, preference before, preference after)."""
    root = tmp_path_factory.mktemp("dpo-e2e")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        model, data = root / "model", root / "data"
        assert main(["make-tiny", "qwen3_vl", str(model), "--small-vocab", "--standin-vision",
                     "--min-pixels", "9216", "--max-pixels", "9216", "--force"]) == 0  # fmt: skip
        assert main(["data", "synth", str(data / "sft"), "--count", "400", "--seed", "1"]) == 0
        assert main(["data", "synth", str(data / "pairs"), "--count", "200", "--seed", "3", "--pairs"]) == 0
        args = ["--count", "32", "--seed", "4", "--pairs", "--held-out"]
        assert main(["data", "synth", str(data / "heldout"), *args]) == 0
        assert main([
            "train", str(REPO / "recipes/tiny/qwen3_vl_grounding.yaml"), f"model.path={model}",
            f"output.dir={root / 'sft'}", f"data.train=[{{path: {data / 'sft/data.jsonl'}}}]",
            "train.max_steps=40", "data.num_workers=0",
        ]) == 0  # fmt: skip
        merged = root / "merged"
        assert main(["merge", str(root / "sft"), "--output", str(merged)]) == 0
        heldout = data / "heldout/data.jsonl"
        family = get_family("qwen3_vl")
        before = preference(family.load_model(str(merged), dtype=torch.float32), merged, heldout)
        cfg = load_recipe(
            REPO / "recipes/tiny/qwen3_vl_dpo.yaml",
            [f"model.path={merged}", f"output.dir={root / 'dpo'}", "data.num_workers=0",
             f"data.train=[{{path: {data / 'pairs/data.jsonl'}}}]", f"data.eval=[{{path: {heldout}}}]"],
        )  # fmt: skip
        result = train(cfg)
        after = preference(result.model, merged, heldout)
    finally:
        torch.set_num_threads(threads)
    return merged, root / "dpo", heldout, before, after, result.log_history


def preference(model, model_dir: Path, path: Path) -> tuple[float, float]:
    """(share of pairs with log p(chosen) > log p(rejected), mean log p(chosen) - log p(rejected))."""
    processor = get_family("qwen3_vl").load_processor(str(model_dir))
    source = PairSource(DatasetSpec(path=str(path)))
    encoded = [load_and_encode(source.pair(i), processor) for i in range(len(source))]
    model.eval()
    with torch.no_grad():
        logps, _ = sequence_logps(model, PairCollator(processor.tokenizer.pad_token_id)(encoded))
    chosen, rejected = logps.chunk(2)
    return (chosen > rejected).float().mean().item(), (chosen - rejected).mean().item()


def test_dpo_raises_held_out_preference_accuracy_and_margin(dpo_run):
    _, run, _, (acc0, margin0), (acc1, margin1), history = dpo_run
    print(
        f"held-out preference accuracy {acc0:.3f} -> {acc1:.3f}, margin {margin0:.2f} -> {margin1:.2f} nats"
    )
    assert acc1 >= 0.8 and acc1 >= acc0 + 0.25
    assert margin1 >= margin0 + 5.0
    # The logged training rewards tell the same story: each step's lines carry all four.
    lines = [h for h in history if "loss" in h]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(key in h for h in lines), key
    assert lines[0]["rewards/margins"] == 0.0  # step 1: the policy is still the reference
    assert lines[-1]["rewards/accuracies"] >= 0.8 and lines[-1]["rewards/margins"] > 0.5
    evals = [h for h in history if "eval_rewards/accuracies" in h]
    assert evals and evals[-1]["eval_rewards/accuracies"] >= 0.8


def test_a_dpo_run_describes_itself_merges_and_predicts(dpo_run, tmp_path):
    merged_sft, run, heldout, *_ = dpo_run
    meta = json.loads((run / "qwenvl_ft.json").read_text())
    assert (
        meta["method"] == "dpo" and meta["mode"] == "lora" and meta["base_model"] == str(merged_sft.resolve())
    )
    assert (run / "loss.png").is_file() and (run / "rewards.png").is_file()
    assert (run / "adapter_model.safetensors").is_file()
    assert main(["merge", str(run), "--output", str(tmp_path / "merged")]) == 0
    # predict reads SFT data: the held-out questions with their reference box
    sft = tmp_path / "questions.jsonl"
    with open(sft, "w") as f:
        for line in heldout.read_text().splitlines()[:4]:
            r = json.loads(line)
            r["messages"] = [*r["messages"], {"role": "assistant", "content": "<bbox>"}]
            r["objects"] = r.pop("chosen")["objects"]
            r.pop("rejected")
            r["images"] = [str(heldout.parent / image) for image in r["images"]]
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "pred.jsonl"
    args = ["predict", str(run), str(sft), "--output", str(out), "--max-new-tokens", "24", "--dtype", "fp32"]
    assert main(args) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(predictions) == 4 and all(p["prediction"].startswith("[") for p in predictions)


def test_full_fine_tuning_dpo_keeps_a_frozen_reference_copy(dpo_run, tmp_path):
    """mode full: the reference is a separate frozen copy (step 1's rewards are 0: policy = copy), and
    the policy moves away from it; the output is a full model that describes itself."""
    merged_sft, run, heldout, *_ = dpo_run
    pairs = run.parent / "data/pairs/data.jsonl"
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen3_vl_dpo.yaml",
        [f"model.path={merged_sft}", f"output.dir={tmp_path / 'full'}", "data.num_workers=0", "train.mode=full",
         "train.max_steps=4", "train.learning_rate=1e-3", "train.logging_steps=1", "train.eval_steps=1000",
         f"data.train=[{{path: {pairs}}}]", f"data.eval=[{{path: {heldout}}}]"],
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(cfg)
    finally:
        torch.set_num_threads(threads)
    lines = [h for h in result.log_history if "loss" in h]
    assert lines[0]["rewards/margins"] == 0.0 and lines[-1]["rewards/margins"] != 0.0
    assert (tmp_path / "full/model.safetensors").is_file()
    assert json.loads((tmp_path / "full/qwenvl_ft.json").read_text())["mode"] == "full"
    sft = get_family("qwen3_vl").load_model(str(merged_sft), dtype=torch.float32)
    assert preference(result.model, merged_sft, heldout)[1] != pytest.approx(
        preference(sft, merged_sft, heldout)[1]
    )


def test_data_check_pairs_cli(dpo_run, tmp_path, capsys):
    """`qwenvl-ft data check --pairs`: 0 on good pairs; 1 on bad ones, each named by file:line."""
    merged_sft, run, heldout, *_ = dpo_run
    assert main(["data", "check", str(heldout), "--pairs", "--model", str(merged_sft)]) == 0
    assert "OK: no errors" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    lines = heldout.read_text().splitlines()[:3]
    broken = json.loads(lines[1])
    broken["rejected"] = broken["chosen"]
    lines[1] = json.dumps(broken)
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "img").symlink_to(heldout.parent / "img")
    assert main(["data", "check", str(bad), "--pairs", "--model", str(merged_sft)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:2 (id {broken['id']}): chosen and rejected are the same answer" in out
    assert "FAILED: 1 error(s)" in out


@pytest.mark.parametrize("which", ["itself", "another", "wrong-family"])
def test_dpo_reference_option(dpo_run, tmp_path, which):
    """dpo.reference: the starting model again gives rewards 0 at step 1 (policy = reference); another
    checkpoint of the generation gives non-zero ones; another generation's is refused before training."""
    merged_sft, run, heldout, *_ = dpo_run
    reference = {"itself": merged_sft, "another": run.parent / "model", "wrong-family": tmp_path / "q25"}[
        which
    ]
    if which == "wrong-family":
        assert main(["make-tiny", "qwen2_5_vl", str(reference), "--small-vocab"]) == 0
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen3_vl_dpo.yaml",
        [f"model.path={merged_sft}", f"output.dir={tmp_path / 'out'}", "data.num_workers=0", "train.max_steps=2",
         "train.logging_steps=1", f"dpo.reference={reference}", f"data.eval=[{{path: {heldout}}}]",
         f"data.train=[{{path: {run.parent / 'data/pairs/data.jsonl'}}}]"],
    )  # fmt: skip
    if which == "wrong-family":
        with pytest.raises(ConfigError, match="dpo.reference.*is not a Qwen3-VL checkpoint"):
            train(cfg)
        return
    first = next(h for h in train(cfg).log_history if "loss" in h)
    assert (first["rewards/margins"] == 0.0) == (which == "itself")
