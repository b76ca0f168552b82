"""DeepSpeed ZeRO-2 and ZeRO-3 (and FSDP with packing) with two processes on CPU (gloo), through
torchrun and the real CLI.

On CPU the Trainer sees world size 1, so each process reads the whole dataset (shared NOTES);
what these runs prove is that the engines start, step, and save usable outputs: a non-empty
LoRA adapter under ZeRO-3 (gathered, not the empty shards peers produce), consolidated full
weights that load on their own, and a ZeRO-3 checkpoint that `merge` converts without them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"
DEEPSPEED = "DeepSpeed is optional: pip install 'qwenvl-ft[deepspeed]'"


def torchrun(launch_train, model_dir: Path, out: Path, *overrides: str) -> dict:
    launch_train(
        2,
        str(REPO / "recipes/tiny/qwen2_5_vl_lora.yaml"),
        f"model.path={model_dir}",
        f"output.dir={out}",
        f"data.train=[{{path: {DEMO}}}]",
        "data.num_workers=0",
        "train.max_steps=3",
        "train.save_steps=1000",
        *overrides,
    )
    return json.loads((out / "trainer_state.json").read_text())


PACKED = ("data.packing=true", "data.pack_length=1024")


@pytest.mark.parametrize(
    "engine, extra",
    [
        ("zero2", ()),
        # zero3-packed saves the adapter under ZeRO-3 too: the unpacked run is behind --run-slow
        pytest.param("zero3", (), marks=pytest.mark.slow),
        ("zero3", PACKED),
        ("fsdp", PACKED),
    ],
    ids=["zero2", "zero3", "zero3-packed", "fsdp-packed"],
)
def test_lora_under_deepspeed_or_fsdp_saves_a_full_adapter(launch_train, tiny_model, tmp_path, engine, extra):
    if engine != "fsdp":
        pytest.importorskip("deepspeed", reason=DEEPSPEED)
    state = torchrun(
        launch_train,
        tiny_model("qwen2_5_vl"),
        tmp_path / "out",
        "train.fsdp=true" if engine == "fsdp" else f"train.deepspeed=configs/deepspeed/{engine}.json",
        *extra,
    )
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    adapter = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 14 and all(t.numel() > 0 and t.abs().sum() > 0 for t in lora_b)
    assert json.loads((tmp_path / "out/qwenvl_ft.json").read_text())["mode"] == "lora"


@pytest.fixture(scope="module")
def zero3_full_run(launch_train, tiny_model, tmp_path_factory):
    """(base, run): full fine-tuning under ZeRO-3 for 2 steps, checkpoint-2 kept; read by the two
    tests below and removed after them (~340 MB: full weights and Adam states of two ranks)."""
    pytest.importorskip("deepspeed", reason=DEEPSPEED)
    model_dir = tiny_model("qwen2_5_vl")
    root = tmp_path_factory.mktemp("zero3-full")
    torchrun(
        launch_train,
        model_dir,
        root / "out",
        "train.mode=full",
        "train.max_steps=2",
        "train.save_steps=2",
        "train.learning_rate=1e-3",
        "train.deepspeed=configs/deepspeed/zero3.json",
    )
    yield model_dir, root / "out"
    shutil.rmtree(root)


def test_full_fine_tuning_under_zero3_writes_consolidated_weights(zero3_full_run):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model_dir, out = zero3_full_run
    trained = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    t, b = dict(trained.named_parameters()), dict(base.named_parameters())
    assert t.keys() == b.keys() and all(t[k].shape == b[k].shape for k in t)
    assert not torch.equal(t["lm_head.weight"], b["lm_head.weight"])  # trained, and not empty shards
    assert torch.equal(t["model.visual.patch_embed.proj.weight"], b["model.visual.patch_embed.proj.weight"])
    # Saved under the names a plain save_pretrained writes (the tiny base's), which every loader
    # reads; ZeRO-3 loading once made them 'model.model.embed_tokens' (transformers round-tripped it).
    assert safetensors_keys(out) == safetensors_keys(model_dir)


def safetensors_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    keys = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            keys |= set(st.keys())
    return keys


def test_zero3_checkpoint_without_consolidated_weights_converts(zero3_full_run, tmp_path):
    from qwenvl_ft.merge import merge
    from qwenvl_ft.models import get_family

    _, out = zero3_full_run
    fam = get_family("qwen2_5_vl")
    consolidated = {
        n: p.detach()
        for n, p in fam.load_model(str(out / "checkpoint-2"), dtype=torch.float32).named_parameters()
    }
    # The checkpoint as if stage3_gather_16bit_weights_on_model_save were off: everything but the
    # model*.safetensors, hard-linked (no copy of the optimizer states; merge only reads them).
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(
        out / "checkpoint-2", ckpt, ignore=shutil.ignore_patterns("model*.safetensors"), copy_function=os.link
    )
    result = merge(ckpt, tmp_path / "standalone", dtype="fp32", progress=False)
    assert result.kind == "zero"
    rebuilt = dict(fam.model_class().from_pretrained(tmp_path / "standalone").named_parameters())
    assert rebuilt.keys() == consolidated.keys()
    assert all(torch.equal(rebuilt[k], consolidated[k]) for k in rebuilt)


VISIT_HOOK = """
import os

if os.environ.get("QWENVL_FT_VISITS"):  # every Python process of the run, check workers included
    import qwenvl_ft.data.check as check

    checked = check.SampleRules.check

    def counted(self, source, s, i, processor):
        with open(os.environ["QWENVL_FT_VISITS"], "a") as f:
            f.write(f"{os.getpid()} {s} {i}\\n")
        return checked(self, source, s, i, processor)

    check.SampleRules.check = counted
"""


def test_one_rank_per_node_checks_each_sample_once(launch_train, tiny_model, tmp_path):
    """Two ranks on one node: rank 0 checks (in two check workers), rank 1 waits for its cached
    result. Each sample's check is counted by a hook in every process: each sample exactly once."""
    from qwenvl_ft.cli import main

    assert main(["data", "synth", str(tmp_path / "data"), "--count", "600", "--seed", "7"]) == 0
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook/sitecustomize.py").write_text(VISIT_HOOK)
    visits = tmp_path / "visits.txt"
    launch_train(
        2, str(REPO / "recipes/tiny/qwen2_5_vl_lora.yaml"), f"model.path={tiny_model('qwen2_5_vl')}",
        f"output.dir={tmp_path / 'out'}", f"data.train=[{{path: {tmp_path / 'data/data.jsonl'}}}]",
        "data.num_workers=0", "data.check_workers=2", "train.max_steps=1", "train.save_steps=1000",
        env={"PYTHONPATH": f"{tmp_path / 'hook'}:{REPO}", "QWENVL_FT_VISITS": str(visits)},
    )  # fmt: skip
    lines = [line.split() for line in visits.read_text().splitlines()]
    # Each sample once: rank 1 checked none (it read rank 0's cached result), rank 0's workers no
    # sample twice. Had both ranks checked, every sample would be here twice.
    assert sorted(int(i) for _, _, i in lines) == list(range(600))
