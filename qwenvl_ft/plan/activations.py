"""Activation memory of one training step: what autograd keeps for backward, op by op.

Per block and per token (width w, MLP width i, q width qd = heads * head_dim, k/v width kd, e bytes
per activation element), PyTorch saves:

- each norm: RMSNorm its fp32 input copy (4w; in fp32 the input itself), LayerNorm its input (e*w);
  with a trainable weight also the normalised tensor, and the output every following Linear keeps;
- attention (SDPA flash / memory-efficient kernels): rotated q and k, v, the output and the
  log-sum-exp (4 * heads), never the n x n scores. k and v are repeated to qd by `repeat_kv` when
  SDPA gets a mask (padding or packing) and GQA cannot be passed to the kernel. A fused qkv
  projection keeps its whole output alive (v is a view of it). Eager attention adds the
  (heads x n) fp32 probabilities and their 16-bit copy;
- the gated MLP: gate and up outputs and the activation (3 e*i), plus the down_proj input when
  trainable; fc1 -> act -> fc2: the act input, plus the fc2 input when trainable;
- each LoRA adapter on an n-wide input: the dropout output (a*n, a = adapter dtype bytes), its
  bool mask (1 byte on CUDA) and lora_A's output (a*r). Frozen Linear layers keep nothing.

With gradient checkpointing a block keeps only its input (e*w); one block is recomputed at a time
in backward. Either way the backward of one block needs gradient scratch of about e*i + 8 w.

Hybrid decoders (Gated DeltaNet linear attention in some blocks, `linear_block_saved`) replace the
attention term with what transformers' torch path (modeling_qwen3_5.py) keeps, counted by storage
on CPU (tests/unit/models/test_qwen3_5.py): the short conv's input and SiLU input (2 kd + vd wide,
in the activation dtype), and in fp32 about 22 value-widths of delta-rule tensors (q, k, v and
their beta / decay products, the per-chunk products, the gated norm's inputs), five
(heads x 64-token chunk) attention matrices and one (heads x dk x dv) state per chunk. With
flash-linear-attention on GPU the kernels recompute most of that in backward: there the term is an
upper bound (not measured on GPU yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..models.base import BlockShapes, LinearAttentionShapes

CHUNK = 1024
"""Rows of logits the chunked cross-entropy computes at a time (qwenvl_ft.training.loss)."""


@dataclass(frozen=True)
class Precision:
    """Bytes per element of activations (e) and of LoRA adapters and their inputs (a)."""

    e: int
    a: int
    mask: int = 1
    """Dropout mask bytes per element: bool on CUDA (CPU keeps a mask in the input dtype)."""


def block_saved(
    b: BlockShapes,
    tokens: int,
    p: Precision,
    trainable: bool,
    adapters: Sequence[int] = (),
    r: int = 0,
    dropout: float = 0.0,
    kv_repeated: bool = False,
    seq: int = 0,
) -> int:
    """Bytes one block keeps for backward. adapters: input widths of its LoRA layers; seq: sequence length."""
    e = p.e
    qd, kd = b.heads * b.head_dim, b.kv_heads * b.head_dim
    kv = qd if kv_repeated else kd
    attn = e * (qd + kd) + e * (qd + 2 * kd) if b.fused_qkv else e * (qd + 2 * kv)
    attn += e * qd + 4 * b.heads
    if b.eager_attention:
        attn += (4 + e) * b.heads * seq
    if b.qk_norm:
        attn += 4 * (qd + kd) + (e * (qd + kd) if trainable else 0)
    return tokens * (attn + _norms_mlp_lora(b, p, trainable, adapters, r, dropout))


def _norms_mlp_lora(
    b: BlockShapes, p: Precision, trainable: bool, adapters: Sequence[int], r: int, dropout: float
) -> int:
    """Per token: a block's two norms, its MLP and its LoRA adapters (every kind of block has them)."""
    e, w, i = p.e, b.width, b.intermediate
    if b.rms_norm:
        norm = 4 * w + (2 * e * w if trainable else 0)
    else:
        norm = e * w * (2 if trainable else 1)
    mlp = (3 if b.gated_mlp else 1) * e * i + (e * i if trainable else 0)
    lora = sum((p.a + (p.mask if dropout > 0 else 0)) * n + p.a * r for n in adapters)
    return 2 * norm + mlp + lora


CHUNK_DELTA = 64
"""Tokens per chunk of the chunked gated delta rule (transformers' torch path and flash-linear-attention)."""


def linear_block_saved(
    b: BlockShapes,
    lin: LinearAttentionShapes,
    tokens: int,
    p: Precision,
    trainable: bool,
    adapters: Sequence[int] = (),
    r: int = 0,
    dropout: float = 0.0,
) -> int:
    """Bytes one linear-attention (Gated DeltaNet) block keeps for backward; arguments as `block_saved`."""
    kd, vd = lin.key_heads * lin.key_head_dim, lin.value_heads * lin.value_head_dim
    mixer = 2 * p.e * (2 * kd + vd)  # the conv's input and its SiLU's input
    # The delta rule runs in fp32 (kd <= vd in every published config: counted as value widths).
    states = lin.value_heads * lin.key_head_dim * lin.value_head_dim // CHUNK_DELTA
    mixer += 4 * (22 * vd + 5 * lin.value_heads * CHUNK_DELTA + states)
    return tokens * (mixer + _norms_mlp_lora(b, p, trainable, adapters, r, dropout))


def stack_bytes(
    b: BlockShapes,
    tokens: int,
    p: Precision,
    checkpointed: bool,
    linear: LinearAttentionShapes | None = None,
    linear_adapters: Sequence[int] = (),
    **block: object,
) -> int:
    """Peak activation bytes of a whole stack in forward + backward (block arguments as `block_saved`).

    linear: the stack's linear-attention blocks (a hybrid decoder), whose LoRA layers have the input
    widths `linear_adapters`; the other `depth - linear.layers` blocks are full attention.
    """
    one = block_saved(b, tokens, p, **block)
    ones = [(b.depth, one)]
    if linear is not None and linear.layers:
        keep = {k: v for k, v in block.items() if k in ("trainable", "r", "dropout")}
        lin = linear_block_saved(b, linear, tokens, p, adapters=linear_adapters, **keep)
        ones = [(b.depth - linear.layers, one), (linear.layers, lin)]
    largest = max(size for n, size in ones if n)
    kept = b.depth * p.e * b.width * tokens + largest if checkpointed else sum(n * size for n, size in ones)
    return kept + tokens * (p.e * b.intermediate + 8 * b.width)


def decoder_extra(b: BlockShapes, tokens: int, p: Precision, norm_trainable: bool) -> int:
    """Outside the blocks: the final norm and the rotary cos / sin shared by every layer."""
    return tokens * (4 * b.width + (p.e * b.width if norm_trainable else 0) + 2 * p.e * b.head_dim)


def merger_bytes(width: int, patches: int, p: Precision, trainable: bool, count: int) -> int:
    """Merger / resampler MLPs over the patch features: norm input, GELU input, and the Linear inputs
    when trainable (the same widths as a vision block's norm + fc1 -> act -> fc2)."""
    return count * patches * width * (4 + (3 if trainable else 1) * p.e)


def loss_bytes(kind: str, tokens: int, vocab: int, hidden: int, p: Precision, head_trainable: bool) -> int:
    """Peak bytes of logits and cross-entropy.

    standard: the (tokens x vocab) logits in the model dtype, their fp32 upcast and log-softmax, and
    in backward the fp32 gradient next to the saved log-softmax (the larger of the two phases).
    chunked (and Liger's fused kernel): one chunk of fp32 logits, reused in place for its gradient,
    plus its 16-bit copy; the gathered hidden states and their gradient; an fp32 accumulator for a
    trainable lm_head's gradient.
    """
    if kind == "standard":
        return tokens * vocab * max(p.e + 8, 12)
    rows = min(tokens, CHUNK)
    head = vocab * hidden * 4 if head_trainable else 0
    return rows * vocab * (4 + (p.e if p.e < 4 else 0)) + 2 * tokens * hidden * p.e + head
