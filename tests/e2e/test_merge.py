"""Merging: for every family and LoRA / LoRA + modules_to_save / Q-LoRA, the merged checkpoint gives
the adapter model's logits, and reloads in a fresh process with transformers alone. (Converting a
ZeRO-3 checkpoint is tested in test_train_distributed.py, on the ZeRO-3 run it shares.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from family_facts import sampled, trained_by_test_train

from qwenvl_ft.cli import main
from qwenvl_ft.config import load_recipe
from qwenvl_ft.merge import MergeError, logits, merge, verification_inputs
from qwenvl_ft.models import get_family
from qwenvl_ft.train import train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"
FAMILIES = trained_by_test_train()
VARIANTS = {
    "lora": ["train.mode=lora"],
    "lora_modules_to_save": ["train.mode=lora", "model.is_base=true"],
    "qlora": ["train.mode=qlora", "model.dtype=bf16"],
}


def lora_run(model_dir: Path, out: Path, family: str, variant: str) -> Path:
    cfg = load_recipe(
        REPO / f"recipes/tiny/{family}_lora.yaml",
        [
            f"model.path={model_dir}",
            f"output.dir={out}",
            f"data.train=[{{path: {DEMO}}}]",
            "data.num_workers=0",
            "train.max_steps=4",
            "train.save_steps=1000",
            "train.learning_rate=5e-2",
            "train.warmup_ratio=0",
            *VARIANTS[variant],
        ],
    )
    train(cfg)
    # Merging reads the run's top level only: its resumable checkpoint (the adapter again and its Adam
    # states, ~240 MB with modules_to_save) goes now, not when the test ends.
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    return out


# Runs in its own interpreter that never imports qwenvl_ft: transformers alone must load each merged
# directory. One interpreter serves every case of the module (a request a line: the paths), so the
# ~5 s of starting Python and importing torch and transformers is paid once, not per case.
RELOAD = textwrap.dedent("""
    import json, sys, traceback, torch, transformers

    def reload(out, inputs_file, logits_file):
        arch = json.load(open(out + "/config.json"))["architectures"][0]
        model = getattr(transformers, arch).from_pretrained(out, dtype=torch.float32).eval()
        transformers.AutoTokenizer.from_pretrained(out)
        transformers.Qwen2VLImageProcessorPil.from_pretrained(out)
        inputs = torch.load(inputs_file)
        with torch.no_grad():
            torch.save([model(**x).logits for x in inputs], logits_file)
        assert not any(m.startswith("qwenvl_ft") for m in sys.modules), "loaded qwenvl_ft"

    for line in sys.stdin:
        try:
            reload(*json.loads(line))
            print(json.dumps("ok"), flush=True)
        except Exception:
            print(json.dumps(traceback.format_exc()), flush=True)
""")


class Reloader:
    """The reload interpreter: `start(args)` hands it a merged directory, `result()` waits for it."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RELOAD], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def start(self, args: list[str]) -> None:
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()

    def result(self) -> str:
        line = self.proc.stdout.readline()
        assert line, f"the reload interpreter exited ({self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def reloader(tmp_path_factory):
    r = Reloader(tmp_path_factory.mktemp("reload"))
    yield r
    r.close()


@pytest.mark.parametrize("family", sampled(FAMILIES, "merge"))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_merged_checkpoint_matches_the_adapter_and_loads_with_transformers_alone(
    tiny_model, reloader, tmp_path, family, variant
):
    from peft import PeftModel

    if variant == "qlora":
        pytest.importorskip(
            "bitsandbytes", reason="Q-LoRA needs bitsandbytes: pip install 'qwenvl-ft[qlora]'"
        )
    fam = get_family(family)
    model_dir = tiny_model(family)
    run_dir = lora_run(model_dir, tmp_path / "run", family, variant)
    result = merge(run_dir, tmp_path / "merged", dtype="fp32", progress=False)
    # fp32: the tolerance is 2048 roundoffs of the logit scale (~1.2e-4 for these tiny models' logits)
    assert result.kind == "lora" and result.max_logit_diff <= result.tolerance < 1e-3

    # An interpreter without qwenvl_ft reloads the merged directory with transformers alone, on the
    # second core while this one computes the expected logits independently of merge(): plain PEFT
    # on the base.
    inputs = verification_inputs(fam.load_processor(str(run_dir)))
    torch.save(inputs, tmp_path / "inputs.pt")
    reloader.start([str(tmp_path / n) for n in ("merged", "inputs.pt", "logits.pt")])
    adapter = PeftModel.from_pretrained(
        fam.load_model(str(model_dir), dtype=torch.float32), str(run_dir)
    ).eval()
    expected = [logits(adapter, x, torch.float32) for x in inputs]
    status = reloader.result()
    assert status == "ok", status[-3000:]
    got = torch.load(tmp_path / "logits.pt")
    for e, g in zip(expected, got, strict=True):
        assert (e - g).abs().max() <= max(1e-4, result.tolerance)
    # The check has power: the adapter moves logits far more than the tolerance.
    base = fam.load_model(str(model_dir), dtype=torch.float32).eval()
    assert (logits(base, inputs[0], torch.float32) - expected[0]).abs().max() > 100 * result.tolerance
    meta = json.loads((tmp_path / "merged/qwenvl_ft.json").read_text())
    assert (
        meta["kind"] == "merged"
        and meta["family"] == family
        and meta["is_base"] == (variant == "lora_modules_to_save")
    )
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "chat_template.jinja",
    ):
        assert (tmp_path / "merged" / name).is_file(), name
    assert_kept_tensors_survive(fam, model_dir, tmp_path / "merged")


def raw_tensors(folder: Path, prefixes: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
    """name -> (dtype, bytes) of every tensor named `prefixes*` in a checkpoint folder's safetensors."""
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k.startswith(prefixes):
                    t = st.get_tensor(k)
                    out[k] = (str(t.dtype), t.contiguous().view(torch.uint8).numpy().tobytes())
    return out


def assert_kept_tensors_survive(fam, base: Path, merged: Path) -> None:
    """What transformers drops on load (Qwen3.5's mtp.* heads) is in the merged output byte for byte,
    listed in its index; families that keep nothing get nothing extra."""
    if not fam.kept_tensors:
        assert not (merged / "model-kept.safetensors").exists()
        return
    want = raw_tensors(base, fam.kept_tensors)
    assert want, f"the tiny {fam.name} checkpoint has no {fam.kept_tensors} tensors to keep"
    assert raw_tensors(merged, fam.kept_tensors) == want
    index = json.loads((merged / "model.safetensors.index.json").read_text())["weight_map"]
    assert {k for k, f in index.items() if f == "model-kept.safetensors"} == set(want)


@pytest.fixture(scope="module")
def small_run(tiny_model, tmp_path_factory):
    """One LoRA run that the tests below only read (or copy), removed after the last of them."""
    root = tmp_path_factory.mktemp("run")
    yield lora_run(tiny_model("qwen2_5_vl"), root / "run", "qwen2_5_vl", "lora")
    shutil.rmtree(root)


def test_output_refusal_force_and_same_result_twice(small_run, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["merge", str(small_run), "--output", str(out)]) == 2
    assert f"{out} is not empty: pass --force to replace it" in capsys.readouterr().err
    assert (out / "keep.txt").is_file()
    assert main(["merge", str(small_run), "--output", str(out), "--force", "--max-shard-size", "20MB"]) == 0
    printed = capsys.readouterr().out
    assert (
        "verified: largest logit difference adapter vs merged" in printed and f"-> {out.resolve()}" in printed
    )
    shards = sorted(out.glob("model-*.safetensors"))
    assert (
        len(shards) > 1
        and (out / "model.safetensors.index.json").is_file()
        and not (out / "keep.txt").exists()
    )
    first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    assert main(["merge", str(small_run), "--output", str(out), "--force", "--max-shard-size", "20MB"]) == 0
    assert first == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("model-*.safetensors"))
    }


def test_interrupted_merge_leaves_nothing(small_run, tmp_path, monkeypatch):
    import transformers

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while writing shards")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        merge(small_run, tmp_path / "m", progress=False)
    assert list(tmp_path.iterdir()) == []  # no output, no staging directory


def test_moved_run_needs_and_accepts_base(small_run, tiny_model, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(small_run, moved)
    meta = json.loads((moved / "qwenvl_ft.json").read_text())
    meta["base_model"] = "/nowhere/Qwen2.5-VL-7B-Instruct"
    (moved / "qwenvl_ft.json").write_text(json.dumps(meta))
    with pytest.raises(
        MergeError, match=r"base model /nowhere/Qwen2.5-VL-7B-Instruct not found .*pass --base DIR"
    ):
        merge(moved, tmp_path / "m", progress=False)
    assert merge(moved, tmp_path / "m", base=tiny_model("qwen2_5_vl"), progress=False).output.is_dir()


def test_adapter_loads_with_plain_peft(small_run, tiny_model):
    from peft import PeftModel

    base = get_family("qwen2_5_vl").load_model(str(tiny_model("qwen2_5_vl")))
    model = PeftModel.from_pretrained(base, str(small_run))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_not_a_run(tmp_path):
    from qwenvl_ft.runs import RunError

    with pytest.raises(
        RunError, match=r"has no qwenvl_ft.json: it is not a qwenvl-ft run or checkpoint directory"
    ):
        merge(tmp_path, progress=False)
