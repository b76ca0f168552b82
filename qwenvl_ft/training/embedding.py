"""Embedding (`train.method: embedding`): Qwen3-VL-Embedding's dual tower trained contrastively.

Reads top to bottom like SFT: check the retrieval data (data/retrieval.py) with the official inputs'
exact token counts, build the policy, train, finish (lifecycle.py). One step (`EmbeddingTrainer`):

1. one forward over every input of the batch (queries, positives, hard negatives, left-padded) reads
   the last token's final hidden state: the official embedding before normalisation;
2. `info_nce`: each query against every document of the step (its positive, its own and the other
   samples' negatives and positives, every rank's with `embedding.gather`), similarities of the
   L2-normalised vectors over `embedding.temperature`, cross-entropy towards its positive; with
   `embedding.matryoshka_dims` the mean of that loss at the full width and at each truncation (the
   first d values, normalised again). Gathered documents carry their gradient back to their rank,
   so N processes compute exactly the gradient of one process on the whole batch.

Logged: `accuracy` (the positive is the nearest document), `positive_similarity`,
`negative_similarity` (the hardest negative's), cosine, at the full width.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..config.schema import EmbeddingConfig
from ..data.check import format_report
from .lifecycle import Run, TrainResult, build_policy, fit, trainer_kwargs
from .methods import Method
from .retrieval import (
    RetrievalCollator,
    RetrievalTrainer,
    build_retrieval_dataset,
    gather_documents,
    require_retrieval,
)

log = logging.getLogger("qwenvl_ft")


def run_embedding(run: Run) -> TrainResult:
    cfg = run.cfg
    require_retrieval(run)
    e = cfg.embedding
    with run.args.main_process_first(local=True, desc="data check"):
        dataset, report = build_retrieval_dataset(run, "embedding", e.negatives)
        eval_set = (
            build_retrieval_dataset(run, "embedding", e.negatives, "eval")[0] if cfg.data.eval else None
        )
    log.info("embedding data check:\n" + format_report(report, cfg.data.max_length, limit=10))
    dims = ", Matryoshka " + "/".join(map(str, e.matryoshka_dims)) if e.matryoshka_dims else ""
    policy = build_policy(run, f"embedding (InfoNCE, temperature {e.temperature:g}{dims})")
    trainer = EmbeddingTrainer(
        **trainer_kwargs(run, policy, report.plan.media_kinds()),
        train_dataset=dataset,
        eval_dataset=eval_set,
        data_collator=RetrievalCollator(run.processor.tokenizer.pad_token_id),
        group_by_length=cfg.data.group_by_length,
        embedding=e,
    )
    return fit(run, policy, trainer, dataset)


def split_groups(
    vectors: torch.Tensor, group_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(queries, documents, each query's positive in documents) of inputs laid out per sample as
    query, positive, negatives."""
    starts = torch.cumsum(group_sizes, 0) - group_sizes
    is_query = torch.zeros(len(vectors), dtype=torch.bool, device=vectors.device)
    is_query[starts] = True
    positives = starts - torch.arange(len(starts), device=starts.device)  # docs before each positive
    return vectors[is_query], vectors[~is_query], positives.to(vectors.device)


def info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    dims: list[int] = (),
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy of each query's similarities to all documents towards its positive, at the
    full width and at each of `dims` (slice, then normalise). allowed: (queries, documents), False where
    a document is not a candidate of that query (`embedding.in_batch: false`)."""
    losses, metrics = [], {}
    for width in [None, *dims]:
        q = F.normalize(queries[:, :width].float(), dim=-1)
        d = F.normalize(documents[:, :width].float(), dim=-1)
        sims = q @ d.T
        logits = sims / temperature
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        losses.append(F.cross_entropy(logits, positives))
        if width is None:
            rows = torch.arange(len(q), device=q.device)
            positive = sims[rows, positives]
            others = sims.detach().clone()
            others[rows, positives] = float("-inf")
            if allowed is not None:
                others = others.masked_fill(~allowed, float("-inf"))
            metrics = {
                "accuracy": (logits.detach().argmax(-1) == positives).float().mean(),
                "positive_similarity": positive.detach().mean(),
                "negative_similarity": others.max(-1).values.clamp(min=-1).mean(),
            }
    return torch.stack(losses).mean(), metrics


class EmbeddingTrainer(RetrievalTrainer):
    def __init__(self, *args, embedding: EmbeddingConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.embedding = embedding

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = inputs.pop("group_sizes")
        hidden, _ = self.forward_inputs(model, inputs)
        queries, documents, positives = split_groups(hidden, sizes)
        e, allowed = self.embedding, None
        if not e.in_batch:  # each query's own documents only
            owner = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes - 1)
            allowed = (
                owner[None, :].to(hidden.device) == torch.arange(len(sizes), device=hidden.device)[:, None]
            )
        elif e.gather:
            documents, offset = gather_documents(documents)
            positives = positives + offset
        loss, metrics = info_nce(queries, documents, positives, e.temperature, e.matryoshka_dims, allowed)
        return self.finish(loss, metrics, model, return_outputs)


METHOD = Method(
    "embedding",
    run_embedding,
    honours=("data.group_by_length", "embedding.*"),
    summary="query / positive / negatives, contrastive (Qwen3-VL-Embedding)",
)
