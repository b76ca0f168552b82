"""Will it fit? Peak GPU memory per rank for a training recipe, before anything is downloaded.

    qwenvl-ft plan recipes/qwen2_5_vl/7b_lora.yaml --gpu A100-80GB
    report = plan_recipe(load_recipe("recipes/qwen2_5_vl/7b_lora.yaml"), gpu="A100-80GB")
    print(format_plan(report))

The model comes from model.path's config.json, else from a published config shipped in
`qwenvl_ft/models/published/` (matched by the directory name, or `--config`). Terms per rank:
weights, gradients, optimizer states (divided by the ranks as the ZeRO stage / FSDP says),
activations of the language model and of the vision tower, logits and loss, the optimizer step's
scratch, and overhead (CUDA context, allocator margin). Peak = static + the larger of
forward/backward and the optimizer step.

What is exact, and what is calibrated how:
- parameter counts (total, per part, trainable in each mode, LoRA adapters via PEFT's own target
  rule, modules_to_save) come from the model instantiated on the meta device; the published
  configs reproduce the published totals (tests/unit/test_plan.py);
- activation formulas (`activations.py`, derived op by op) were checked against a CPU measurement
  of a 2-layer Qwen2.5-VL decoder (hidden 1024, MLP 2816, 8 heads, 2 kv heads) and a 2-block
  Qwen2.5-VL vision tower (hidden 1280, MLP 3420, 256 patches): the bytes autograd saves
  (saved_tensors_hooks, deduplicated by storage) and the peak of live tensors over forward +
  backward (a dispatch-mode tracker), full and LoRA, with and without gradient checkpointing, in
  fp32 and bf16. Saved bytes: within 1% (full), +7-8% (LoRA: the first layer's input needs no
  gradient); peaks within -10% .. +15%. The chunked and standard losses match their measured peaks
  within 1%. The test repeats the decoder, frozen-vision and loss measurements (25% tolerance);
- the first-generation Qwen-VL-Chat published figures (A100, batch 1, 384 tokens, checkpointing,
  full logits): LoRA with the original single-GPU script (bf16, no DeepSpeed) 23.3 GB, estimated
  25.0 GB; Q-LoRA on the Int4 GPTQ checkpoint (fp16, ZeRO-2) 17.0 GB, estimated 14.9 GB. The test
  holds both within 20% (the README does not say whether its GB are 10^9 or 2^30 bytes).
Not calibrated yet: real peaks on a GPU (caching allocator, NCCL buffers, kernel workspaces);
bench/results/ will hold those figures, none exist yet. Liger kernels are modelled only as an
RMSNorm without the fp32 copy; a frozen vision tower's forward scratch is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RecipeConfig
from ..models.capabilities import check_capabilities, check_plan
from .estimate import GIB, Plan, Term, estimate, precision
from .experts import Option, compare
from .levers import Lever, levers
from .model import ModelFacts, load_facts, match_published
from .report import format_plan
from .sequence import smallest_fit
from .setup import Setup, setup_from_recipe

# Total memory as nvidia-smi reports it (MiB).
GPUS_MIB = {
    "H100-80GB": 81559,
    "H200-141GB": 143771,
    "A100-80GB": 81920,
    "A100-40GB": 40960,
    "L40S-48GB": 46068,
    "A10-24GB": 23028,
    "RTX4090-24GB": 24564,
    "V100-32GB": 32768,
}


def gpu_capacity(name: str) -> tuple[str, float]:
    """(canonical name, GiB) of a GPU in the table; case-insensitive."""
    for known, mib in GPUS_MIB.items():
        if known.lower() == name.lower():
            return known, mib / 1024
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS_MIB)} (or pass --gpu-memory GIB)")


@dataclass
class PlanReport:
    plan: Plan
    facts: ModelFacts
    recipe: str = ""
    gpu: str | None = None
    capacity_gib: float | None = None
    levers: list[Lever] = field(default_factory=list)
    sequence_fit: tuple[int, float] | None = None
    """When it does not fit: the smallest train.sequence_parallel N that does, and its total."""
    experts: list[Option] = field(default_factory=list)
    """A mixture of experts on several ranks: ZeRO-3 against expert parallelism (plan/experts.py)."""

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_gib is None else self.plan.total_gib <= self.capacity_gib


def plan_recipe(
    cfg: RecipeConfig,
    recipe: str = "",
    nproc: int = 1,
    config: str | None = None,
    images_per_sample: int = 1,
    gpu: str | None = None,
    gpu_memory: float | None = None,
) -> PlanReport:
    """Estimate `cfg` per rank over `nproc` ranks; with a GPU, the verdict and (if needed) the levers."""
    if nproc < 1 or images_per_sample < 0:
        raise ValueError("--nproc must be >= 1 and --images-per-sample >= 0")
    facts = load_facts(cfg.model.path, cfg.model.family, config)
    check_plan(facts.family, facts.config)  # a family the planner cannot describe: one line, not a traceback
    check_capabilities(facts.family, cfg)  # a recipe that training would refuse is refused here too
    setup, notes = setup_from_recipe(cfg, facts, nproc, images_per_sample)
    plan = estimate(facts, setup, notes)
    plan.notes += facts.family.speed_notes("cuda")  # the plan is for a GPU run
    report = PlanReport(plan, facts, recipe)
    if gpu is not None:
        report.gpu, report.capacity_gib = gpu_capacity(gpu)
    elif gpu_memory is not None:
        report.gpu, report.capacity_gib = f"{gpu_memory:g} GiB", float(gpu_memory)
    report.experts = compare(facts, setup, estimate, precision)
    if report.fits is False:
        report.levers = levers(cfg, facts, plan)
        if facts.family.sequence_parallel:
            report.sequence_fit = smallest_fit(facts, setup, report.capacity_gib, estimate)
    return report


__all__ = [
    "GIB",
    "GPUS_MIB",
    "Lever",
    "ModelFacts",
    "Plan",
    "PlanReport",
    "Setup",
    "Term",
    "estimate",
    "format_plan",
    "gpu_capacity",
    "load_facts",
    "match_published",
    "plan_recipe",
    "setup_from_recipe",
]
