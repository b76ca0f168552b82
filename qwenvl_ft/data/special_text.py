"""Text from the data that spells a control token: refused, or tokenized as the plain text it is.

A sample's text can hold a generation's vision or chat-control special token literally (a scraped
chat log with `<|im_end|>` in it, a prompt about `<|image_pad|>`). A tokenizer reads such text as
the token itself: an image pad without an image (the forward fails on mismatched features), or an
end of turn in the middle of an answer (the model learns to stop there). `data.special_text`:

- error (default): the sample is an error of the data check, at its file:line, naming the token;
- escape: the text is tokenized as plain text (`split_special_tokens`), so `<|im_end|>` typed in
  an answer costs the few ordinary tokens its characters spell and means nothing.

Which tokens: `ModelFamily.control_tokens()`. The markup a data format defines itself (Qwen-VL's
`<img>`/`<box>`/`<ref>`, a leading `<think>` block) is read by the readers before this point and
never reaches it as text; box and ref tokens that a Qwen2-VL answer writes in its text
(`<|box_start|>`) are the answer, and stay tokens.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING

from .readers import DataError

if TYPE_CHECKING:
    from ..models.processor import VLProcessor


def check_data_text(text: str, processor: VLProcessor, where: str) -> tuple[str, ...]:
    """The control tokens data text spells, to be tokenized as plain text (`data.special_text:
    escape`); () when it spells none; a DataError naming the first when the recipe says error."""
    found = sorted((text.find(t), t) for t in processor.family.control_tokens() if t in text)
    if not found:
        return ()
    if getattr(processor, "special_text", "error") == "escape":
        return tuple(t for _, t in found)
    token, title = found[0][1], processor.family.title
    raise DataError(
        f"{where} holds {token!r}, a control token of {title}: the tokenizer would read it as that "
        f"token, not as text. Remove it, or set data.special_text: escape to train it as plain text"
    )


@cache
def _added_pattern(tokens: tuple[str, ...]) -> re.Pattern:
    # Longest first, as the tokenizer's trie matches added tokens.
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def tokenize_escaped(text: str, escaped: list[tuple[int, int]], tokenizer) -> list[tuple[int, int]]:
    """(token id, start offset) of `text` tokenized as the tokenizer does, except that the added
    tokens inside the `escaped` character spans are plain text.

    A tokenizer splits its input at added tokens first and runs BPE on the stretches between them;
    this does the same split with the escaped occurrences left in their stretch, which is then
    tokenized with `split_special_tokens`, so outside the escaped spans the ids are the usual ones."""
    added = tokenizer.get_added_vocab()
    out: list[tuple[int, int]] = []
    pos = 0

    def stretch(end: int) -> None:
        if end > pos:
            enc = tokenizer(
                text[pos:end],
                add_special_tokens=False,
                return_offsets_mapping=True,
                split_special_tokens=True,
            )
            out.extend(
                (tid, pos + s) for tid, (s, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
            )

    for m in _added_pattern(tuple(added)).finditer(text):
        if any(a < m.end() and m.start() < b for a, b in escaped):
            continue  # part of the plain text around it
        stretch(m.start())
        out.append((added[m.group()], m.start()))
        pos = m.end()
    stretch(len(text))
    return out
