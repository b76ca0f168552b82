"""Which model a recipe trains, and its exact parameter counts, without loading any weights.

The config comes from `model.path/config.json` when that checkpoint exists, else from the published
configs shipped in `qwenvl_ft/models/published/` (matched by the directory name: "Qwen2.5-VL-7B-Instruct",
or a family name plus size such as "my-qwen2.5-vl-7b-sft"), or from `--config`. The model is then
instantiated on the meta device: every count below is exact and costs no memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..models import FAMILIES, detect_family, get_family, resolve_family
from ..models.base import ModelFamily, Shapes
from ..training.modules import part_of

PUBLISHED = Path(__file__).resolve().parents[1] / "models" / "published"
_SIZE = re.compile(r"(?<![a-z0-9.])\d+(?:\.\d+)?b(?![a-z])")


@dataclass(frozen=True)
class Linear:
    name: str
    part: str
    in_features: int
    out_features: int


@dataclass
class ModelFacts:
    """A config, its family, and what the meta-device model says about it."""

    family: ModelFamily
    config: Any
    origin: str
    """Where the config came from, in words (printed with the plan)."""
    checkpoint: bool
    """model.path is a real checkpoint directory (its own metadata can be read)."""
    _lora_hits: dict[str, list[Linear]] = field(default_factory=dict, repr=False)

    @cached_property
    def model(self) -> torch.nn.Module:
        with torch.device("meta"):
            return self.family.model_class()(self.config)

    @cached_property
    def shapes(self) -> Shapes:
        return self.family.shapes(self.config)

    @cached_property
    def quantization(self) -> dict | None:
        """The checkpoint's own quantization (a GPTQ / AWQ checkpoint), None for 16-bit weights."""
        q = getattr(self.config, "quantization_config", None)
        return q if isinstance(q, dict) else (q.to_dict() if q is not None else None)

    @cached_property
    def by_part(self) -> dict[str, int]:
        """Parameters per part (vision, merger, language, embeddings, lm_head, other); tied ones once."""
        out: dict[str, int] = {}
        for name, p in self.model.named_parameters():
            part = part_of(name, self.family.paths)
            out[part] = out.get(part, 0) + p.numel()
        return out

    @cached_property
    def linears(self) -> list[Linear]:
        return [
            Linear(name, part_of(name, self.family.paths), m.in_features, m.out_features)
            for name, m in self.model.named_modules()
            if isinstance(m, torch.nn.Linear)
        ]

    @cached_property
    def vision_hooked(self) -> bool:
        """Whether `enable_input_require_grads` (called by gradient checkpointing and LoRA) makes the
        vision tower's own input embeddings require grad: the frozen tower then records a graph."""
        model = self.model
        model.enable_input_require_grads()
        hooked = [n for n, m in model.named_modules() if m._forward_hooks]
        for handle in getattr(model, "_require_grads_hooks", []):
            handle.remove()
        return any(part_of(n, self.family.paths) in ("vision", "merger") for n in hooked)

    def block_prefix(self, part: str, depth: int, index: int = 0) -> str | None:
        """'model.language_model.layers.0.': block `index` of the `depth`-long stack of `part`."""
        for name, m in self.model.named_modules():
            if (
                isinstance(m, torch.nn.ModuleList)
                and len(m) == depth
                and part_of(name, self.family.paths) == part
            ):
                return f"{name}.{index}."
        return None

    def module_params(self, names: list[str]) -> int:
        """Parameters of the named modules (what modules_to_save copies and trains)."""
        return sum(p.numel() for n in names for p in self.model.get_submodule(n).parameters())

    def lora_params(self, targets: str, r: int) -> tuple[int, list[Linear]]:
        """LoRA parameters r * (in + out) of every Linear PEFT's rule (full match) selects, and those layers."""
        from peft import LoraConfig
        from peft.tuners.tuners_utils import check_target_module_exists

        if targets not in self._lora_hits:  # levers re-estimate many times with the same targets
            config = LoraConfig(target_modules=targets)
            self._lora_hits[targets] = [
                lin for lin in self.linears if check_target_module_exists(config, lin.name)
            ]
        hit = self._lora_hits[targets]
        return sum(r * (lin.in_features + lin.out_features) for lin in hit), hit

    @cached_property
    def expert_sizes(self) -> list[int]:
        """Routed-expert parameters of each MoE layer (`mlp.experts`); empty for a dense model."""
        return [
            sum(p.numel() for p in module.parameters())
            for name, module in self.model.named_modules()
            if name.endswith("mlp.experts")
        ]

    def block_params(self) -> int:
        """Parameters of the largest decoder block (what ZeRO-3 / FSDP gather at once)."""
        blocks = [m for m in self.model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
        return max((sum(p.numel() for p in b[0].parameters()) for b in blocks), default=0)

    def largest_module(self, skip: str | None = None) -> int:
        """The largest leaf module's parameters (embedding or lm_head: gathered whole under ZeRO-3);
        `skip`: leave out modules whose name ends with it (expert parallelism: "mlp.experts")."""
        return max(
            (
                sum(p.numel() for p in m.parameters(recurse=False))
                for name, m in self.model.named_modules()
                if skip is None or not name.endswith(skip)
            ),
            default=0,
        )


def load_facts(model_path: str, family_name: str | None, config_arg: str | None = None) -> ModelFacts:
    """The model of a recipe: --config, else model.path's config.json, else a published config by name."""
    if config_arg:
        return _from_config_arg(config_arg, family_name)
    path = Path(model_path)
    if (path / "config.json").is_file():
        family = resolve_family(path, family_name)
        return ModelFacts(family, _config(family, path / "config.json"), f"{path}/config.json", True)
    try:
        family, stem, how = match_published(path.name, family_name)
    except ValueError as e:
        raise ValueError(f"model.path {model_path} is not a checkpoint here, and {e}") from None
    return ModelFacts(
        family, _config(family, PUBLISHED / f"{stem}.json"), f"published {stem}.json ({how})", False
    )


def match_published(name: str, family_name: str | None = None) -> tuple[ModelFamily, str, str]:
    """(family, JSON stem, how) of the published config a checkpoint name refers to.

    Exact model names first ("Qwen2.5-VL-7B-Instruct"); else the longest published name, cut after
    its size, that the directory name contains ("qwen2.5-vl-7b" in "my-qwen2.5-vl-7b-sft").
    """
    families = [get_family(family_name)] if family_name else list(FAMILIES.values())
    wanted = _norm(name)
    best: list[tuple[int, ModelFamily, str, str]] = []
    for family in families:
        for published, stem in family.published_sizes.items():
            if _norm(published) == wanted:
                return family, stem, f"model name {published}"
            key = _stem_key(published)
            if key in wanted:
                best.append((len(key), family, stem, published))
    if best:
        top = max(length for length, *_ in best)
        hits = {(f.name, stem): published for length, f, stem, published in best if length == top}
        if len(hits) == 1:
            (fam, stem), published = next(iter(hits.items()))
            return get_family(fam), stem, f"'{name}' read as {published}"
    known = ", ".join(p for f in families for p in f.published_sizes) or "none for this family"
    raise ValueError(
        f"{name!r} names no published config shipped with qwenvl-ft ({known}); "
        "pass --config with a config.json, a checkpoint folder or one of those names"
    )


def _from_config_arg(arg: str, family_name: str | None) -> ModelFacts:
    path = Path(arg)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        family = _family_of(path)
        if family_name and get_family(family_name) is not family:
            raise ValueError(f"--config {arg} is a {family.name} config but the recipe says {family_name}")
        return ModelFacts(family, _config(family, path), f"--config {path}", False)
    stem = arg.removesuffix(".json")
    if (PUBLISHED / f"{stem}.json").is_file():
        how = "--config"
    else:
        _, stem, how = match_published(arg, family_name)
    file = PUBLISHED / f"{stem}.json"
    return ModelFacts(_family_of(file), _config(None, file), f"published {stem}.json ({how})", False)


def _family_of(config_json: Path) -> ModelFamily:
    """The family a config.json belongs to, by its model_type (as `detect_family` reads a checkpoint)."""
    model_type = json.loads(config_json.read_text(encoding="utf-8")).get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    return detect_family(config_json.parent)  # raises its clear error for an unknown model_type


def _config(family: ModelFamily | None, config_json: Path):
    family = family or _family_of(config_json)
    data = json.loads(config_json.read_text(encoding="utf-8"))
    data.pop("auto_map", None)  # remote-code pointers of original checkpoints: never followed
    return family.model_class().config_class(**data)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _stem_key(published: str) -> str:
    """'Qwen2.5-VL-7B-Instruct' -> 'qwen25vl7b'; names without a size keep every character."""
    lowered = published.lower()
    m = _SIZE.search(lowered)
    return _norm(lowered[: m.end()] if m else lowered)


def image_budget(family: ModelFamily, max_pixels: int | None, min_pixels: int | None) -> tuple[int, int]:
    """(visual tokens, vision patches) of one image at the recipe's largest size (a square)."""
    v = family.vision
    area = max_pixels or v.max_pixels
    side = max(int(area**0.5), v.factor)
    h, w = family.resized_size(side, side, min_pixels, area)
    return family.image_tokens(side, side, min_pixels, area), (h // v.patch_size) * (w // v.patch_size)
