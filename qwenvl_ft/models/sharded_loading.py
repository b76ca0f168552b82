"""transformers 5.24's `Transpose(check_dims=True)` under sharded loads.

Qwen3-VL-MoE's published checkpoints store the fused experts transposed, so transformers converts
them on load with `Transpose(1, 2, check_dims=True)`: it transposes unless the loaded tensor already
has the model parameter's shape. A sharded load hands it a parameter whose shape is not the weight's:
- expert parallelism: a DTensor whose shape is the whole tensor, while the loaded tensor is this
  rank's slice of the experts (dim 0);
- DeepSpeed ZeRO-3: an empty placeholder (shape (0,); the real one is `ds_shape`).
The shapes then always differ and every expert weight is transposed, the ones already in the model's
layout too (a checkpoint saved by this version: `save_pretrained` of a sharded model, our tiny
models), a square one silently. `compare_true_shapes` compares what one process compares: the whole
shape under ZeRO-3, everything but the expert dimension under expert parallelism.
"""

from __future__ import annotations

import torch


def compare_true_shapes() -> None:
    """Patch `Transpose.convert` (once) to compare against the parameter's true shape."""
    from torch.distributed.tensor import DTensor
    from transformers.core_model_loading import Transpose

    original = Transpose.convert
    if getattr(original, "_true_shapes", False):
        return

    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        model, name = kwargs.get("model"), kwargs.get("full_layer_name")
        param = model.get_parameter(name) if self.check_dims and model is not None and name else None
        if isinstance(param, DTensor):
            want, skip = param.shape, 1  # this rank's slice of the experts: dim 0 differs
        elif param is not None and hasattr(param, "ds_shape"):
            want, skip = param.ds_shape, 0
        else:
            return original(self, input_dict, source_patterns, target_patterns, **kwargs)
        tensor = next(iter(input_dict.values()))
        tensor = tensor[0] if isinstance(tensor, list) else tensor
        target = self.get_target_pattern(input_dict, source_patterns, target_patterns)
        if tensor.shape[skip:] == torch.Size(want)[skip:]:
            return {target: tensor}
        return {target: torch.transpose(tensor, self.dim0, self.dim1).contiguous()}

    convert._true_shapes = True
    Transpose.convert = convert
