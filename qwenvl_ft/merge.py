"""Export standalone weights from a run: LoRA / Q-LoRA adapters merged into the base, or full
fine-tuning weights (including DeepSpeed ZeRO shards), as a checkpoint of the model's generation.

    qwenvl-ft merge runs/qwen2_5_vl-7b-lora            # -> runs/qwen2_5_vl-7b-lora-merged

The run's `qwenvl_ft.json` names the base model, family and mode, so nothing else is needed.
Q-LoRA adapters merge into the base loaded in full precision, never into 4-bit weights. The
output is written to a staging directory and renamed at the end, so an interrupted merge leaves
nothing half-written; verification compares the logits of the adapter model and the merged model
on samples with images before anything is renamed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .models import get_family
from .models.base import ModelFamily
from .runs import (
    DTYPES,
    METADATA_FILE,
    RUN_TRAINING_KEYS,
    RunError,
    checkpoint_meta,
    load_adapter_model,
    processor_dir,
    read_run,
)

# Unit roundoff per dtype; verification allows VERIFY_FACTOR of them relative to the logit scale.
ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# In 16 bits the weights' own rounding dominates (measured ~5 roundoffs); in fp32 the two paths'
# different summation orders through every layer do: a strongly trained adapter reached 85, a
# Qwen3.5-MoE adapter 350 on another CPU of the same kind. A wrong merge misses by the adapter's
# whole effect, orders of magnitude more (tests/e2e/test_merge.py breaks one to check).
VERIFY_FACTOR = {torch.float32: 2048, torch.bfloat16: 64, torch.float16: 64}


class MergeError(RunError):
    """A merge that cannot go ahead; the message says what to do."""


@dataclass
class MergeResult:
    output: Path
    kind: str
    """'lora' (adapter merged), 'full' (weights re-exported) or 'zero' (rebuilt from ZeRO shards)."""
    max_logit_diff: float | None
    tolerance: float | None


def source_kind(run_dir: Path) -> str:
    """What the directory holds: an adapter, full weights, or only DeepSpeed ZeRO shards."""
    if (run_dir / "adapter_config.json").is_file():
        return "lora"
    if list(run_dir.glob("model*.safetensors")) or list(run_dir.glob("pytorch_model*.bin")):
        return "full"
    if list(run_dir.glob("global_step*")):
        return "zero"
    raise MergeError(f"{run_dir} holds no adapter, no weights and no DeepSpeed checkpoint")


def merge(
    run_dir: str | Path,
    output: str | Path | None = None,
    dtype: str = "bf16",
    base: str | Path | None = None,
    max_shard_size: str = "2GB",
    force: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> MergeResult:
    """Write standalone weights of `run_dir` to `output` (default: RUN_DIR-merged)."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    meta = read_run(run_dir)
    family = get_family(meta["family"])
    base_path = Path(base or meta["base_model"])
    if not (base_path / "config.json").is_file():
        raise MergeError(f"base model {base_path} not found (was the run moved?): pass --base DIR")
    kind = source_kind(run_dir)
    quantized = checkpoint_meta(base_path).get("quantized")
    if quantized and kind == "lora":
        raise MergeError(
            f"base model {base_path} is quantized ({quantized}): an adapter merges into 16-bit weights "
            "only; pass --base with the unquantized model (for Qwen-VL-Chat-Int4: Qwen-VL-Chat)"
        )
    out = Path(output) if output else run_dir.parent / f"{run_dir.name}-merged"
    if out.exists() and any(out.iterdir()) and not force:
        raise MergeError(f"{out} is not empty: pass --force to replace it")
    check_disk(base_path, out, dtype)
    torch_dtype = DTYPES[dtype]

    steps = tqdm(total=4, desc="merge", disable=not progress, bar_format="{desc}: {n}/{total} {postfix}")
    steps.set_postfix_str("loading")
    model = load_source(kind, run_dir, base_path, family, torch_dtype)
    steps.update()
    # Loaded once: it encodes the verification samples and is saved with the output.
    processor = family.load_processor(str(processor_dir(run_dir, base_path)))
    samples = verification_inputs(processor) if verify and kind == "lora" else []
    before = [logits(model, s, torch_dtype) for s in samples]
    steps.set_postfix_str("merging")
    if kind == "lora":
        model = model.merge_and_unload()
    steps.update()
    diff = tol = None
    if before:
        steps.set_postfix_str("verifying")
        after = [logits(model, s, torch_dtype) for s in samples]
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after, strict=True))
        scale = max(1.0, max(float(a.abs().max()) for a in before))
        tol = VERIFY_FACTOR[torch_dtype] * ROUNDOFF[torch_dtype] * scale
        if diff > tol:
            raise MergeError(
                f"verification failed: merged logits differ from the adapter model's by {diff:.3g} "
                f"(tolerance {tol:.3g} for {dtype}); nothing was written"
            )
    steps.update()
    steps.set_postfix_str("writing")
    write_output(model, processor, out, run_dir, family, meta, base_path, dtype, max_shard_size, kind)
    steps.update()
    steps.close()
    return MergeResult(out, kind, diff, tol)


def load_source(kind: str, run_dir: Path, base_path: Path, family: ModelFamily, dtype: torch.dtype):
    """The model to export (a PeftModel for adapters), loaded in full precision (never 4-bit)."""
    if kind == "lora":
        return load_adapter_model(run_dir, base_path, family, dtype)
    if kind == "full":
        return family.load_model(str(run_dir), dtype=dtype).eval()
    return model_from_zero(run_dir, base_path, family, dtype)


def model_from_zero(run_dir: Path, base_path: Path, family: ModelFamily, dtype: torch.dtype):
    """Full weights rebuilt from DeepSpeed ZeRO shards (what zero_to_fp32 does), on the base's architecture."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir))
    if any(".lora_" in k for k in state):
        raise MergeError(
            f"{run_dir} holds LoRA ZeRO shards but no adapter files; re-save the adapter from the run"
        )
    model = family.load_model(str(base_path), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights may be stored once; anything else missing means the shards are not this model's.
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if unexpected or missing:
        raise MergeError(
            f"ZeRO shards do not match {base_path}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.to(dtype).eval()


def verification_inputs(processor) -> list[dict]:
    """Two conversations with small synthetic images of different sizes, encoded by the run's processor."""
    from .data.conversation import Conversation, Segment, Turn
    from .data.encode import encode
    from .data.synthetic import shapes_image

    samples = []
    for seed, size in ((1, (160, 120)), (2, (96, 200))):
        image = shapes_image(seed, size)
        conv = Conversation(
            "verify",
            [
                Turn("user", [Segment("image", image), Segment("text", "Describe the picture.")]),
                Turn("assistant", [Segment("text", "Two shapes on a plain background.")]),
            ],
        )
        enc = encode(conv, processor, [image])
        samples.append(
            {
                "input_ids": torch.tensor([enc.input_ids]),
                "mm_token_type_ids": torch.tensor([enc.mm_token_type_ids]),
                "pixel_values": enc.pixel_values,
                "image_grid_thw": enc.image_grid_thw,
            }
        )
    return samples


@torch.no_grad()
def logits(model, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    inputs = {k: v.to(dtype) if k == "pixel_values" else v for k, v in inputs.items()}
    return model(**inputs).logits.float()


def write_output(
    model,
    processor,
    out: Path,
    run_dir: Path,
    family: ModelFamily,
    meta: dict,
    base_path: Path,
    dtype: str,
    max_shard_size: str,
    kind: str,
) -> None:
    """Everything into a staging directory, then one rename: never a half-written output."""
    from transformers import GenerationConfig

    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        carry_kept_tensors(base_path, staging, family.kept_tensors)
        processor.save_pretrained(staging)
        if (base_path / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(base_path).save_pretrained(staging)
        (staging / METADATA_FILE).write_text(
            json.dumps(
                {
                    "qwenvl_ft_version": __version__,
                    "family": family.name,
                    "kind": "merged",
                    "merged_from": str(run_dir.resolve()),
                    "base_model": str(base_path.resolve()),
                    "source": kind,
                    "mode": meta.get("mode"),
                    "is_base": meta.get("is_base", False),
                    "dtype": dtype,
                    # how the run was trained: inference on the merged model defaults to it too
                    **{k: meta[k] for k in RUN_TRAINING_KEYS if k in meta},
                },
                indent=2,
            )
            + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def carry_kept_tensors(base_path: Path, out: Path, prefixes: tuple[str, ...]) -> int:
    """Copy the base's tensors named `prefixes*` (dropped by transformers on load, so absent from the
    saved model) into `out` unchanged, in a shard of their own listed in the index. Returns how many."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not prefixes:
        return 0
    kept: dict[str, torch.Tensor] = {}
    for f in sorted(base_path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            kept.update({k: st.get_tensor(k) for k in st.keys() if k.startswith(prefixes)})
    if not kept:
        return 0
    index_file = out / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
    else:  # one unsharded file: give it an index so loaders that follow the index see both files
        with safe_open(str(out / "model.safetensors"), "pt") as st:
            index = {"metadata": {}, "weight_map": dict.fromkeys(st.keys(), "model.safetensors")}
    clash = sorted(set(kept) & set(index["weight_map"]))
    if clash:
        raise MergeError(f"the merged weights already hold {clash[0]}: not overwriting it with the base's")
    name = "model-kept.safetensors"
    save_file(kept, str(out / name), metadata={"format": "pt"})
    index["weight_map"].update(dict.fromkeys(kept, name))
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    index["metadata"]["total_size"] = sum(_tensor_bytes(out / f) for f in set(index["weight_map"].values()))
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    return len(kept)


def _tensor_bytes(file: Path) -> int:
    """Bytes of tensor data in a safetensors file: its size less the 8-byte length and the header."""
    with open(file, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return file.stat().st_size - 8 - header


def check_disk(base_path: Path, out: Path, dtype: str) -> None:
    """Refuse to start when the output's filesystem cannot hold the merged weights."""
    from safetensors import safe_open

    params = 0
    for f in base_path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            params += sum(int(torch.Size(st.get_slice(k).get_shape()).numel()) for k in st.keys())
    need = params * DTYPES[dtype].itemsize * 1.05 + 64 * 2**20  # shards + tokenizer and configs
    parent = out.parent if out.parent.exists() else Path(".")
    free = shutil.disk_usage(parent).free
    if free < need:
        raise MergeError(
            f"not enough disk space in {parent}: the merged model needs about "
            f"{need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free"
        )
