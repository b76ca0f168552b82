"""GPTQ checkpoints (Qwen-VL-Chat-Int4): loading them for training, and writing tiny ones for tests.

Loading goes through transformers' GPTQ integration (optimum + gptqmodel, the maintained GPTQ
library); the checkpoint's own `quantization_config` decides bits and groups, and we only choose
the kernel. Training needs a kernel with a backward pass: the fastest inference kernels (Marlin,
ExLlama) have none, so a LoRA below them would get no gradient. `auto_trainable` lets gptqmodel
pick the fastest kernel that has one, as the original scripts did with `disable_exllama=True`.

Writing: `quantize_checkpoint` turns a 16/32-bit checkpoint into the GPTQ v1 layout that
AutoGPTQ / optimum wrote for Qwen-VL-Chat-Int4 (qweight, qzeros, scales, g_idx per linear layer
of the decoder blocks, the rest untouched). It rounds to nearest on GPTQ's symmetric grid instead
of running GPTQ's Hessian-based search: the layout and the loading path are what it exercises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import ModelFamily

QUANTIZE_CONFIG = "quantize_config.json"
PUBLISHED = Path(__file__).resolve().parent / "published"


class GPTQError(ValueError):
    pass


def gptq_config(checkpoint_config: dict, backend: str) -> Any:
    """A `GPTQConfig` that keeps the checkpoint's own settings and picks the kernel (`backend`)."""
    from importlib.util import find_spec

    from transformers import GPTQConfig

    for module in ("optimum", "gptqmodel"):  # transformers loads GPTQ through both
        if find_spec(module) is None:
            raise GPTQError(
                f"this checkpoint is GPTQ-quantized and loading it needs {module}: pip install 'qwenvl-ft[gptq]'"
            )

    qc = checkpoint_config["quantization_config"]
    return GPTQConfig(bits=qc["bits"], group_size=qc.get("group_size", 128), backend=backend)


def quantized_kernels(model: torch.nn.Module) -> dict[type, list[str]]:
    """The quantized layers of a loaded model, by kernel class."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    out: dict[type, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseQuantLinear):
            out.setdefault(type(module), []).append(name)
    return out


def trains(kernel: type) -> bool:
    """Whether a gptqmodel kernel has a backward pass (gptqmodel's own flag)."""
    return getattr(kernel, "SUPPORTS_TRAINING", False) is True


# -- writing ---------------------------------------------------------------------------------------
def quantize_weight(weight: torch.Tensor, bits: int = 4, group_size: int = 128) -> dict[str, torch.Tensor]:
    """One nn.Linear weight (out, in) as GPTQ v1 tensors, symmetric, round to nearest.

    qweight (in*bits/32, out) int32: input rows packed low bits first; qzeros (groups, out*bits/32)
    int32: zero point minus one (the v1 convention), packed along outputs; scales (groups, out)
    fp16; g_idx (in,) int32: the group of each input row. Dequantized: scale * (q - zero).
    """
    out_f, in_f = weight.shape
    if in_f % group_size or (out_f * bits) % 32 or 32 % bits:
        raise GPTQError(
            f"a ({out_f}, {in_f}) weight does not split into groups of {group_size} / {bits}-bit words"
        )
    maxq = 2**bits - 1
    w = weight.detach().float().cpu().t().reshape(in_f // group_size, group_size, out_f)
    amax = w.abs().amax(dim=1)  # (groups, out)
    # GPTQ's symmetric quantizer: scale spans [-amax, amax] over maxq steps, zero in the middle.
    scale = torch.where(amax > 0, 2 * amax / maxq, torch.ones_like(amax)).half().float()
    zero = (maxq + 1) // 2
    q = torch.clamp(torch.round(w / scale[:, None, :]) + zero, 0, maxq).to(torch.int64).reshape(in_f, out_f)
    per_word = 32 // bits
    zeros = np.full((in_f // group_size, out_f), zero - 1, dtype=np.uint32)
    return {
        "qweight": _pack(q.numpy().astype(np.uint32), per_word, bits, axis=0),
        "qzeros": _pack(zeros, per_word, bits, axis=1),
        "scales": scale.half(),
        "g_idx": torch.arange(in_f, dtype=torch.int32) // group_size,
    }


def _pack(values: np.ndarray, per_word: int, bits: int, axis: int) -> torch.Tensor:
    """Pack `per_word` consecutive entries along `axis` into one 32-bit word, the first in the low bits."""
    v = np.moveaxis(values, axis, 0)
    words = np.zeros((v.shape[0] // per_word, *v.shape[1:]), dtype=np.uint32)
    for k in range(per_word):
        words |= v[k::per_word] << np.uint32(bits * k)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(words, 0, axis)).view(np.int32))


def published_quantization(family: ModelFamily) -> tuple[str, dict]:
    """(blocks, quantization_config) of the generation's published GPTQ checkpoint."""
    path = PUBLISHED / f"{family.name}-int4.json"
    if family.gptq_blocks is None or not path.is_file():
        raise GPTQError(f"{family.title}: no published GPTQ checkpoint is modelled here")
    return family.gptq_blocks, json.loads(path.read_text())["quantization_config"]


def quantize_checkpoint(model: torch.nn.Module, family: ModelFamily, out_dir: str | Path) -> list[str]:
    """Save `model` to `out_dir` (already holding its config) as a GPTQ checkpoint laid out like the
    generation's published one: every nn.Linear of the decoder blocks quantized, the rest in fp16.
    Returns the quantized layer names."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    blocks, quantization_config = published_quantization(family)
    bits, group = quantization_config["bits"], quantization_config["group_size"]
    tensors: dict[str, torch.Tensor] = {}
    done: list[str] = []
    for name, module in model.named_modules():
        if name.startswith(blocks + ".") and isinstance(module, torch.nn.Linear):
            for key, value in quantize_weight(module.weight, bits, group).items():
                tensors[f"{name}.{key}"] = value
            done.append(name)
    if not done:
        raise GPTQError(f"no linear layer under {blocks!r} to quantize")
    replaced = {f"{n}.weight" for n in done}
    for key, value in model.state_dict().items():
        if key not in replaced:
            value = value.detach().cpu()
            tensors[key] = value.half().contiguous() if value.is_floating_point() else value
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    config["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    fields = {k: v for k, v in quantization_config.items() if k != "quant_method"}
    (out / QUANTIZE_CONFIG).write_text(json.dumps(fields, indent=2) + "\n")
    return done
