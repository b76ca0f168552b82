"""The run directory: what a run or checkpoint says about itself, and how it is read back.

Training writes, next to the final weights and in every `checkpoint-N`: `qwenvl_ft.json` (base
model path, family, method, mode, dtype, base-or-chat, versions; `metadata`), `resolved_config.yaml`
and the tokenizer / processor files (`describe`). Merge, predict, eval, chat and the demo read them
here (`read_run`, `load_run_model`), and training resumes from `latest_checkpoint`. A merged or
fully fine-tuned output is an ordinary checkpoint directory with the same metadata file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__

if TYPE_CHECKING:
    from .config import RecipeConfig
    from .models.base import ModelFamily

RUN_TRAINING_KEYS = ("thinking", "thinking_why", "reasoning_effort")
"""Metadata on how a run was trained that inference defaults to; a merged model carries them."""
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
METADATA_FILE = "qwenvl_ft.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class RunError(ValueError):
    """A directory that is not what it was taken for; the message says what it lacks."""


def checkpoint_meta(model_dir: str | Path) -> dict:
    """What a checkpoint says about itself: our metadata file, and a quantization config if any."""
    meta: dict = {}
    path = Path(model_dir) / METADATA_FILE
    if path.is_file():
        meta.update(json.loads(path.read_text()))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if "quantization_config" in config:
        meta["quantized"] = config["quantization_config"].get("quant_method", "yes")
    return meta


def read_run(run_dir: str | Path) -> dict:
    """A run's (or checkpoint's) metadata; RunError when the directory is not one."""
    meta_file = Path(run_dir) / METADATA_FILE
    if not meta_file.is_file():
        raise RunError(f"{run_dir} has no {METADATA_FILE}: it is not a qwenvl-ft run or checkpoint directory")
    return json.loads(meta_file.read_text())


def is_adapter(path: str | Path) -> bool:
    """A LoRA / Q-LoRA run or checkpoint: an adapter to put on the base its metadata names."""
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter_model(run_dir: Path, base_path: Path, family: ModelFamily, dtype: torch.dtype):
    """The base loaded in full precision (never 4-bit) with the run's adapter on it (a PeftModel)."""
    from peft import PeftModel

    base_model = family.load_model(str(base_path), dtype=dtype)
    # The adapter's recorded base path is ignored: the base is the one loaded here.
    return PeftModel.from_pretrained(base_model, str(run_dir), torch_device="cpu").eval()


def processor_dir(run_dir: Path, base_path: Path) -> Path:
    """Where a run's processor files are: its own (training saves them) or, failing that, its base's."""
    return run_dir if (run_dir / "tokenizer_config.json").is_file() else base_path


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer_state.json was written last)."""
    found = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := _CHECKPOINT.match(p.name))]
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return path
    return None


def metadata(cfg: RecipeConfig, family_name: str, is_base: bool) -> dict:
    """The run's `qwenvl_ft.json`."""
    import peft
    import transformers

    return {
        "qwenvl_ft_version": __version__,
        "family": family_name,
        "base_model": str(Path(cfg.model.path).resolve()),
        "method": cfg.train.method,
        "mode": cfg.train.mode,
        "is_base": is_base,
        "dtype": cfg.model.dtype,
        "quant_type": cfg.quant.quant_type if cfg.train.mode == "qlora" else None,
        "versions": {
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
        },
    }


def describe(directory: Path, meta: dict, cfg: RecipeConfig, processor) -> None:
    """Write metadata, the resolved config and the processor files into `directory`."""
    from .config import dump_yaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (directory / "resolved_config.yaml").write_text(dump_yaml(cfg))
    processor.save_pretrained(directory)
