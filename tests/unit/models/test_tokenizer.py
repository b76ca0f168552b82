"""Tokenizers on the real Qwen vocabulary: special tokens at the real ids, BPE equal to tiktoken's."""

from __future__ import annotations

import pytest

from qwenvl_ft.models.tokenizer import QWEN_PATTERN, qwen_vocab_file

# Ids published with the checkpoints (tokenizer.json / tokenization_qwen.py).
REAL_IDS = {
    "qwen2_vl": {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|object_ref_start|>": 151646,
        "<|box_start|>": 151648,
        "<|vision_start|>": 151652,
        "<|vision_end|>": 151653,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
    },
    "qwen2_5_vl": {"<|image_pad|>": 151655, "<tool_call>": 151657, "<|file_sep|>": 151664},
    "qwen3_vl": {"<|image_pad|>": 151655, "<tool_response>": 151665, "<think>": 151667, "</think>": 151668},
    "qwen_vl": {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|extra_0|>": 151646,
        "<|extra_204|>": 151850,
        "<ref>": 151851,
        "</ref>": 151852,
        "<box>": 151853,
        "</box>": 151854,
        "<quad>": 151855,
        "</quad>": 151856,
        "<img>": 151857,
        "</img>": 151858,
        "<imgpad>": 151859,
    },
}


@pytest.mark.parametrize("family", sorted(REAL_IDS))
def test_special_tokens_at_real_ids(real_tokenizer, family):
    tok = real_tokenizer(family)
    for token, expected in REAL_IDS[family].items():
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
