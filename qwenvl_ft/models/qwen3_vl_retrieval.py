"""Qwen3-VL-Embedding and Qwen3-VL-Reranker (2B, 8B; January 2026): plain Qwen3-VL checkpoints
(`model_type` qwen3_vl, `Qwen3VLForConditionalGeneration`) used as a dual-tower embedder and a
single-tower yes/no reranker. The facts below are the official inference code's
(QwenLM/Qwen3-VL-Embedding @ 8ce3aab, `src/models/qwen3_vl_embedding.py`, `qwen3_vl_reranker.py`):

Embedding: one conversation per input, the instruction as the system message ("Represent the
user's input." by default; a "." is added to one that does not end in punctuation), the user turn
the input's videos, then images, then texts ("NULL" when it has none), then the generation prompt
`<|im_start|>assistant\\n`. The vector is the last layer's hidden state (after the final norm) at the
last token, that `\\n`, L2-normalised; Matryoshka truncation slices it, then normalises again.
(The technical report appends an `<|endoftext|>` instead; the released code, the vLLM example and
the sentence-transformers setup all pool the `\\n`, and so do we.)

Reranker: a fixed system message, one user turn `<Instruct>: {instruction}<Query>:{query}
\\n<Document>:{document}` (each part videos, images, texts, or "NULL"), the generation prompt; the
score is sigmoid(logit("yes") - logit("no")) at the last token, through the language-model head's two
rows. Both: images between 4 and 1800 visual tokens (factor 32); video at 1 fps, at most 64 frames.
"""

from __future__ import annotations

import unicodedata

EMBEDDING_INSTRUCTION = "Represent the user's input."
RERANKER_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
RERANKER_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
EMPTY = "NULL"
"""The text of an input with no text, image or video."""
YES, NO = "yes", "no"
"""The vocabulary entries whose logits make the reranker's score."""
MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 1800 * 32 * 32
FPS = 1.0
MAX_FRAMES = 64
EMBEDDING_MAX_LENGTH = 8192
RERANKER_MAX_LENGTH = 10240


def embedding_instruction(instruction: str | None) -> str:
    """The system text of an embedding input: the default, or the given one ending in punctuation."""
    text = (instruction or "").strip()
    if not text:
        return EMBEDDING_INSTRUCTION
    return text if unicodedata.category(text[-1]).startswith("P") else text + "."
