"""Tokenizers on the real Qwen vocabulary: special tokens at the real ids, BPE equal to tiktoken's."""

from __future__ import annotations

import pytest
from family_facts import need, registered

from qwenvl_ft.models.tokenizer import QWEN_PATTERN, qwen_vocab_file


@pytest.mark.parametrize("family", registered())
def test_special_tokens_at_real_ids(real_tokenizer, family):
    """The ids the published tokenizer gives (tests/family_facts.py), on the tokenizer tiny models get."""
    expected_ids = need(family, "special_ids").special_ids
    tok = real_tokenizer(family)
    for token, expected in expected_ids.items():
        assert tok.convert_tokens_to_ids(token) == expected, token


def test_bpe_matches_tiktoken_on_the_same_ranks(real_tokenizer):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    tok = real_tokenizer("qwen2_vl")
    enc = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(qwen_vocab_file())),
        special_tokens={"<|im_start|>": 151644, "<|im_end|>": 151645},
    )
    text = "<|im_start|>user\nThe box is (123,456),(789,1000) — naïve café 你好!\n\n  x<|im_end|>"
    assert tok(text, add_special_tokens=False)["input_ids"] == enc.encode(text, allowed_special="all")
    # Single digits, as Qwen's pre-tokenizer splits them: '1000' is four tokens.
    assert len(tok("1000", add_special_tokens=False)["input_ids"]) == 4


def test_small_fallback_vocab_keeps_special_token_order():
    from qwenvl_ft.models import get_family
    from qwenvl_ft.models.tokenizer import build_tokenizer

    fam = get_family("qwen2_5_vl")
    tok = build_tokenizer(fam.special_tokens, fam.chat_template, real_vocab=False)
    first = tok.convert_tokens_to_ids("<|endoftext|>")
    assert first < 2000
    assert tok.convert_tokens_to_ids("<|image_pad|>") == first + 12
    assert tok.decode(tok("Find the red square.")["input_ids"]) == "Find the red square."
