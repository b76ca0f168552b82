"""Peak GPU memory per rank for one Setup: weights, gradients, optimizer, activations, loss, overhead.

Precision, as the training code runs (qwenvl_ft.train / training.setup):
- no DeepSpeed (plain Trainer, FSDP): trainable parameters are upcast to fp32 (`upcast_trainable`,
  PEFT's fp32 adapters), so 4 bytes of weight + 4 of fp32 gradient + 8 of AdamW moments; under
  autocast each trainable matmul weight also gets a 16-bit copy for forward and backward;
- DeepSpeed bf16/fp16: the engine casts every parameter to 16 bits and keeps fp32 master weights
  and both moments itself (12 bytes), with 16-bit gradients;
- Q-LoRA (bitsandbytes): language-model Linear weights in 4 bits (nf4/fp4 + absmax constants);
  `prepare_model_for_kbit_training` upcasts every other parameter (vision tower, embeddings,
  lm_head, norms) to fp32, which also makes the residual stream fp32; DeepSpeed casts them back;
- a GPTQ checkpoint (Qwen-VL-Chat-Int4): its own bits and group size, the rest in model.dtype.
ZeRO stage 1 divides optimizer states by the ranks, 2 also gradients, 3 (and FSDP) also weights,
plus the parameters gathered at a time; offload_* sections move them to CPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import experts
from .activations import Precision, decoder_extra, loss_bytes, merger_bytes, stack_bytes
from .model import Linear, ModelFacts, image_budget
from .sequence import buffer_bytes, local_tokens
from .setup import Setup

GIB = 2**30
CUDA_CONTEXT_GIB = 0.75
"""CUDA context, cuBLAS / NCCL workspaces and kernels: not visible to the caching allocator."""
MARGIN = 0.10
"""Allocator fragmentation and caching: what is reserved but not allocated."""


@dataclass(frozen=True)
class Term:
    name: str
    gib: float
    phase: str
    """static (all step long), step (optimizer step only) or fwd (forward + backward only)."""
    note: str = ""


@dataclass
class Plan:
    """One estimate: its terms, the total per rank, and what was assumed."""

    setup: Setup
    terms: list[Term]
    params: dict[str, float]
    """total, trainable, lora (counts) and per part."""
    notes: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    """Lines describing the model and the run (printed above the table)."""

    @property
    def total_gib(self) -> float:
        return sum(t.gib for t in self.terms if t.phase in ("static", "overhead")) + self.dynamic_gib

    @property
    def dynamic_gib(self) -> float:
        fwd = sum(t.gib for t in self.terms if t.phase == "fwd")
        return max(fwd, sum(t.gib for t in self.terms if t.phase == "step"))

    def term(self, name: str) -> float:
        return sum(t.gib for t in self.terms if t.name.startswith(name))


def trainable_parts(s: Setup) -> set[str]:
    """Parts trained in full fine-tuning, as `training.setup.adapt` freezes them."""
    parts = set() if s.freeze_language else {"language", "embeddings", "lm_head", "other"}
    if not s.freeze_vision:
        parts.add("vision")
    if s.freeze_merger is not True:
        parts.add("merger")
    return parts


@dataclass(frozen=True)
class Quantized:
    layers: list[Linear]
    per_weight: float
    """Bytes per weight element, constants included."""
    per_row: int
    """Bytes per input row of each layer (GPTQ's g_idx)."""
    desc: str


def quantized(facts: ModelFacts, s: Setup) -> Quantized | None:
    """The Linear layers stored quantized and their cost, or None for 16-bit weights."""
    layers = [lin for lin in facts.linears if lin.part in ("language", "other")]
    q = facts.quantization
    if q is not None:
        bits, group = int(q.get("bits", 4)), int(q.get("group_size", 128) or 128)
        # qweight packed, an fp16 scale and a packed zero point per group of `group` inputs.
        per = bits / 8 + (2 + bits / 8) / group
        method = q.get("quant_method", "quantized")
        return Quantized(layers, per, 4, f"{method} {bits}-bit, groups of {group}")
    if s.mode == "qlora":
        absmax = 1 / 64 + 4 / (64 * 256) if s.double_quant else 4 / 64
        desc = f"{s.quant_type} 4-bit" + (" + double quant" if s.double_quant else "")
        return Quantized(layers, 0.5 + absmax, 0, desc)
    return None


def weight_bytes(facts: ModelFacts, s: Setup, trainable: set[str]) -> tuple[float, str]:
    """Bytes of every stored parameter of the base model on one rank (before ZeRO-3 sharding)."""
    frozen_b = 4 if s.dtype == "fp32" or (s.mode == "qlora" and not s.engine.deepspeed) else 2
    train_b = 2 if s.mixed and s.engine.deepspeed else 4
    total = 0.0
    for part, n in facts.by_part.items():
        b = train_b if s.mode == "full" and part in trainable else frozen_b
        total += n * b
    desc = f"{'fp32' if frozen_b == 4 else s.dtype}"
    q = quantized(facts, s)
    if q:
        for lin in q.layers:
            total += lin.in_features * (lin.out_features * (q.per_weight - frozen_b) + q.per_row)
        desc = f"language-model Linear layers {q.desc}, the rest {desc}"
    if s.mode == "full" and train_b != frozen_b and trainable:
        desc += f", trained parts {'fp32' if train_b == 4 else s.dtype}"
    return total, desc


def trainable_counts(facts: ModelFacts, s: Setup) -> dict[str, float]:
    """Trainable parameter counts: LoRA adapters, modules_to_save copies, or the parts trained in full."""
    if s.mode == "full":
        n = sum(v for p, v in facts.by_part.items() if p in trainable_parts(s))
        return {"trainable": n, "lora": 0, "copies": 0}
    lora, _ = facts.lora_params(s.lora_targets, s.lora_r)
    copies = facts.module_params(list(s.modules_to_save))
    return {"trainable": lora + copies, "lora": lora, "copies": copies}


def state_terms(facts: ModelFacts, s: Setup) -> tuple[list[Term], dict[str, float]]:
    """Weights, gradients, optimizer states, ZeRO-3 gathering and the optimizer step's scratch."""
    e, n = s.engine, s.nproc
    parts = trainable_parts(s) if s.mode == "full" else set()
    counts = trainable_counts(facts, s)
    pt = counts["trainable"]
    weights, desc = weight_bytes(facts, s, parts)
    ds_mixed = e.deepspeed and s.mixed
    if s.mode != "full":  # LoRA adapters and modules_to_save copies, next to the frozen base
        weights += pt * (2 if ds_mixed else 4)
        desc += f", + trainable adapters{' and copies' if counts['copies'] else ''} in {s.dtype if ds_mixed else 'fp32'}"
    w_div, g_div, o_div = (n if e.stage >= 3 else 1), (n if e.stage >= 2 else 1), (n if e.stage >= 1 else 1)
    terms = []
    if e.offload_param:
        terms.append(
            Term("weights", 0.0, "static", f"{desc}: offloaded to CPU ({weights / GIB:.1f} GiB there)")
        )
    else:
        shard = f", 1/{n} per rank" if w_div > 1 else ""
        terms.append(Term("weights", weights / w_div / GIB, "static", desc + shard))
    grad_b = 2 if ds_mixed else 4
    opt_b = 12 if ds_mixed else 8
    if e.offload_optimizer:
        cpu = pt * (opt_b + 4) / o_div / GIB
        terms.append(Term("gradients", 0.0, "static", "reduced into buckets, kept on CPU"))
        terms.append(Term("optimizer states", 0.0, "static", f"AdamW on CPU ({cpu:.1f} GiB there)"))
    else:
        g_note = f"{'16-bit' if grad_b == 2 else 'fp32'}" + (f", 1/{n} per rank" if g_div > 1 else "")
        o_note = ("fp32 master + 2 moments" if ds_mixed else "2 fp32 moments") + (
            f", 1/{n} per rank" if o_div > 1 else ""
        )
        terms.append(Term("gradients", pt * grad_b / g_div / GIB, "static", g_note))
        terms.append(Term("optimizer states", pt * opt_b / o_div / GIB, "static", o_note))
        # torch AdamW (foreach) allocates one fp32 temporary per state; DeepSpeed an fp32 gradient copy.
        scratch = pt * (4 + (4 if ds_mixed else 0)) / o_div
        terms.append(Term("optimizer step scratch", scratch / GIB, "step", "only while the optimizer steps"))
    wb = 4 if s.dtype == "fp32" else 2
    if s.ep > 1:
        gathered = experts.gathered_bytes(facts, s, wb)
        what = "two dense blocks + this rank's experts of one layer, or the largest module"
        if s.nproc == s.ep:
            what = "two dense blocks (each rank's experts stay whole), or the largest module"
        terms.append(Term("FSDP2 gathered weights", gathered / GIB, "fwd", what))
    elif e.stage >= 3:
        gathered = max(2 * facts.block_params(), facts.largest_module()) * wb
        terms.append(
            Term("ZeRO-3 gathered weights", gathered / GIB, "fwd", "two blocks or the largest module")
        )
    if s.mode == "full" and s.mixed and not e.deepspeed and e.stage == 0:
        terms.append(Term("autocast 16-bit copies", pt * 2 / GIB, "fwd", "of the fp32 trainable weights"))
    return terms, counts


def precision(s: Setup) -> Precision:
    # Q-LoRA without DeepSpeed: fp32 embeddings and norms turn the residual stream fp32.
    e = 4 if s.dtype == "fp32" or (s.mode == "qlora" and not s.engine.deepspeed) else 2
    return Precision(e=e, a=e if s.engine.deepspeed else 4)


def block_adapters(facts: ModelFacts, s: Setup, part: str, depth: int, index: int = 0) -> list[int]:
    """Input widths of the LoRA layers inside block `index` of `part` (it stands for all of its kind)."""
    if s.mode == "full":
        return []
    _, hits = facts.lora_params(s.lora_targets, s.lora_r)
    prefix = facts.block_prefix(part, depth, index)
    return [lin.in_features for lin in hits if prefix and lin.name.startswith(prefix)]


def text_activations(facts: ModelFacts, s: Setup, p: Precision) -> tuple[float, str]:
    b = facts.shapes.text
    if s.attn == "eager":
        b = replace(b, eager_attention=True)
    if s.liger:
        b = replace(b, rms_norm=False)  # Liger's RMSNorm keeps its 16-bit input, no fp32 copy
    trainable = s.mode == "full" and "language" in trainable_parts(s)
    tokens = local_tokens(s)  # sequence parallel: this rank's 1/sp of the tokens (attention sees all)
    # SDPA gets a mask with padding (batch > 1) or packing, and then repeats k and v to every head.
    repeated = s.attn != "flash_attention_2" and (s.batch > 1 or s.packing or s.attn == "eager")
    lin = facts.shapes.linear  # hybrid decoders: full and linear-attention blocks hold different adapters
    full_at = lin.first_full if lin is not None and lin.first_full is not None else 0
    total = stack_bytes(
        b,
        tokens,
        p,
        s.gradient_checkpointing,
        linear=lin,
        linear_adapters=block_adapters(facts, s, "language", b.depth, lin.first_linear) if lin else (),
        trainable=trainable,
        adapters=block_adapters(facts, s, "language", b.depth, full_at),
        r=s.lora_r,
        dropout=s.lora_dropout,
        kv_repeated=repeated,
        seq=s.seq,
    ) + decoder_extra(b, tokens, p, trainable)
    how = "layer inputs + one recomputed layer" if s.gradient_checkpointing else "every layer"
    shard = f", 1/{s.sp} of them on this rank" if s.sp > 1 else ""
    return total, f"{s.batch} x {s.seq} tokens{shard}, {how}"


def vision_patches(facts: ModelFacts, s: Setup) -> tuple[int, str]:
    """Patches through the vision tower per micro-batch, and how that budget was read."""
    if s.images == 0:
        return 0, "no images"
    family = facts.family
    tokens, patches = image_budget(family, s.max_pixels, s.min_pixels)
    images = min(s.images, s.seq // tokens)
    spread = f", frames spread over {s.sp} ranks" if s.sp > 1 else ""
    if images == 0:  # one image at max_pixels alone overflows a row: the largest that fits
        merge = patches // tokens
        note = f"one image of {s.seq} tokens (max_pixels would give {tokens}){spread}"
        return -(-s.batch * s.seq * merge // s.sp), note
    note = f"{images} image(s) x {tokens} tokens ({patches} patches) per row{spread}"
    return -(-s.batch * images * patches // s.sp), note


def vision_activations(facts: ModelFacts, s: Setup, p: Precision) -> tuple[float, str]:
    """What the vision tower and merger keep for backward.

    A frozen tower keeps nothing unless something upstream needs gradients: trained vision weights
    or LoRA inside it, or the input-embedding hook that gradient checkpointing installs, which in
    transformers 5 also reaches the vision tower's patch embedding for some generations (then the
    frozen tower records its whole graph and backward runs through it).
    """
    sh, family = facts.shapes, facts.family
    patches, budget = vision_patches(facts, s)
    if patches == 0:
        return 0.0, budget
    saved = set(s.modules_to_save)
    adapters = block_adapters(facts, s, "vision", sh.vision.depth)
    trainable = (s.mode == "full" and not s.freeze_vision) or family.paths.vision in saved
    merger = (
        (s.mode == "full" and "merger" in trainable_parts(s))
        or trainable
        or bool(saved & set(family.paths.merger))
    )
    hooked = s.gradient_checkpointing and facts.vision_hooked
    if not (trainable or adapters or hooked):
        if merger:
            return merger_bytes(sh.merger_width, patches, p, True, sh.mergers), f"{budget}; merger only"
        return 0.0, f"{budget}; frozen, nothing upstream needs its gradient"
    v = family.vision
    total = stack_bytes(
        sh.vision,
        patches,
        p,
        s.gradient_checkpointing,
        trainable=trainable,
        adapters=adapters,
        r=s.lora_r,
        dropout=s.lora_dropout,
        seq=patches * s.sp // max(1, s.batch * s.images),  # one image's patches
    )
    total += merger_bytes(sh.merger_width, patches, p, merger, sh.mergers)
    if trainable:
        total += patches * 3 * v.temporal_patch_size * v.patch_size**2 * p.e  # patch embedding input
    why = "trained" if trainable or adapters else "frozen, but the checkpointing hook makes it record a graph"
    return total, f"{budget}; {why}"


def estimate(facts: ModelFacts, s: Setup, notes: list[str] | None = None) -> Plan:
    """The per-rank memory plan of `s` on the model of `facts`."""
    terms, counts = state_terms(facts, s)
    p = precision(s)
    text, text_note = text_activations(facts, s, p)
    vision, vision_note = vision_activations(facts, s, p)
    head = (s.mode == "full" and "lm_head" in trainable_parts(s)) or facts.family.paths.lm_head in set(
        s.modules_to_save
    )
    kind = "chunked" if s.liger else s.loss
    loss = loss_bytes(kind, local_tokens(s), facts.shapes.vocab, facts.shapes.text.width, p, head)
    terms += dequantized_terms(facts, s)
    terms += [
        Term("activations: language model", text / GIB, "fwd", text_note),
        Term("activations: vision tower", vision / GIB, "fwd", vision_note),
        Term(f"logits + loss ({kind})", loss / GIB, "fwd", _loss_note(kind)),
    ]
    if s.ep > 1:
        where = "one recomputed MoE layer" if s.gradient_checkpointing else "every MoE layer"
        note = f"rows received for this rank's experts and their outputs ({where})"
        terms.append(Term("expert-parallel buffers", experts.buffer_bytes(facts, s, p) / GIB, "fwd", note))
    if s.sp > 1:
        where = "one recomputed layer" if s.gradient_checkpointing else "every layer"
        note = f"head-sharded q, k, v and outputs around each all-to-all ({where})"
        terms.append(Term("sequence-parallel buffers", buffer_bytes(facts, s, p) / GIB, "fwd", note))
    plan = Plan(s, terms, {**counts, "total": sum(facts.by_part.values()), **facts.by_part}, notes or [])
    body = sum(t.gib for t in terms if t.phase == "static") + plan.dynamic_gib
    plan.terms += [
        Term("CUDA context", CUDA_CONTEXT_GIB, "overhead", "context, cuBLAS/NCCL workspaces"),
        Term("allocator margin", MARGIN * body, "overhead", f"{MARGIN:.0%} fragmentation and caching"),
    ]
    return plan


def dequantized_terms(facts: ModelFacts, s: Setup) -> list[Term]:
    """A GPTQ checkpoint's training kernels dequantize each weight to 16 bits and multiply with torch,
    so autograd keeps that copy for the input gradient: one block's worth when it is recomputed,
    every layer's without checkpointing (bitsandbytes re-dequantizes in backward instead)."""
    q = quantized(facts, s) if facts.quantization is not None else None
    if q is None:
        return []
    layers = q.layers
    if s.gradient_checkpointing:
        prefix = facts.block_prefix("language", facts.shapes.text.depth) or ""
        layers = [lin for lin in layers if lin.name.startswith(prefix)]
    n = sum(lin.in_features * lin.out_features for lin in layers)
    where = "one recomputed block" if s.gradient_checkpointing else "every layer"
    return [Term("dequantized weights", n * 2 / GIB, "fwd", f"16-bit copies autograd keeps ({where})")]


def _loss_note(kind: str) -> str:
    if kind == "standard":
        return "full (tokens x vocab) logits, fp32 upcast, log-softmax and its gradient"
    return "1024 rows of fp32 logits at a time"
