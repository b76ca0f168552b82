"""Retrieval evaluation (`qwenvl-ft eval MODEL --task retrieval --data held_out.jsonl`).

The corpus is every document of the file (each sample's positive and negatives, the same document
once), the queries its samples' queries, each relevant to its own positive. The embedder encodes
queries with their `instruction` and documents with their `document_instruction` (default "Represent
the user's input."), and ranks the corpus by cosine similarity; with a reranker, each query's top
`rerank_top` documents are scored by it and reordered (the rest keep their place).

Metrics over the queries, from each one's rank r of its positive (1 = first): recall@k (r <= k),
MRR (mean 1 / r) and nDCG@10 (binary relevance, one relevant document: 1 / log2(r + 1) when r <= 10).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import DatasetSpec
from ..data.retrieval import Item, RetrievalSample, RetrievalSource

if TYPE_CHECKING:
    from ..retrieval import Embedder, Reranker

KS = (1, 5, 10)


def read_samples(path: str | Path) -> list[RetrievalSample]:
    source = RetrievalSource(DatasetSpec(path=str(path)))
    return [source.sample(i) for i in range(len(source))]


def corpus_of(samples: list[RetrievalSample]) -> tuple[list[Item], list[str | None], list[int]]:
    """(documents, each one's instruction, each sample's positive's index in documents)."""
    index: dict[tuple, int] = {}
    documents, instructions = [], []
    for s in samples:
        for doc in (s.positive, *s.negatives):
            if doc.key() not in index:
                index[doc.key()] = len(documents)
                documents.append(doc)
                instructions.append(s.document_instruction)
    return documents, instructions, [index[s.positive.key()] for s in samples]


def metrics(ranks: list[int]) -> dict[str, float]:
    """recall@1/5/10, MRR and nDCG@10 of the positives' ranks (1-based), and n."""
    n = len(ranks)
    out = {f"recall@{k}": sum(r <= k for r in ranks) / n for k in KS}
    out["mrr"] = sum(1 / r for r in ranks) / n
    out["ndcg@10"] = sum(1 / math.log2(r + 1) for r in ranks if r <= 10) / n
    out["n"] = n
    return out


def rank_of(order: list[int], target: int) -> int:
    return order.index(target) + 1


def embed_grouped(
    embedder: Embedder, items: list[Item], instructions: list[str | None], dims, batch_size: int
):
    """Unit vectors of `items`, each encoded with its own instruction (items of one instruction together)."""
    out = torch.zeros(0)
    vectors: dict[int, torch.Tensor] = {}
    for instruction in dict.fromkeys(instructions):
        rows = [k for k, i in enumerate(instructions) if i == instruction]
        embedded = embedder.embed([items[k] for k in rows], instruction, dims, batch_size)
        vectors.update(zip(rows, embedded, strict=True))
    if vectors:
        out = torch.stack([vectors[k] for k in range(len(items))])
    return out


def evaluate_retrieval(
    samples: list[RetrievalSample],
    embedder: Embedder,
    reranker: Reranker | None = None,
    rerank_top: int = 10,
    dims: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """{"embedding": metrics} and, with a reranker, {"reranked": metrics} (module docstring)."""
    from tqdm.auto import tqdm

    documents, doc_instructions, positives = corpus_of(samples)
    queries = [s.query for s in samples]
    q = embed_grouped(embedder, queries, [s.instruction for s in samples], dims, batch_size)
    d = embed_grouped(embedder, documents, doc_instructions, dims, batch_size)
    orders = (q @ d.T).argsort(dim=1, descending=True).tolist()
    report = {"embedding": metrics([rank_of(o, p) for o, p in zip(orders, positives, strict=True)])}
    if reranker is not None:
        reranked = []
        for s, order in tqdm(list(zip(samples, orders, strict=True)), desc="reranking", disable=not progress):
            top = order[:rerank_top]
            scores = reranker.score(s.query, [documents[k] for k in top], s.instruction, batch_size)
            reranked.append([top[k] for k in scores.argsort(descending=True).tolist()] + order[rerank_top:])
        report["reranked"] = metrics([rank_of(o, p) for o, p in zip(reranked, positives, strict=True)])
        report["reranked"]["top"] = rerank_top
    report["embedding"]["corpus"] = len(documents)
    return report
