"""Retrieval data: a query, the document that answers it and hard negatives, for `train.method:
embedding` and `reranker`, `eval --task retrieval` and their data check.

One JSON object per line (README 'Retrieval'):

    {"id": "q1", "instruction": "Find the image that matches the description.",
     "query": "a red circle", "positive": {"image": "imgs/1.png"},
     "negatives": [{"image": "imgs/7.png"}, {"text": "a blue square", "image": "imgs/2.png"}]}

An item (query, positive, each negative) is a string (text) or an object with any of `text`, `image`,
`video`, each one value or a list; paths are relative to the file. `instruction` is the query's (the
embedder's system text, the reranker's `<Instruct>`); `document_instruction` the embedder's for the
documents (default "Represent the user's input."). Other layouts read as they are: FlagEmbedding
(`query`, `pos`, `neg`: strings; one positive per line), sentence-transformers columns (`anchor`,
`positive`, `negative` or `negative_1..`), ms-swift's (`messages`, `positive_messages`,
`negative_messages` with `images`, `positive_images`, `negative_images`, `<image>` tags in the text).

Every item becomes the official models' own input (models/qwen3_vl_retrieval.py): `embedding_input`
a system + user conversation, `reranker_input` one per (query, document); `encode_prompt` renders it
exactly as inference does, so the data check's token counts are what training encodes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from ..models.qwen3_vl_retrieval import (
    EMPTY,
    RERANKER_INSTRUCTION,
    RERANKER_SYSTEM,
    embedding_instruction,
)
from .checking import Outcome, Problem, error_message
from .clips import load_clip, plan_clip
from .conversation import Conversation, Segment, Turn
from .encode import Encoded
from .images import ImageError, image_size, load_for, verify_image
from .plan import RETRIEVAL_ROW, row
from .prompts import encode_prompt, prompt_length
from .readers import DataError
from .sources import Source
from .video import VideoError

if TYPE_CHECKING:
    from ..config import DatasetSpec
    from ..models.processor import VLProcessor

Kind = Literal["embedding", "reranker"]
_IMAGE_TAG = re.compile(r"<image>")


@dataclass
class Item:
    """One retrieval input: its texts, images and videos (paths, URLs or PIL images)."""

    texts: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)

    def key(self) -> tuple:
        """What makes two items the same document (a positive listed as a negative, corpus dedup)."""
        return (tuple(self.texts), tuple(map(str, self.images)), tuple(map(str, self.videos)))

    def segments(self) -> list[Segment]:
        """Videos, then images, then texts, as the official code orders them; "NULL" when empty."""
        segs = [Segment("video", v) for v in self.videos] + [Segment("image", i) for i in self.images]
        segs += [Segment("text", t) for t in self.texts]
        return segs or [Segment("text", EMPTY)]

    def describe(self) -> str:
        parts = [f"text {t[:40]!r}" for t in self.texts] + [f"image {i}" for i in self.images]
        return ", ".join(parts + [f"video {v}" for v in self.videos]) or "empty"


@dataclass
class RetrievalSample:
    id: str
    """file:line (id X): where every error about it points."""
    query: Item
    positive: Item
    negatives: list[Item]
    instruction: str | None = None
    document_instruction: str | None = None


# -- reading ---------------------------------------------------------------------------------------
def to_item(value: Any, base: Path, what: str, images: list | None = None) -> Item:
    """A string or {text, image, video} object (ms-swift: `<image>` tags taking `images` in order)."""
    if isinstance(value, str):
        value = {"text": value}
    if not isinstance(value, dict):
        raise DataError(
            f"{what} must be a string or an object with text / image / video, got {type(value).__name__}"
        )
    unknown = sorted(set(value) - {"text", "image", "video", "images", "videos"})
    if unknown:
        raise DataError(f"{what} has unknown field(s) {', '.join(unknown)} (text, image, video)")

    def listed(key: str) -> list:
        v = value.get(key, value.get(key + "s"))
        return [] if v is None else v if isinstance(v, list) else [v]

    texts, image_refs, videos = listed("text"), listed("image"), listed("video")
    if not all(isinstance(t, str) for t in texts):
        raise DataError(f"{what}: text must be a string or a list of strings")
    if images is not None:  # ms-swift: each <image> tag takes the next of this item's images
        tags = sum(len(_IMAGE_TAG.findall(t)) for t in texts)
        if tags != len(images):
            raise DataError(f"{what}: {tags} <image> tag(s) but {len(images)} image(s)")
        texts, image_refs = [_IMAGE_TAG.sub("", t) for t in texts], [*image_refs, *images]
    texts = [t for t in texts if t.strip()]
    resolve = lambda r: r if not isinstance(r, str) or re.match(r"^[a-z]+://", r) else str(base / r)  # noqa: E731
    return Item(texts, [resolve(r) for r in image_refs], [resolve(r) for r in videos])


def to_retrieval(record: Any, where: str, base: Path) -> RetrievalSample:
    """One record of any layout (module docstring) -> RetrievalSample; DataError naming `where`."""
    if not isinstance(record, dict):
        raise DataError(f"a retrieval sample must be a JSON object, got {type(record).__name__}", where)
    sid = f"{where} (id {record['id']})" if "id" in record else where
    try:
        if "positive_messages" in record:
            query, positive, negatives = _swift(record, base)
        elif "anchor" in record:
            negs = [
                record[k] for k in sorted(record, key=_negative_order) if re.fullmatch(r"negative(_\d+)?", k)
            ]
            query, positive = (
                to_item(record["anchor"], base, "anchor"),
                to_item(record.get("positive"), base, "positive"),
            )
            negatives = [to_item(n, base, f"negative {k + 1}") for k, n in enumerate(negs)]
        elif "pos" in record:
            pos = record["pos"] if isinstance(record["pos"], list) else [record["pos"]]
            if len(pos) != 1:
                raise DataError(
                    f"'pos' lists {len(pos)} positives; one per line (data_tools/convert_retrieval.py splits them)"
                )
            query, positive = to_item(record["query"], base, "query"), to_item(pos[0], base, "positive")
            negatives = [to_item(n, base, f"negative {k + 1}") for k, n in enumerate(record.get("neg") or [])]
        else:
            missing = [k for k in ("query", "positive") if record.get(k) in (None, "", {})]
            if missing:
                raise DataError(
                    f"a retrieval sample needs 'query' and 'positive': {' and '.join(missing)} missing"
                )
            negs = record.get("negatives") or []
            if not isinstance(negs, list):
                raise DataError("'negatives' must be a list of items")
            query, positive = (
                to_item(record["query"], base, "query"),
                to_item(record["positive"], base, "positive"),
            )
            negatives = [to_item(n, base, f"negative {k + 1}") for k, n in enumerate(negs)]
    except DataError as e:
        raise DataError(e.what, sid) from None
    except Exception as e:  # a shape no layout foresaw is a malformed sample, not a crash
        raise DataError(f"malformed retrieval sample ({type(e).__name__}: {e})", sid) from None
    for k, neg in enumerate(negatives):
        if neg.key() == positive.key():
            raise DataError(f"negative {k + 1} is the positive itself ({positive.describe()})", sid)
    for name, text in (
        ("instruction", record.get("instruction")),
        ("document_instruction", record.get("document_instruction")),
    ):
        if text is not None and not isinstance(text, str):
            raise DataError(f"'{name}' must be a string", sid)
    return RetrievalSample(
        sid, query, positive, negatives, record.get("instruction"), record.get("document_instruction")
    )


def _negative_order(key: str) -> int:
    return int(key.rsplit("_", 1)[1]) if "_" in key else 0


def _swift(record: dict, base: Path) -> tuple[Item, Item, list[Item]]:
    """ms-swift's layout: the query's user message, one positive and the negatives as message lists."""

    def item(messages: list, images: list, what: str) -> Item:
        texts = [m["content"] for m in messages if m.get("role") in ("user", "assistant")]
        return to_item({"text": texts}, base, what, images)

    positives = record["positive_messages"]
    if len(positives) != 1:
        raise DataError(f"'positive_messages' lists {len(positives)} positives; exactly one per line")
    negatives = record.get("negative_messages") or []
    neg_images = record.get("negative_images") or [[] for _ in negatives]
    return (
        item(record["messages"], record.get("images") or [], "query"),
        item(positives[0], (record.get("positive_images") or [[]])[0], "positive"),
        [
            item(m, imgs, f"negative {k + 1}")
            for k, (m, imgs) in enumerate(zip(negatives, neg_images, strict=True))
        ],
    )


class RetrievalSource(Source):
    """A dataset file of retrieval samples, by index (Source's file handling)."""

    def sample(self, i: int) -> RetrievalSample:
        record, where = self.record(i)
        return to_retrieval(record, where, self.base_of(i))


# -- the official inputs -----------------------------------------------------------------------------
def embedding_input(item: Item, instruction: str | None, sid: str = "") -> Conversation:
    """The embedder's conversation for one input: the instruction as system text, the item as user turn."""
    return Conversation(
        sid,
        [
            Turn("system", [Segment("text", embedding_instruction(instruction))]),
            Turn("user", item.segments()),
        ],
    )


def reranker_input(query: Item, document: Item, instruction: str | None, sid: str = "") -> Conversation:
    """The reranker's conversation for one (query, document) pair, token for token the official layout."""
    user = [
        Segment("text", "<Instruct>: " + (instruction or RERANKER_INSTRUCTION)),
        Segment("text", "<Query>:"),
    ]
    user += [*query.segments(), Segment("text", "\n<Document>:"), *document.segments()]
    return Conversation(sid, [Turn("system", [Segment("text", RERANKER_SYSTEM)]), Turn("user", user)])


def sequences(sample: RetrievalSample, kind: Kind, negatives: list[Item] | None = None) -> list[Conversation]:
    """The sample's model inputs: embedding: query, positive, negatives; reranker: (query, positive),
    then (query, negative) for each negative."""
    negs = sample.negatives if negatives is None else negatives
    if kind == "embedding":
        docs = [embedding_input(d, sample.document_instruction, sample.id) for d in (sample.positive, *negs)]
        return [embedding_input(sample.query, sample.instruction, sample.id), *docs]
    return [reranker_input(sample.query, d, sample.instruction, sample.id) for d in (sample.positive, *negs)]


def media(conv: Conversation) -> tuple[list, list]:
    """(image refs, video refs) of a conversation, in order."""
    segs = [s for t in conv.turns for s in t.segments]
    return [s.value for s in segs if s.kind == "image"], [s.value for s in segs if s.kind == "video"]


def encode_input(conv: Conversation, processor: VLProcessor, allow_urls: bool = False) -> Encoded:
    """A model input, its media loaded, encoded as the official code encodes it (no answer follows)."""
    images, videos = media(conv)
    loaded = [i if not isinstance(i, (str, Path)) else load_for(processor, i, allow_urls) for i in images]
    clips = [load_clip(plan_clip(v, processor), processor) for v in videos]
    return encode_prompt(conv, processor, loaded, clips)


# -- the check ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalRules:
    """The retrieval check, as the check loop (checking.py) runs it: every item's media decode, every
    model input (`sequences`) fits `max_length` exactly counted, a negative is never the positive;
    the reranker needs negatives to learn "no" from."""

    max_length: int
    kind: Kind = "embedding"
    allow_urls: bool = False
    unit: ClassVar[str] = "sample"
    dtype: ClassVar = RETRIEVAL_ROW

    def open(self, spec: DatasetSpec, cache_dir: Path | None) -> RetrievalSource:
        return RetrievalSource(spec, cache_dir)

    def key(self) -> list:
        return [self.max_length, self.kind, self.allow_urls]

    def check(self, source: RetrievalSource, s: int, i: int, processor: VLProcessor) -> Outcome:
        try:
            sample = source.sample(i)
        except DataError as e:
            return Outcome([Problem(e.where or source.where(i), e.what)])
        if self.kind == "reranker" and not sample.negatives:
            return Outcome([Problem(sample.id, "no negatives: the reranker learns 'no' from them")])
        try:
            return self._measure(sample, s, i, processor)
        except Exception as e:  # whatever decoding or encoding raises: an error at the sample
            return Outcome([Problem(sample.id, error_message(e))])

    def _measure(self, sample: RetrievalSample, s: int, i: int, processor: VLProcessor) -> Outcome:
        sizes, clips, problems = {}, {}, []
        for item, name in [(sample.query, "query"), (sample.positive, "positive")] + [
            (n, f"negative {k + 1}") for k, n in enumerate(sample.negatives)
        ]:
            for ref in item.images:
                try:
                    w, h = verify_image(ref, self.allow_urls) if str(ref) not in sizes else sizes[str(ref)]
                    processor.image_tokens(h, w)  # refuses extreme aspect ratios
                    sizes[str(ref)] = (w, h)
                except (ImageError, ValueError) as e:
                    problems.append(f"{name}: {e}")
            for ref in item.videos:
                try:
                    clips[str(ref)] = plan_clip(ref, processor)
                except (VideoError, ValueError) as e:
                    problems.append(f"{name}: {e}")
        if problems:
            return Outcome([Problem(sample.id, p) for p in problems])
        lengths = [input_length(c, processor, sizes, clips) for c in sequences(sample, self.kind)]
        names = ["query", "positive"] if self.kind == "embedding" else ["query + positive"]
        names += [
            f"{'' if self.kind == 'embedding' else 'query + '}negative {k + 1}"
            for k in range(len(sample.negatives))
        ]
        over = [f"{n} {length}" for n, length in zip(names, lengths, strict=True) if length > self.max_length]
        if over:
            return Outcome(
                dropped=Problem(
                    sample.id, f"{', '.join(over)} tokens > max_length {self.max_length}: dropped"
                )
            )
        items = [sample.query, sample.positive, *sample.negatives]
        values = row(
            RETRIEVAL_ROW, source=s, index=i, length=max(lengths), items=len(lengths),
            images=sum(len(it.images) for it in items), videos=sum(len(it.videos) for it in items),
            video_frames=sum(len(clips[str(v)].indices) for it in items for v in it.videos),
        )  # fmt: skip
        return Outcome(row=values)


def input_length(conv: Conversation, processor: VLProcessor, sizes: dict, clips: dict) -> int:
    """Exact tokens of one model input from image sizes and planned clips (what `encode_input` makes)."""
    from .check import Size

    images, videos = media(conv)
    dims = [Size(*sizes[str(i)]) if str(i) in sizes else Size(*image_size(i)) for i in images]
    return prompt_length(conv, processor, dims, [clips[str(v)] for v in videos])


def pick_negatives(sample: RetrievalSample, limit: int | None, seed: int, index: int) -> list[Item]:
    """At most `limit` of the sample's negatives, drawn once per (seed, sample): the same each epoch."""
    if limit is None or len(sample.negatives) <= limit:
        return sample.negatives
    return random.Random(seed * 1_000_003 + index).sample(sample.negatives, limit)


def lengths_of(plan_rows: np.ndarray) -> np.ndarray:
    """Per sample, the tokens it puts in a batch: its longest input times its inputs."""
    return np.ascontiguousarray(plan_rows["length"].astype(np.uint32) * plan_rows["items"])
