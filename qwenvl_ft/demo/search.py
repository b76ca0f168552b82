"""The demo's search tab: a text query against a folder of images, ranked by an embedding model
(Qwen3-VL-Embedding or an `embedding` run) and, optionally, reordered by a reranker.

The folder's images are embedded once, when the page starts (with a progress bar), as documents
(the default instruction); a query is embedded with the instruction given on the page, the images
ranked by cosine similarity, and with a reranker its top `rerank_top` rescored (sigmoid of yes - no)
and reordered. What the page shows is what `eval --task retrieval` measures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.images import ImageError, load_image
from ..data.retrieval import Item
from ..retrieval import Embedder, Reranker

log = logging.getLogger("qwenvl_ft.demo")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Hit:
    path: Path
    similarity: float
    """Cosine similarity of the query and image embeddings."""
    relevance: float | None = None
    """The reranker's score (sigmoid of yes - no), for the images it rescored."""

    @property
    def caption(self) -> str:
        text = f"{self.path.name}: similarity {self.similarity:.3f}"
        return text + (f", relevance {self.relevance:.3f}" if self.relevance is not None else "")


class SearchIndex:
    def __init__(
        self,
        embedder: Embedder,
        folder: str | Path,
        reranker: Reranker | None = None,
        rerank_top: int = 10,
        batch_size: int = 8,
        progress: bool = True,
    ):
        from tqdm.auto import tqdm

        self.embedder, self.reranker, self.rerank_top = embedder, reranker, rerank_top
        candidates = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.paths: list[Path] = []
        for path in candidates:
            try:
                load_image(str(path))  # decodes: a broken file is left out, and said
            except (ImageError, OSError) as e:
                log.warning("demo search: %s left out: %s", path, e)
                continue
            self.paths.append(path)
        if not self.paths:
            raise ValueError(f"{folder}: no image to search (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        vectors = []
        for k in tqdm(range(0, len(self.paths), batch_size), desc="indexing images", disable=not progress):
            chunk = self.paths[k : k + batch_size]
            vectors.append(embedder.embed([Item(images=[str(p)]) for p in chunk], batch_size=batch_size))
        self.vectors = torch.cat(vectors)

    def search(self, query: str, instruction: str | None = None, top: int = 10) -> list[Hit]:
        """The `top` images for a text query, best first."""
        if not query.strip():
            raise ValueError("type a query first")
        q = self.embedder.embed([Item(texts=[query])], instruction or None)[0]
        sims = self.vectors @ q
        order = sims.argsort(descending=True).tolist()
        hits = [Hit(self.paths[k], float(sims[k])) for k in order]
        if self.reranker is not None:
            head = hits[: self.rerank_top]
            scores = self.reranker.score(Item(texts=[query]), [Item(images=[str(h.path)]) for h in head])
            for hit, score in zip(head, scores.tolist(), strict=True):
                hit.relevance = score
            hits = sorted(head, key=lambda h: -h.relevance) + hits[self.rerank_top :]
        return hits[:top]
