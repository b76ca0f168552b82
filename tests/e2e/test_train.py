"""Training on tiny models through the real entry point: the loss falls and exactly the intended
parameters change (checked against the checkpoint on disk, bitwise), for every family and mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from family_facts import sampled, trained_by_test_train
from safetensors.torch import load_file

from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.models import detect_family, get_family
from qwenvl_ft.train import train
from qwenvl_ft.training.modules import part_of

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"
FAMILIES = trained_by_test_train()
LR = {"full": 2e-3, "lora": 1e-2, "qlora": 1e-2}


def run(model_dir: Path, out: Path, family: str, mode: str, *extra: str):
    cfg = load_recipe(
        REPO / f"recipes/tiny/{family}_lora.yaml",
        [
            f"model.path={model_dir}",
            f"output.dir={out}",
            f"data.train=[{{path: {DEMO}}}]",
            "data.num_workers=0",
            f"train.mode={mode}",
            f"model.dtype={'bf16' if mode == 'qlora' else 'fp32'}",
            "train.max_steps=8",
            f"train.learning_rate={LR[mode]}",
            "train.save_steps=1000",
            "train.warmup_ratio=0",
            *extra,
        ],
    )
    return train(cfg)


def losses(result) -> list[float]:
    return [h["loss"] for h in result.log_history if "loss" in h]


def original(model_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint as freshly loaded (transformers renames the on-disk keys to module names)."""
    family = detect_family(model_dir)
    return {
        n: p.detach() for n, p in family.load_model(str(model_dir), dtype=torch.float32).named_parameters()
    }


def base_name(name: str) -> str:
    """PEFT parameter name -> the checkpoint's name."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")


def assert_falls(result) -> None:
    """Mean of the last three losses at least 0.05 below the first three's. LoRA plateaus early on the
    151k vocabulary: 8 steps left margins of 0.12-0.26 (12 steps: ~0.15), Q-LoRA 0.12-0.15."""
    ls = losses(result)
    assert all(torch.isfinite(torch.tensor(ls))), ls
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.05, ls


@pytest.mark.parametrize("family", sampled(FAMILIES, "train"))
def test_full_trains_language_and_merger_keeps_vision_bitwise(tiny_model, tmp_path, family):
    model_dir = tiny_model(family)
    # Six steps: the loss already falls by ~0.4 (12 steps gave ~1.1; assert_falls asks for 0.05).
    result = run(model_dir, tmp_path / "out", family, "full", "train.max_steps=6")
    assert_falls(result)
    paths, orig = get_family(family).paths, original(model_dir)
    changed = {part: [] for part in ("vision", "merger", "language", "embeddings", "lm_head")}
    for name, p in result.model.named_parameters():
        changed[part_of(name, paths)].append(not torch.equal(p.detach().cpu(), orig[name]))
    assert not any(changed["vision"]), "a frozen vision tower must stay bitwise unchanged"
    # A tied head (Qwen3.5) is the embedding matrix: named_parameters lists it once, as embeddings.
    tied = result.model.get_output_embeddings().weight is result.model.get_input_embeddings().weight
    for part in ("merger", "language", "embeddings") + (() if tied else ("lm_head",)):
        assert any(changed[part]), part
    assert (tmp_path / "out/model.safetensors").is_file() and (tmp_path / "out/loss.png").is_file()


@pytest.mark.parametrize("family", sampled(FAMILIES, "train"))
@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_lora_changes_only_adapters(tiny_model, tmp_path, family, mode):
    if mode == "qlora":
        pytest.importorskip(
            "bitsandbytes", reason="Q-LoRA needs bitsandbytes: pip install 'qwenvl-ft[qlora]'"
        )
    model_dir = tiny_model(family)
    result = run(model_dir, tmp_path / "out", family, mode)
    assert_falls(result)
    orig = original(model_dir)
    lora_b = []
    for name, p in result.model.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                lora_b.append(bool(p.detach().abs().sum() > 0))
            continue
        if p.dtype == torch.uint8:  # 4-bit packed weights: checked through their module below
            continue
        want = orig[base_name(name)]
        if mode == "qlora":  # loaded in bf16, then upcast to fp32 by prepare_model_for_kbit_training
            want = want.to(torch.bfloat16).to(p.dtype)
        assert torch.equal(p.detach().cpu(), want), f"{name} changed"
    assert lora_b and all(lora_b), "every LoRA B matrix must have moved from zero"
    if mode == "qlora":
        quantized = [n for n, m in result.model.named_modules() if type(m).__name__ == "Linear4bit"]
        assert quantized and not any("visual" in n or "lm_head" in n for n in quantized)
    adapter = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())


def test_base_model_trains_embeddings_and_head_through_modules_to_save(tiny_model, tmp_path, caplog):
    model_dir = tiny_model("qwen2_5_vl")
    with caplog.at_level("INFO", logger="qwenvl_ft"):
        # Two steps move what trains; the loss itself is checked by the tests above.
        result = run(
            model_dir, tmp_path / "out", "qwen2_5_vl", "lora", "model.is_base=true", "train.max_steps=2"
        )
    assert (
        "modules_to_save ['model.language_model.embed_tokens', 'lm_head']: 19.4 M parameters" in caplog.text
    )
    orig = original(model_dir)
    params = dict(result.model.named_parameters())
    for module in ("model.language_model.embed_tokens", "lm_head"):
        trained = params[f"base_model.model.{module}.modules_to_save.default.weight"]
        kept = params[f"base_model.model.{module}.original_module.weight"]
        assert not torch.equal(trained.detach(), orig[f"{module}.weight"])
        assert torch.equal(kept.detach(), orig[f"{module}.weight"])
    adapter = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    assert any("embed_tokens" in k for k in adapter) and any("lm_head" in k for k in adapter)


def test_unfrozen_vision_with_its_own_learning_rate(tiny_model, tmp_path):
    model_dir = tiny_model("qwen2_vl")
    result = run(
        model_dir,
        tmp_path / "out",
        "qwen2_vl",
        "full",
        "train.freeze_vision=false",
        "train.vision_lr=1e-4",
        "train.freeze_language=true",
        "train.max_steps=2",  # enough to move what trains
    )
    orig, paths = original(model_dir), get_family("qwen2_vl").paths
    for name, p in result.model.named_parameters():
        part = part_of(name, paths)
        moved = not torch.equal(p.detach(), orig[name])
        if part in ("language", "embeddings", "lm_head"):
            assert not moved, name
    assert any(
        not torch.equal(p.detach(), orig[n])
        for n, p in result.model.named_parameters()
        if part_of(n, paths) == "vision"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.mode=lora", "train.freeze_language=true"], r"LoRA trains the language model"),
        (["train.mode=qlora", "model.dtype=fp32"], r"Q-LoRA computes in 16-bit"),
        (
            ["train.mode=qlora", "model.dtype=bf16", "train.deepspeed=configs/deepspeed/zero3.json"],
            r"Q-LoRA cannot run under DeepSpeed ZeRO-3",
        ),
        (["train.mode=qlora", "model.dtype=bf16", "train.fsdp=true"], r"Q-LoRA under FSDP is not supported"),
        (["train.deepspeed=configs/deepspeed/zero2.json", "train.fsdp=true"], r"two engines: choose one"),
        (["model.family=qwen3_vl"], r"the recipe says family 'qwen3_vl' but .* is a qwen2_5_vl checkpoint"),
    ],
)
def test_bad_recipes_fail_at_start(tiny_model, tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(REPO)
    with pytest.raises((ConfigError, ValueError), match=message):
        cfg = load_recipe(
            REPO / "recipes/tiny/qwen2_5_vl_lora.yaml",
            [f"model.path={tiny_model('qwen2_5_vl')}", f"output.dir={tmp_path}/o", *overrides],
        )
        train(cfg)


def test_full_fine_tuning_of_a_quantized_checkpoint_is_refused(tiny_model, tmp_path):
    model_dir = tmp_path / "gptq"
    shutil.copytree(tiny_model("qwen2_5_vl"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen2_5_vl_lora.yaml",
        [f"model.path={model_dir}", f"output.dir={tmp_path}/o", "train.mode=full"],
    )
    with pytest.raises(
        ConfigError, match=r"is quantized \(gptq\): full fine-tuning cannot update quantized weights"
    ):
        train(cfg)


def test_non_empty_output_dir_is_refused(tiny_model, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o/notes.txt").write_text("mine")
    cfg = load_recipe(
        REPO / "recipes/tiny/qwen2_5_vl_lora.yaml",
        [f"model.path={tiny_model('qwen2_5_vl')}", f"output.dir={tmp_path}/o"],
    )
    with pytest.raises(ConfigError, match=r"output directory .* is not empty: set train.resume=auto"):
        train(cfg)


@pytest.mark.parametrize(
    "packing",
    [(), ("data.packing=true", "data.max_length=128", "data.pack_length=128")],
    ids=["padded", "packed"],
)
def test_resume_mid_epoch_loads_only_what_is_left_and_reaches_the_same_losses(
    tiny_model, tmp_path, packing, monkeypatch
):
    """Stop after checkpoint-3 of an 8-step run (one sample or packed row a step, mid-epoch), resume
    with train.resume=auto: the resumed run loads exactly the items the whole run loaded in steps
    4..8, in the same order, none of steps 1..3 (skipped at the sampler, never loaded), and its
    losses match."""
    from qwenvl_ft.data.dataset import SFTDataset
    from qwenvl_ft.data.packing import PackedDataset

    cls = PackedDataset if packing else SFTDataset
    loads: list[int] = []
    getitem = cls.__getitem__
    monkeypatch.setattr(cls, "__getitem__", lambda self, i: (loads.append(i), getitem(self, i))[1])
    model_dir = tiny_model("qwen2_5_vl")
    steps = [
        "train.max_steps=8",
        "train.save_steps=3",
        "train.logging_steps=1",
        "train.per_device_batch_size=1",
    ]
    full = run(model_dir, tmp_path / "a", "qwen2_5_vl", "lora", *steps, *packing)
    # accelerate's loader reads one batch ahead, so a run that ends mid-epoch loads a ninth item.
    whole, loads[:] = list(loads), []
    assert len(whole) in (8, 9) and len(set(whole[:4])) == 4, whole  # step 4 is in the first epoch
    stopped = tmp_path / "b"
    stopped.mkdir()
    shutil.copytree(tmp_path / "a/checkpoint-3", stopped / "checkpoint-3")  # as if killed after the save
    resumed = run(model_dir, stopped, "qwen2_5_vl", "lora", *steps, *packing, "train.resume=auto")
    assert loads == whole[3:], (loads, whole)
    by_step = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    expected = {h["step"]: h["loss"] for h in full.log_history if "loss" in h and h["step"] > 3}
    assert sorted(by_step) == list(range(1, 9))  # steps 1-3 come from the checkpoint's history
    # Same data order, RNG and optimizer state: equal up to float summation order (CPU: ~1e-6).
    for step, loss in expected.items():
        assert abs(by_step[step] - loss) < 1e-4, (step, by_step[step], loss)


def test_text_only_batch_still_runs_the_vision_tower(tiny_model):
    """Under ZeRO-3 / FSDP a rank that skips the vision tower hangs the others; the keepalive
    makes every vision and merger parameter take part in backward on a batch without images."""
    family = get_family("qwen2_5_vl")
    model = family.load_model(str(tiny_model("qwen2_5_vl")), dtype=torch.float32)
    ids = torch.tensor([[151644, 872, 198, 9707, 151645]])
    loss = model(input_ids=ids, labels=ids).loss + family.vision_keepalive(model)
    loss.backward()
    vision = [(n, p) for n, p in model.named_parameters() if n.startswith("model.visual.")]
    assert vision and all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for _, p in vision)


@pytest.fixture(scope="module")
def eval_run(tiny_model, tmp_path_factory):
    """(result, out): a LoRA run with held-out data, evaluated and saved every 2 of its 4 steps,
    with generation-based task metrics and the best checkpoint by eval loss; read by two tests."""
    root = tmp_path_factory.mktemp("eval-run")
    result = run(
        tiny_model("qwen2_5_vl"),
        root / "o",
        "qwen2_5_vl",
        "lora",
        f"data.eval=[{{path: {DEMO}}}]",
        "train.max_steps=4",
        "train.eval_steps=2",
        "train.save_steps=2",
        "eval.generate=true",
        "eval.max_new_tokens=6",
        "eval.limit=4",
        "eval.best_metric=loss",
    )
    yield result, root / "o"
    shutil.rmtree(root)


def test_eval_set_is_checked_and_its_loss_logged(eval_run):
    result, _ = eval_run
    evals = [h for h in result.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4] and evals[1]["eval_loss"] < evals[0]["eval_loss"]


def test_eval_set_with_errors_refuses_to_start(tiny_model, tmp_path):
    from qwenvl_ft.data.readers import DataError

    bad = REPO / "tests/data/bad_samples/samples.jsonl"
    with pytest.raises(DataError, match=r"the data check of data.eval found \d+ error"):
        run(tiny_model("qwen2_5_vl"), tmp_path / "out", "qwen2_5_vl", "lora", f"data.eval=[{{path: {bad}}}]")


@pytest.mark.parametrize("family", sampled(FAMILIES, "packed_run"))
def test_packed_run_follows_the_padded_run_step_for_step(tiny_model, tmp_path, family):
    """All 8 demo samples per step: one packed row or one padded batch of 8. Same samples, same
    mean over the same supervised tokens, so the two runs must take the same steps."""
    model_dir = tiny_model(family)
    # Adam's first steps are sign-like: a small rate keeps float-order noise in near-zero gradients small.
    common = ["train.max_steps=4", "train.logging_steps=1", "lora.dropout=0.0", "train.learning_rate=1e-3"]
    padded = run(model_dir, tmp_path / "padded", family, "lora", *common, "train.per_device_batch_size=8")
    packed = run(
        model_dir,
        tmp_path / "packed",
        family,
        "lora",
        *common,
        "train.per_device_batch_size=1",
        "data.packing=true",
        "data.pack_length=8192",
    )
    assert len(losses(packed)) == len(losses(padded)) == 4
    for a, b in zip(losses(packed), losses(padded), strict=True):
        assert abs(a - b) < 1e-4, (losses(packed), losses(padded))
    assert losses(packed)[-1] < losses(packed)[0]


def test_packing_trains_rows_of_several_samples(tiny_model, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="qwenvl_ft")
    result = run(
        tiny_model("qwen2_5_vl"),
        tmp_path / "o",
        "qwen2_5_vl",
        "lora",
        "data.packing=true",
        "data.pack_length=600",
        "train.per_device_batch_size=2",
    )
    assert_falls(result)
    assert "packing: 8 samples into" in caplog.text


def test_task_metrics_during_training_and_best_checkpoint(eval_run):
    result, out = eval_run
    evals = [h for h in result.log_history if "eval_grounding.acc@0.5" in h]
    assert [h["step"] for h in evals] == [2, 4]
    # The demo's first four samples: two captions (VQA metric here) and two grounding answers.
    assert all("eval_vqa.exact_match" in h and 0 <= h["eval_grounding.miou"] <= 1 for h in evals)
    state = json.loads((out / "trainer_state.json").read_text())
    losses = {h["step"]: h["eval_loss"] for h in result.log_history if "eval_loss" in h}
    best_step = min(losses, key=losses.get)
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")


def test_best_metric_needs_eval_data(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="'eval.generate' and 'eval.best_metric' need held-out data"):
        run(tiny_model("qwen2_5_vl"), tmp_path / "o", "qwen2_5_vl", "lora", "eval.best_metric=loss")
