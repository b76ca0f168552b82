"""Fine-tuning: a resolved recipe in, a self-describing output directory out.

    qwenvl-ft train recipes/tiny/qwen2_5_vl_lora.yaml train.max_steps=50
    torchrun --nproc_per_node 8 -m qwenvl_ft train recipes/qwen2_5_vl/7b_lora.yaml

`train(cfg)` picks the method module `train.method` names (training/methods.py: sft, dpo, grpo, or one
registered), refuses recipe keys that method does not read, and runs it over the shared lifecycle
(training/lifecycle.py: start, build the policy, fit, finish).
"""

from __future__ import annotations

from .config import RecipeConfig
from .training.lifecycle import TrainResult, is_main_process, start, training_arguments
from .training.methods import check_honoured, get_method

__all__ = ["TrainResult", "is_main_process", "train", "training_arguments"]


def train(cfg: RecipeConfig) -> TrainResult:
    """Run the recipe with its method: check the data, build the model, train, save."""
    method = get_method(cfg.train.method)
    check_honoured(method, cfg)  # a setting the method would ignore is refused here, by name
    return method.run(start(cfg))
