"""Loading the model for a training mode and making exactly the intended parameters trainable.

- full:  every part trains except those the recipe freezes (vision tower by default; the merger
         trains unless `train.freeze_merger`).
- lora:  base frozen; LoRA on the family's language-model targets; embeddings and lm_head trained
         in full through `modules_to_save` for base (non-chat) models, whose chat special tokens
         were never learned; merger / vision trained in full too when the recipe unfreezes them.
- qlora: lora on a base quantized to 4 bits on the fly (bitsandbytes), vision tower and lm_head kept
         in full precision.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from ..config import ConfigError, RecipeConfig
from ..models.base import ModelFamily
from ..models.gptq import GPTQError, gptq_config, quantized_kernels, trains
from ..models.sharded_loading import compare_true_shapes
from ..runs import DTYPES, checkpoint_meta
from . import expert_parallel
from .modules import parameter_bytes, set_trainable

log = logging.getLogger("qwenvl_ft")


def resolve_is_base(cfg: RecipeConfig) -> bool:
    """Base or chat model: the recipe decides; else the checkpoint's metadata; else chat (logged)."""
    if cfg.model.is_base is not None:
        return cfg.model.is_base
    meta = checkpoint_meta(cfg.model.path)
    if "is_base" in meta:
        return bool(meta["is_base"])
    log.info(
        "model.is_base is not set and the checkpoint does not say: treating it as a chat model "
        "(set model.is_base: true for a base model, so LoRA also trains embeddings and lm_head)"
    )
    return False


def check_compatible(cfg: RecipeConfig, meta: dict) -> None:
    """Refuse, at start, combinations that cannot work."""
    mode = cfg.train.mode
    if meta.get("quantized"):
        if mode == "full":
            raise ConfigError(
                f"{cfg.model.path} is quantized ({meta['quantized']}): full fine-tuning cannot update "
                "quantized weights; use train.mode: lora"
            )
        if mode == "qlora":
            raise ConfigError(
                f"{cfg.model.path} is already quantized ({meta['quantized']}): use train.mode: lora, "
                "which trains LoRA on the quantized checkpoint"
            )
    if mode == "qlora" and cfg.train.fsdp:
        raise ConfigError("Q-LoRA under FSDP is not supported: use DeepSpeed ZeRO-2 or a single GPU")
    if mode in ("lora", "qlora") and cfg.train.freeze_language:
        raise ConfigError(
            "LoRA trains the language model: 'train.freeze_language' only applies to train.mode: full"
        )
    if mode == "full" and cfg.train.freeze_language and cfg.train.freeze_vision and cfg.train.freeze_merger:
        raise ConfigError("every part is frozen: nothing to train")
    if cfg.train.liger:
        if not torch.cuda.is_available():
            raise ConfigError("train.liger: Liger's Triton kernels need a CUDA GPU; set train.liger: false")
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            raise ConfigError("train.liger needs Liger-Kernel: pip install 'qwenvl-ft[liger]'") from None
        if cfg.train.loss == "standard":
            raise ConfigError("train.liger brings its own fused loss: use train.loss: chunked with it")
    if cfg.model.dtype == "fp16" and not torch.cuda.is_available():
        raise ConfigError("fp16 training needs a GPU; on CPU use model.dtype: fp32 or bf16")


def load_model(cfg: RecipeConfig, family: ModelFamily) -> torch.nn.Module:
    dtype = DTYPES[cfg.model.dtype]
    kwargs: dict = {"attn_implementation": cfg.model.attn_implementation}
    if cfg.train.mode == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant.quant_type,
            bnb_4bit_use_double_quant=cfg.quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
            # Full module paths: a bare "visual" no longer matches in transformers 5 (shared NOTES).
            llm_int8_skip_modules=[family.paths.vision, family.paths.lm_head],
        )
    if cfg.train.expert_parallel > 1:  # sharded while it loads (expert_parallel.py)
        kwargs["distributed_config"] = expert_parallel.distributed_config(cfg, family)
    if cfg.train.expert_parallel > 1 or is_deepspeed_zero3_enabled():
        compare_true_shapes()  # Qwen3-VL-MoE's expert transpose, decided on the sharded shapes otherwise
    gptq = checkpoint_meta(cfg.model.path).get("quantized") == "gptq"
    if gptq:  # check_compatible allows only LoRA on it
        kwargs["quantization_config"] = gptq_loading(cfg)
    with warnings.catch_warnings():
        # transformers warns that our GPTQConfig meets the checkpoint's: only the kernel is ours, by design.
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = family.load_model(cfg.model.path, dtype=dtype, **kwargs)
    if gptq:
        check_gptq_kernels(model, cfg)
    if cfg.train.expert_parallel > 1:
        expert_parallel.check_sharded(model, family, cfg.train.expert_parallel)
        expert_parallel.balance_router_over_ranks()
        expert_parallel.log_layout(model, cfg.train.expert_parallel)
    if is_deepspeed_zero3_enabled():
        # Loading under zero.Init records extra key renames (transformers 5.24) that save_pretrained
        # then reverses on top of the real ones: the saved weights were named 'model.model.embed_tokens'.
        # Without recorded conversions the weights are saved under the model's own names.
        model._weight_conversions = None
    if cfg.data.packing:  # positions keep attention apart; state beyond attention is the family's
        family.isolate_packed_samples(model)
    if cfg.train.liger and not family.apply_liger(model):
        log.info(f"Liger has no kernels for {family.title}: only its fused linear cross-entropy is used")
    if cfg.train.freeze_vision:
        keep_frozen_vision_out_of_backward(model, family)
    if family.router_aux_loss:
        # The router's load-balancing loss: off in the published config (inference), on for training;
        # the model then returns aux_loss, which the trainer adds (router_aux_loss_coef) and logs.
        model.config.get_text_config().output_router_logits = True
    for note in family.speed_notes("cuda" if torch.cuda.is_available() else "cpu"):
        log.warning(note)
    return model


def gptq_loading(cfg: RecipeConfig):
    """The checkpoint's GPTQ settings with a kernel that can train (`quant.gptq_backend`)."""
    config = json.loads((Path(cfg.model.path) / "config.json").read_text())
    try:
        return gptq_config(config, cfg.quant.gptq_backend)
    except GPTQError as e:
        raise ConfigError(f"{cfg.model.path}: {e}") from None


def check_gptq_kernels(model: torch.nn.Module, cfg: RecipeConfig) -> None:
    """Refuse kernels without a backward pass: LoRA layers below them would silently get no gradient."""
    kernels = quantized_kernels(model)
    bad = [f"{k.__name__} ({len(v)} layers)" for k, v in kernels.items() if not trains(k)]
    if bad:
        raise ConfigError(
            f"{cfg.model.path}: the GPTQ kernel {', '.join(bad)} has no backward pass, so LoRA cannot "
            f"train through it (quant.gptq_backend: {cfg.quant.gptq_backend}); use quant.gptq_backend: "
            "auto_trainable"
        )
    count = sum(len(v) for v in kernels.values())
    log.info(f"GPTQ checkpoint: {count} quantized layers, kernel {', '.join(k.__name__ for k in kernels)}")


def keep_frozen_vision_out_of_backward(model: torch.nn.Module, family: ModelFamily) -> None:
    """Stop `enable_input_require_grads` from hooking the vision tower's patch embedding.

    transformers hooks the input embeddings of every sub-model, the ViT's included, whenever
    activation checkpointing or PEFT turns it on; a frozen vision tower then records its whole
    graph and runs backward for nothing (about 1.2 GiB for a 7B model with one 1024-token image).
    The text embeddings keep their hook, which LoRA with checkpointing needs.
    """
    if not hasattr(model, "enable_input_require_grads"):
        return
    vision = model.get_submodule(family.paths.vision)
    enable = model.enable_input_require_grads

    def enable_outside_vision() -> None:
        enable()
        for module in vision.modules():
            for handle in list(getattr(model, "_require_grads_hooks", [])):
                if handle.id in module._forward_hooks:
                    handle.remove()
                    model._require_grads_hooks.remove(handle)

    model.enable_input_require_grads = enable_outside_vision


def modules_to_save(cfg: RecipeConfig, family: ModelFamily, is_base: bool) -> list[str]:
    if cfg.lora.modules_to_save is not None:
        return list(cfg.lora.modules_to_save)
    names = [family.paths.embeddings, family.paths.lm_head] if is_base else []
    if not cfg.train.freeze_vision:
        names.append(family.paths.vision)  # includes the merger
    elif cfg.train.freeze_merger is False:
        names += list(family.paths.merger)
    return names


def adapt(model: torch.nn.Module, cfg: RecipeConfig, family: ModelFamily, is_base: bool) -> torch.nn.Module:
    """Freeze, or wrap with LoRA, so that exactly the intended parameters train."""
    t = cfg.train
    if t.mode == "full":
        parts = {"language", "embeddings", "lm_head", "other"} if not t.freeze_language else set()
        if not t.freeze_vision:
            parts.add("vision")
        if not t.freeze_merger:  # None: the merger trains in full fine-tuning (as the official scripts do)
            parts.add("merger")
        set_trainable(model, family.paths, parts)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if t.mode == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = (
        family.lora_target_regex
        if cfg.lora.targets is None
        else "|".join(f"(?:{r})" for r in cfg.lora.targets)
    )
    save = modules_to_save(cfg, family, is_base)
    if save:
        count, cost = parameter_bytes(model, save)
        log.info(
            f"modules_to_save {save}: {count / 1e6:.1f} M parameters trained in full, about "
            f"{cost / 2**30:.2f} GiB more for their weights, gradients and AdamW states"
        )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        target_parameters=expert_parameters(cfg, family),
        modules_to_save=save or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if t.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


def expert_parameters(cfg: RecipeConfig, family: ModelFamily) -> list[str] | None:
    """The fused expert weights LoRA adapts when the recipe asks (`lora.experts`), else None.

    PEFT wraps each 3-D parameter with a low-rank delta per expert; it trains and merges like LoRA on
    a Linear (tests/unit/models/test_qwen3_5.py).
    """
    if not cfg.lora.experts:
        return None
    if not family.lora_expert_parameters:
        raise ConfigError(
            f"lora.experts: {family.title} has no fused expert weights to adapt; set lora.experts: false"
        )
    if cfg.train.mode == "qlora":
        raise ConfigError("lora.experts with train.mode: qlora: bitsandbytes leaves 3-D expert weights alone")
    return list(family.lora_expert_parameters)


def upcast_trainable(model: torch.nn.Module) -> None:
    """Keep trainable parameters in fp32 (mixed precision computes in 16 bits; the update stays exact)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
