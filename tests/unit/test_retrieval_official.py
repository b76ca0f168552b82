"""Our embedder and reranker equal the official inference code (QwenLM/Qwen3-VL-Embedding @ 8ce3aab,
`src/models/qwen3_vl_embedding.py`, `qwen3_vl_reranker.py`), whose computation is written out here by
hand on a tiny Qwen3-VL checkpoint with the real vocabulary:

- embedding: system message = the instruction ("Represent the user's input." by default, a "." added
  when it ends without punctuation); user content = videos, images, texts ("NULL" when empty);
  `apply_chat_template(add_generation_prompt=True)`; the processor pads on the right; the vector is
  `Qwen3VLModel(...).last_hidden_state` at the last position whose attention mask is 1 (the flip /
  argmax of `_pooling_last`), then `F.normalize`;
- reranker: the fixed "Judge whether ..." system message; user content `<Instruct>: {instruction}`,
  `<Query>:`, the query's parts, `\\n<Document>:`, the document's parts; padding on the left; score =
  sigmoid(`last_hidden_state[:, -1]` @ (lm_head[yes] - lm_head[no])).

The images are 64x96 and 32x128: multiples of 32 inside [4096, 1843200] pixels, which qwen_vl_utils'
resize leaves as they are, so the official path runs the image processor with do_resize=False on
the images themselves.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

from qwenvl_ft.data.retrieval import Item
from qwenvl_ft.models import get_family
from qwenvl_ft.retrieval import Embedder, Reranker, normalized
from qwenvl_ft.tiny import make_tiny

RED = Image.new("RGB", (96, 64), (200, 30, 30))
BLUE = Image.new("RGB", (128, 32), (30, 30, 200))
JUDGE = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("retrieval") / "tiny"
    make_tiny(get_family("qwen3_vl"), path, real_vocab=True, seed=3)
    return path


def content(item: dict) -> list[dict]:
    parts = [{"type": "image", "image": im} for im in item.get("images", [])]
    parts += [{"type": "text", "text": t} for t in item.get("texts", [])]
    return parts or [{"type": "text", "text": "NULL"}]


def official_inputs(checkpoint, conversations: list[list[dict]], side: str) -> dict:
    """apply_chat_template, each image pad expanded as the processor does, padded on `side`."""
    from transformers import Qwen2VLImageProcessorPil

    tok = AutoTokenizer.from_pretrained(checkpoint)
    images = [
        p["image"] for conv in conversations for m in conv for p in m["content"] if p["type"] == "image"
    ]
    vision = (
        Qwen2VLImageProcessorPil.from_pretrained(checkpoint)(
            images=images, do_resize=False, return_tensors="pt"
        )
        if images
        else {}
    )
    grids = iter(vision["image_grid_thw"].tolist()) if images else iter(())
    rows = []
    for conv in conversations:
        text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        parts = text.split("<|image_pad|>")
        expanded = parts[0]
        for part in parts[1:]:
            t, h, w = next(grids)
            expanded += "<|image_pad|>" * (t * h * w // 4) + part
        rows.append(tok(expanded, add_special_tokens=False)["input_ids"])
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for k, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(longest - len(r), longest)
        ids[k, span], mask[k, span] = torch.tensor(r), 1
    # The processor's mm_token_type_ids: 1 on image pads (transformers 5 needs them for M-RoPE).
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    out = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == image_pad).long() * mask}
    if images:
        out |= {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
    return out


@torch.no_grad()
def official_embeddings(checkpoint, items: list[dict], instruction: str) -> torch.Tensor:
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint).eval()
    conversations = [
        [
            {"role": "system", "content": [{"type": "text", "text": instruction}]},
            {"role": "user", "content": content(i)},
        ]
        for i in items
    ]
    inputs = official_inputs(checkpoint, conversations, "right")
    hidden = model.model(**inputs).last_hidden_state
    last = inputs["attention_mask"].shape[1] - inputs["attention_mask"].flip(dims=[1]).argmax(dim=1) - 1
    return F.normalize(hidden[torch.arange(len(items)), last], p=2, dim=-1)


@torch.no_grad()
def official_scores(checkpoint, query: dict, documents: list[dict], instruction: str) -> torch.Tensor:
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint).eval()
    vocab = AutoTokenizer.from_pretrained(checkpoint).get_vocab()
    weight = model.lm_head.weight[vocab["yes"]] - model.lm_head.weight[vocab["no"]]
    scores = []
    for doc in documents:  # the official `process` scores one pair per forward
        user = [{"type": "text", "text": "<Instruct>: " + instruction}, {"type": "text", "text": "<Query>:"}]
        user += content(query) + [{"type": "text", "text": "\n<Document>:"}] + content(doc)
        conv = [
            {"role": "system", "content": [{"type": "text", "text": JUDGE}]},
            {"role": "user", "content": user},
        ]
        inputs = official_inputs(checkpoint, [conv], "left")
        scores.append(torch.sigmoid(model.model(**inputs).last_hidden_state[:, -1] @ weight))
    return torch.cat(scores)


ITEMS = [
    {"texts": ["a red circle"]},
    {"images": [RED]},
    {"images": [BLUE], "texts": ["blue, wide"]},
    {},  # nothing: "NULL"
]


@pytest.mark.parametrize("instruction", [None, "Find the image that matches", "Retrieve it!"])
def test_the_embedding_equals_the_official_code(checkpoint, instruction):
    embedder = Embedder.load(checkpoint)
    ours = embedder.embed([Item(**i) for i in ITEMS], instruction, batch_size=3)
    by_hand = {
        None: "Represent the user's input.",
        "Find the image that matches": "Find the image that matches.",
    }
    expected = official_embeddings(checkpoint, ITEMS, by_hand.get(instruction, instruction))
    assert ours.shape == (4, 64)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)
    # Matryoshka: the first 16 values, normalised again
    torch.testing.assert_close(
        embedder.embed([Item(**ITEMS[0])], instruction, dims=16),
        F.normalize(expected[:1, :16] / expected[:1, :16].norm(), dim=-1),
        atol=2e-5,
        rtol=1e-4,
    )


def test_matryoshka_slices_the_raw_vector_then_normalises():
    raw = torch.tensor([[3.0, 4.0, 12.0]])
    assert torch.allclose(normalized(raw, 2), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(normalized(raw), raw / 13)


@pytest.mark.parametrize("instruction", [None, "Does the picture show what the query says?"])
def test_the_reranker_score_equals_the_official_code(checkpoint, instruction):
    reranker = Reranker.load(checkpoint)
    query = {"texts": ["a red rectangle"]}
    docs = [ITEMS[1], ITEMS[2], {"texts": ["something else entirely"]}, {}]
    ours = reranker.score(Item(**query), [Item(**d) for d in docs], instruction, batch_size=3)
    default = "Given a search query, retrieve relevant candidates that answer the query."
    expected = official_scores(checkpoint, query, docs, instruction or default)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


def test_a_tokenizer_without_yes_and_no_is_refused_by_name(tmp_path):
    make_tiny(get_family("qwen3_vl"), tmp_path / "small", real_vocab=False)  # a 480-entry vocabulary
    with pytest.raises(ValueError, match=r"the tokenizer has no 'yes' entry"):
        Reranker.load(tmp_path / "small")


def test_generations_without_retrieval_models_are_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match=r"Qwen2.5-VL \(qwen2_5_vl\) has no embedding or reranker models"):
        Embedder.load(tiny_model("qwen2_5_vl"))
