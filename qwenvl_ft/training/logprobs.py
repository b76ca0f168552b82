"""Log-probabilities of answers under a model, the two shapes the methods need, one forward each.

- `sequence_logps`: per row, the summed log-probability of its supervised tokens (labels != IGNORE)
  and their count: DPO's chosen / rejected answers.
- `token_logps`: per answer token, at a sampling temperature: GRPO's sampled answers (the last
  `completion_ids.shape[1]` positions of each row).

Both compute logits only from the first answer token's predecessor on (`logits_to_keep`, where the
model takes it): the prompt's image and text positions never reach lm_head.
"""

from __future__ import annotations

import inspect

import torch

from ..data.encode import IGNORE


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's supervised tokens, their count)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    supervised = labels != IGNORE
    start = int(supervised.float().argmax(dim=1).min())  # earliest answer token of the batch
    keep = labels.shape[1] - start + 1
    if "logits_to_keep" in inspect.signature(model_class_forward(model)).parameters:
        inputs["logits_to_keep"] = keep
    logits = model(**inputs, use_cache=False).logits[:, -keep:-1]
    targets = labels[:, start:]
    mask = targets != IGNORE
    logps = torch.zeros(labels.shape[0], device=logits.device, dtype=torch.float32)
    rows = mask.nonzero(as_tuple=True)[0]
    # Only the supervised positions go through log_softmax (in fp32): B answers, not B x L x vocab.
    picked = logits[mask].float().log_softmax(-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    return logps.index_add(0, rows, picked), mask.sum(dim=1)


def token_logps(
    model, inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(answers, tokens) log-probabilities of `completion_ids`, the rows' last positions, at `temperature`."""
    n = completion_ids.shape[1]
    out = model(**inputs, logits_to_keep=n + 1, use_cache=False)
    logits = out.logits[:, :-1] / temperature  # position t predicts answer token t
    return selective_log_softmax(logits, completion_ids)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[index] per position: TRL's memory-lean implementation (the `rl` extra)."""
    try:
        from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax
    except ImportError:
        raise ImportError(
            "train.method: grpo needs TRL: pip install 'qwenvl-ft[rl]' (or pip install trl)"
        ) from None
    return trl_selective_log_softmax(logits, index)


def model_class_forward(model):
    """The forward of the transformers model inside DDP / DeepSpeed / PEFT wrappers (which pass
    keyword arguments through)."""
    while hasattr(model, "module"):  # DDP / DeepSpeed engine
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model.forward
