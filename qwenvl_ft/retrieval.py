"""Embedding and reranking with Qwen3-VL-Embedding / -Reranker checkpoints, runs of `train.method:
embedding` / `reranker`, or merged ones, from the inputs training encodes (data/retrieval.py).

    embedder = Embedder.load("runs/my-embedding")
    vectors = embedder.embed([Item(texts=["a red circle"])], instruction="Find the matching image.")
    reranker = Reranker.load("runs/my-reranker")
    scores = reranker.score(query, documents)          # sigmoid(logit yes - logit no), one per document

The vector is the last layer's hidden state at the last token, L2-normalised (`dims`: the first `dims`
values, normalised again: Matryoshka); the score the official one. Inputs are left-padded, so each
ends at the last column, where both models read it (README 'Retrieval').
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data.retrieval import Item, embedding_input, encode_input, reranker_input
from .infer import left_padded
from .models import get_family, resolve_family
from .models.base import ModelFamily
from .models.processor import VLProcessor
from .models.qwen3_vl_retrieval import MAX_PIXELS, MIN_PIXELS, NO, YES
from .runs import DTYPES, checkpoint_meta, is_adapter, load_adapter_model, processor_dir, read_run


def forward_last(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(final-norm hidden state, logits) at the last column of a left-padded batch: (rows, hidden),
    (rows, vocab). One forward through the whole model (and whatever wraps it: DeepSpeed, DDP, PEFT)
    with the head on that column alone; its last hidden state is `Qwen3VLModel`'s `last_hidden_state`,
    which the official code pools. Training and inference both read the models here."""
    out = model(**batch, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][:, -1], out.logits[:, -1]


def yes_no_ids(tokenizer) -> tuple[int, int]:
    """The vocabulary ids of "yes" and "no", as the official reranker takes them; refused when absent."""
    vocab = tokenizer.get_vocab()
    missing = [w for w in (YES, NO) if w not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer has no {' or '.join(repr(w) for w in missing)} entry: the reranker's score is "
            "logit('yes') - logit('no') (a tiny reranker needs make-tiny --retrieval reranker)"
        )
    return vocab[YES], vocab[NO]


def normalized(vectors: torch.Tensor, dims: int | None = None) -> torch.Tensor:
    """Matryoshka: the first `dims` values (all when None), L2-normalised."""
    return F.normalize(vectors[..., :dims].float(), p=2, dim=-1)


def load_retrieval_model(
    path: str | Path, dtype: str = "fp32", device: str | None = None, base: str | Path | None = None
) -> tuple[torch.nn.Module, VLProcessor, ModelFamily]:
    """A checkpoint or run of a generation with retrieval models; its processor with the official
    pixel budget (4 to 1800 visual tokens) unless it is one of our runs, which saved its own."""
    path = Path(path)
    if is_adapter(path):
        meta = read_run(path)
        family = get_family(meta["family"])
        _require_retrieval(family)
        base_path = Path(base or meta["base_model"])
        model = load_adapter_model(path, base_path, family, DTYPES[dtype])
        processor = family.load_processor(str(processor_dir(path, base_path)))
    else:
        meta = checkpoint_meta(path)
        family = resolve_family(str(path), None)
        _require_retrieval(family)
        model = family.load_model(str(path), dtype=DTYPES[dtype])
        processor = family.load_processor(str(path))
    if meta.get("method") not in ("embedding", "reranker"):
        processor.set_pixel_range(MIN_PIXELS, MAX_PIXELS)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor, family


def _require_retrieval(family: ModelFamily) -> None:
    if not family.retrieval:
        raise ValueError(
            f"{family.title} ({family.name}) has no embedding or reranker models "
            "(Qwen3-VL-Embedding and -Reranker are Qwen3-VL checkpoints)"
        )


def _batches(items: list, size: int) -> Iterable[list]:
    return (items[k : k + size] for k in range(0, len(items), size))


@dataclass
class Embedder:
    model: torch.nn.Module
    processor: VLProcessor
    family: ModelFamily

    @classmethod
    def load(cls, path, dtype: str = "fp32", device: str | None = None, base=None) -> Embedder:
        return cls(*load_retrieval_model(path, dtype, device, base))

    @torch.no_grad()
    def embed(
        self, items: list[Item], instruction: str | None = None, dims: int | None = None, batch_size: int = 8
    ) -> torch.Tensor:
        """One unit vector per item (float32, on the CPU); `instruction`: the system text (None: the
        default, "Represent the user's input.")."""
        out = []
        pad = self.processor.tokenizer.pad_token_id
        for chunk in _batches(items, batch_size):
            encoded = [encode_input(embedding_input(it, instruction), self.processor) for it in chunk]
            out.append(forward_last(self.model, left_padded(encoded, pad, self.model))[0].float().cpu())
        return normalized(torch.cat(out), dims) if out else torch.zeros(0)


@dataclass
class Reranker:
    model: torch.nn.Module
    processor: VLProcessor
    family: ModelFamily

    @classmethod
    def load(cls, path, dtype: str = "fp32", device: str | None = None, base=None) -> Reranker:
        reranker = cls(*load_retrieval_model(path, dtype, device, base))
        yes_no_ids(reranker.processor.tokenizer)  # refused before anything is scored
        return reranker

    @torch.no_grad()
    def score(
        self, query: Item, documents: list[Item], instruction: str | None = None, batch_size: int = 8
    ) -> torch.Tensor:
        """sigmoid(logit yes - logit no) of each (query, document), float32 on the CPU."""
        ids = yes_no_ids(self.processor.tokenizer)
        pad = self.processor.tokenizer.pad_token_id
        out = []
        for chunk in _batches(documents, batch_size):
            encoded = [encode_input(reranker_input(query, d, instruction), self.processor) for d in chunk]
            logits = forward_last(self.model, left_padded(encoded, pad, self.model))[1].float()
            out.append(torch.sigmoid(logits[:, ids[0]] - logits[:, ids[1]]).cpu())
        return torch.cat(out) if out else torch.zeros(0)
