"""Dummy vision-tower calls for the media kinds a batch lacks, made inside the model's forward.

Under ZeRO-3 and FSDP every parameter gather is a collective: all ranks must run the same modules in
the same order every step, or they wait on each other forever. One rank's batch may hold images and
videos (two vision-tower calls) while another's holds text only (none). So a rank runs one dummy
call per missing kind, and runs it where the real calls would be: after the model's forward has
started (DeepSpeed's start-of-forward hook is itself a collective) and before the first decoder
layer. A forward pre-hook on the family's `paths.after_vision` module is that place. The dummies'
zero is added to the embeddings, so backward reaches the vision parameters in the same order too.
"""

from __future__ import annotations

import torch

from ..models.base import ModelFamily


class VisionKeepalive:
    """`expect(n)` before a forward; that forward then makes `n` dummy vision calls."""

    def __init__(self, family: ModelFamily, model: torch.nn.Module):
        self.family, self.model = family, model
        self.pending = 0
        target = model.get_submodule(family.paths.after_vision)
        # prepend: before any gather hook a wrapper (DeepSpeed, FSDP) registers on the same module.
        target.register_forward_pre_hook(self._hook, with_kwargs=True, prepend=True)

    def expect(self, count: int) -> None:
        self.pending = count

    def _hook(self, module, args, kwargs):
        if not self.pending:
            return None
        count, self.pending = self.pending, 0  # decoding steps and later calls run none
        zero = sum(self.family.vision_keepalive(self.model) for _ in range(count))
        if kwargs.get("inputs_embeds") is not None:
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"] + zero.to(kwargs["inputs_embeds"].dtype)
        else:
            args = (args[0] + zero.to(args[0].dtype), *args[1:])
        return args, kwargs
