"""One rank of the expert-parallel equality runs (test_expert_parallel.py starts it under torchrun).

    torchrun --nproc_per_node N ep_worker.py GRADS.pt [--wrong] RECIPE key=value ...

Trains through the real entry point (`qwenvl_ft.train.train`, as the CLI does) with one callback
added: before every optimizer step (after clipping) rank 0 keeps every trainable gradient, whole
(`full_tensor()` of a sharded one), and writes them to GRADS.pt at the end: a list over steps of
{name: tensor}. The vocabulary-sized embedding and lm_head gradients are kept on every 64th row and
the first 512 (the tiny models keep the real 151k / 248k vocabularies: all rows of 10 steps would be
gigabytes); every other parameter is kept whole.

`--wrong`: sends every token to the experts of the next EP rank (transformers' all-to-all dispatch
with its destination rotated by one): the equality test must then fail.
"""

from __future__ import annotations

import logging
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from qwenvl_ft.config import load_recipe
from qwenvl_ft.train import train
from qwenvl_ft.training import lifecycle

VOCAB_ROWS = torch.cat([torch.arange(512), torch.arange(512, 300_000, 64)])


class KeepGradients(TrainerCallback):
    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad  # collective: every rank
            g = g.detach().float().cpu()
            if g.dim() == 2 and g.shape[0] > 100_000:  # embeddings / lm_head
                g = g[VOCAB_ROWS[VOCAB_ROWS < g.shape[0]]]
            grads[name.replace("base_model.model.", "")] = g.clone()
        self.steps.append(grads)


def rotate_dispatch() -> None:
    """A deliberately wrong dispatch: every token goes to the next EP rank's experts."""
    from transformers.distributed import expert_parallel as ep

    original = ep.AllToAllEP._dispatch_tokens

    def dispatch(self, hidden_states, top_k_index, top_k_weights):
        local, ranks = self.num_local_experts, self.ep_mesh.size()
        return original(self, hidden_states, (top_k_index + local) % (local * ranks), top_k_weights)

    ep.AllToAllEP._dispatch_tokens = dispatch


def main() -> None:
    out, *rest = sys.argv[1:]
    if rest[0] == "--wrong":
        rest = rest[1:]
        rotate_dispatch()
    recipe, *overrides = rest
    logging.basicConfig(
        level=logging.INFO, format="[%(name)s] %(message)s"
    )  # our lines, as the CLI prints them
    keep = KeepGradients()
    fit = lifecycle.fit

    def fit_keeping(run, policy, trainer, *args, **kwargs):
        trainer.add_callback(keep)
        return fit(run, policy, trainer, *args, **kwargs)

    lifecycle.fit = fit_keeping
    from qwenvl_ft.training import sft

    sft.fit = fit_keeping
    train(load_recipe(recipe, overrides))
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(keep.steps, out)


if __name__ == "__main__":
    main()
