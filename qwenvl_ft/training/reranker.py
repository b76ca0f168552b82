"""Reranker (`train.method: reranker`): Qwen3-VL-Reranker's yes/no judgement trained on queries with
their positive and negatives.

Each (query, document) is the official prompt (data/retrieval.py `reranker_input`); its score is
logit("yes") - logit("no") at the last token, whose sigmoid is the official relevance. One step
(`RerankerTrainer`): one forward over every pair of the batch, then

- listwise (default): for each query, cross-entropy of softmax(scores / temperature) over its
  positive and negatives towards the positive;
- pointwise: binary cross-entropy of each pair's score, "yes" for the positive, "no" for each
  negative: the official report's objective, -log p(label | instruction, query, document).

Logged: `accuracy` (the positive outscores every negative of its query), `positive_probability`
and `negative_probability` (mean sigmoid of the scores).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..config.schema import RerankerConfig
from ..data.check import format_report
from ..retrieval import yes_no_ids
from .lifecycle import Run, TrainResult, build_policy, fit, trainer_kwargs
from .methods import Method
from .retrieval import RetrievalCollator, RetrievalTrainer, build_retrieval_dataset, require_retrieval

log = logging.getLogger("qwenvl_ft")


def run_reranker(run: Run) -> TrainResult:
    cfg = run.cfg
    require_retrieval(run)
    r = cfg.reranker
    ids = yes_no_ids(run.processor.tokenizer)  # refused before the data check and the model load
    with run.args.main_process_first(local=True, desc="data check"):
        dataset, report = build_retrieval_dataset(run, "reranker", r.negatives)
        eval_set = build_retrieval_dataset(run, "reranker", r.negatives, "eval")[0] if cfg.data.eval else None
    log.info("reranker data check:\n" + format_report(report, cfg.data.max_length, limit=10))
    what = f"listwise, temperature {r.temperature:g}" if r.loss == "listwise" else "pointwise"
    policy = build_policy(run, f"reranker ({what})")
    trainer = RerankerTrainer(
        **trainer_kwargs(run, policy, report.plan.media_kinds()),
        train_dataset=dataset,
        eval_dataset=eval_set,
        data_collator=RetrievalCollator(run.processor.tokenizer.pad_token_id),
        group_by_length=cfg.data.group_by_length,
        reranker=r,
        yes_no=ids,
    )
    return fit(run, policy, trainer, dataset)


def reranker_loss(
    scores: torch.Tensor, group_sizes: torch.Tensor, cfg: RerankerConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of yes - no scores laid out per query as positive, negatives (module docstring)."""
    groups = torch.split(scores.float(), group_sizes.tolist())
    if cfg.loss == "listwise":
        target = torch.zeros(1, dtype=torch.long, device=scores.device)
        loss = torch.stack([F.cross_entropy((g / cfg.temperature)[None], target) for g in groups]).mean()
    else:
        labels = torch.cat([F.one_hot(torch.zeros((), dtype=torch.long), len(g)) for g in groups]).float()
        loss = F.binary_cross_entropy_with_logits(scores.float(), labels.to(scores.device))
    probs = [torch.sigmoid(g.detach()) for g in groups]
    metrics = {
        "accuracy": torch.stack([(g[0] > g[1:]).all() for g in groups]).float().mean(),
        "positive_probability": torch.stack([p[0] for p in probs]).mean(),
        "negative_probability": torch.cat([p[1:] for p in probs]).mean(),
    }
    return loss, metrics


class RerankerTrainer(RetrievalTrainer):
    def __init__(self, *args, reranker: RerankerConfig, yes_no: tuple[int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.reranker, self.yes_no = reranker, yes_no

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = inputs.pop("group_sizes")
        _, logits = self.forward_inputs(model, inputs)
        scores = logits[:, self.yes_no[0]] - logits[:, self.yes_no[1]]
        loss, metrics = reranker_loss(scores, sizes, self.reranker)
        return self.finish(loss, metrics, model, return_outputs)


METHOD = Method(
    "reranker",
    run_reranker,
    honours=("data.group_by_length", "reranker.*"),
    summary="query / positive / negatives, yes-no judgement (Qwen3-VL-Reranker)",
)
