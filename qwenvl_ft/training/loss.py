"""Causal-LM cross-entropy computed from the final hidden states, never holding the full logits.

Qwen vocabularies have ~151k entries: fp32 logits for a 16k-token multimodal batch take ~10 GB, and
their gradient as much again. Here the lm_head projection and the loss are fused: rows go through
`chunk_size` at a time, and each chunk's gradient is computed right away in forward, so only one
chunk of logits is ever alive. `impl="liger"` does the same with Liger-Kernel's Triton kernels.

    h = model.model(**inputs).last_hidden_state
    loss = causal_lm_loss_from_hidden(h, model.lm_head.weight, labels, num_items_in_batch=n)

Numerics follow transformers: logits in the model dtype (like `nn.Linear`), softmax and loss in fp32.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
Impl = Literal["chunked", "liger"]

# torch.addmm(..., out_dtype=float32) multiplies bf16/fp16 on tensor cores into an fp32 accumulator.
_ADDMM_OUT_DTYPE = torch.__version__ >= (2, 8)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    impl: Impl = "chunked",
) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T + bias, targets), as an fp32 scalar.

    hidden: (N, H), only rows that have a target; weight: (V, H), trainable or frozen; targets: (N,)
    class ids with no ignore value; bias: (V,) or None. chunk_size: rows per chunk ("chunked" only).
    """
    if impl not in ("chunked", "liger"):
        raise ValueError(f"impl must be 'chunked' or 'liger', got {impl!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    device = hidden.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    if autocast:
        # What nn.Linear would do under autocast, done once here rather than per chunk inside.
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False) if autocast else nullcontext():
        if impl == "liger":
            return _liger_linear_cross_entropy(hidden, weight, targets, bias)
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, bias, chunk_size)


def causal_lm_loss_from_hidden(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int = 1024,
    impl: Impl = "chunked",
    shifted: bool = False,
) -> torch.Tensor:
    """transformers' `ForCausalLMLoss` on lm_head(hidden_states), without the (B, L, V) logits.

    hidden_states: (B, L, H) final-norm outputs; labels: (B, L), -100 = ignore. The loss is divided
    by `num_items_in_batch` when given (the Trainer's token count over gradient accumulation),
    else averaged over the supervised tokens; with none, it is a zero that still has a gradient.
    `shifted`: labels[t] is already the target of position t (a sequence-parallel shard's labels,
    shifted on the whole sample before it was split).
    """
    labels = labels.to(hidden_states.device)
    # The logit at position t predicts labels[t + 1]; the last position predicts nothing.
    shifted = labels if shifted else F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = shifted != IGNORE_INDEX
    loss = linear_cross_entropy(
        hidden_states[keep], weight, shifted[keep], bias, chunk_size=chunk_size, impl=impl
    )
    if num_items_in_batch is None:
        # clamp: 0 tokens give 0 / 1 = 0 where a plain mean would give NaN.
        return loss / keep.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients in one chunked pass; backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, chunk_size):
        need_h, need_w, _, need_b, _ = ctx.needs_input_grad
        loss, grads = _chunked_forward(hidden, weight, targets, bias, chunk_size, need_h, need_w, need_b)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        # Out of place: a second backward (retain_graph) must see the unscaled gradients again.
        grad_h, grad_w, grad_b = (None if g is None else g * grad_output for g in ctx.saved_tensors)
        return grad_h, grad_w, None, grad_b, None


def _chunked_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    chunk_size: int,
    need_h: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """The summed loss and (grad_hidden, grad_weight, grad_bias), each None when not needed."""
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_h else None
    # fp32 accumulators: summing many bf16 chunk products into a bf16 buffer loses the small ones.
    grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
    grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        logits = F.linear(h, weight, bias)  # model dtype, rounded exactly as nn.Linear rounds it
        dtype = logits.dtype
        z = logits.float()  # fp32 softmax, as ForCausalLMLoss upcasts; a new buffer unless already fp32
        del logits
        target_logit = z.gather(1, t[:, None]).squeeze(1)
        # log-sum-exp by hand, exponentiating in place: one chunk-sized fp32 buffer, one exp pass.
        row_max = z.amax(dim=-1, keepdim=True)
        e = z.sub_(row_max).exp_()
        total = e.sum(dim=-1, keepdim=True)
        loss += (total.log() + row_max - target_logit[:, None]).sum()
        if not (need_h or need_w or need_b):
            del z, e  # evaluation: free the chunk before the next one is allocated
            continue
        # d loss / d logits = softmax - onehot, still in the same buffer.
        g32 = e.div_(total)
        g32[torch.arange(len(t), device=t.device), t] -= 1
        if need_b:
            grad_b += g32.sum(0)
        g = g32.to(dtype)  # what nn.Linear's backward receives from the upcast
        if need_h:
            torch.mm(g, weight, out=grad_h[start : start + chunk_size])
        if need_w:
            _add_weight_grad(grad_w, g32, g, h)
        del z, e, g32, g  # free this chunk before the next one allocates
    grad_w = grad_w.to(weight.dtype) if need_w else None
    grad_b = grad_b.to(bias.dtype) if need_b else None
    return loss, (grad_h, grad_w, grad_b)


def _add_weight_grad(grad_w: torch.Tensor, g32: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w (fp32, V x H) += g.T @ h in place, with no V x H temporary."""
    if g.dtype == torch.float32:
        grad_w.addmm_(g.T, h)
    elif grad_w.is_cuda and _ADDMM_OUT_DTYPE and torch.cuda.get_device_capability(grad_w.device)[0] >= 8:
        torch.addmm(grad_w, g.T, h, out_dtype=torch.float32, out=grad_w)
    else:
        # No mixed-dtype addmm here (CPU, older GPUs): multiply in fp32, from chunk-sized copies only.
        grad_w.addmm_(g32.T, h.float())


def _liger_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
    except ImportError as e:
        raise ImportError("impl='liger' needs Liger-Kernel: pip install 'qwenvl-ft[liger]'") from e
    if not hidden.is_cuda:
        raise RuntimeError(
            f"impl='liger' runs Triton kernels and needs a CUDA GPU (tensors are on {hidden.device}); "
            "use impl='chunked' elsewhere"
        )
    if hidden.shape[0] == 0:
        # Liger divides by the row count when sizing its chunks; an empty batch is a zero anyway.
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, bias, 1)
    if not hidden.requires_grad and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        # Liger computes every gradient only when its input requires one; a frozen trunk with a
        # trainable lm_head would otherwise get no weight gradient at all.
        hidden = hidden.detach().requires_grad_()
    # Positional: _input, weight, target, bias, ce_weight, ignore_index, lse_square_scale,
    # label_smoothing, reduction, softcap, return_z_loss, accum_dtype (fp32 like the chunked path).
    loss, *_ = LigerFusedLinearCrossEntropyFunction.apply(
        hidden, weight, targets, bias, None, IGNORE_INDEX, 0.0, 0.0, "sum", None, False, torch.float32
    )
    return loss


@contextmanager
def loss_in_head(
    head: torch.nn.Module,
    labels: torch.Tensor,
    num_items_in_batch=None,
    impl: Impl = "chunked",
    shifted: bool = False,
):
    """Within the block, the model's lm_head returns the loss (shaped (1, 1, 1)) in place of logits.

    The model's own forward still runs end to end, so DeepSpeed ZeRO-3 and FSDP gather lm_head's
    weight exactly as usual (its forward is called as a module); only what that forward computes
    changes. Every `nn.Linear` in `head` is patched, so PEFT's modules_to_save copy works too.
    """
    if any(hasattr(m, "lora_A") for m in head.modules()):
        raise ValueError(
            "train.loss: chunked computes the loss inside a plain lm_head, but lm_head carries LoRA; "
            "set train.loss: standard"
        )
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]

    def fused(linear: torch.nn.Linear):
        def forward(hidden: torch.Tensor) -> torch.Tensor:
            loss = causal_lm_loss_from_hidden(
                hidden, linear.weight, labels, linear.bias, num_items_in_batch, impl=impl, shifted=shifted
            )
            return loss.view(1, 1, 1)

        return forward

    for linear in linears:
        linear.forward = fused(linear)
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward  # back to nn.Linear.forward
