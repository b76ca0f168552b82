"""Chunked linear cross-entropy: loss and gradients equal F.cross_entropy / transformers'
ForCausalLMLoss on full logits, and the (N x V) logits are never allocated."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from qwenvl_ft.training.loss import causal_lm_loss_from_hidden, linear_cross_entropy

CHUNK = 64
V, H = 2000, 32


def assert_close(got: torch.Tensor | None, want: torch.Tensor | None, rel: float) -> None:
    """Max abs difference within `rel` of the reference's largest entry (elementwise rtol is
    meaningless for bf16 gradients whose entries span orders of magnitude)."""
    assert (got is None) == (want is None)
    if want is None:
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().max().item() if want.numel() else 0.0
    err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
    assert err <= rel * scale + 1e-12, f"max error {err:.3g} vs scale {scale:.3g}"


def make(n: int, dtype: torch.dtype, trainable: tuple[str, ...], with_bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g).to(dtype).requires_grad_("hidden" in trainable)
    # Scaled so the softmax is neither uniform nor one-hot: gradients are then non-trivial.
    weight = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_("weight" in trainable)
    bias = (torch.randn(V, generator=g)).to(dtype).requires_grad_("bias" in trainable) if with_bias else None
    targets = torch.randint(0, V, (n,), generator=g)
    return hidden, weight, bias, targets


def grads(loss: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    wanted = [t for t in tensors if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(loss, wanted))
    return [next(got) if t is not None and t.requires_grad else None for t in tensors]


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trainable", [("hidden",), ("hidden", "weight", "bias"), ("weight", "bias")])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_matches_full_logits(n, dtype, trainable, with_bias):
    hidden, weight, bias, targets = make(n, dtype, trainable, with_bias)
    # The reference: nn.Linear-style logits in the input dtype, softmax in fp32 (as transformers does).
    want = F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")
    got = linear_cross_entropy(hidden, weight, targets, bias, chunk_size=CHUNK)

    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Scaled upstream gradient: backward must multiply by grad_output, not assume 1.
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    for g, w in zip(
        grads(got * 0.37, hidden, weight, bias), grads(want * 0.37, hidden, weight, bias), strict=True
    ):
        assert_close(g, w, rel)


def test_zero_rows_give_zero_loss_with_gradient():
    hidden, weight, bias, targets = make(0, torch.float32, ("hidden", "weight", "bias"), True)
    loss = linear_cross_entropy(hidden, weight, targets, bias, chunk_size=CHUNK)
    assert loss.item() == 0.0 and loss.requires_grad
    gh, gw, gb = grads(loss, hidden, weight, bias)
    assert gh.shape == (0, H) and not gw.any() and not gb.any()


def test_autocast_matches_linear_under_autocast():
    hidden, weight, bias, targets = make(3 * CHUNK + 5, torch.float32, ("hidden", "weight"), True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")
        got = linear_cross_entropy(hidden, weight, targets, bias, chunk_size=CHUNK)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(grads(got, hidden, weight), grads(want, hidden, weight), strict=True):
        assert g.dtype == torch.float32  # gradients come back in the parameters' dtype
        assert_close(g, w, 2e-2)


def labels_with_gaps(b: int, length: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[0, :5] = -100  # a prompt run
    labels[0, 9:12] = -100  # a run in the middle (an image, say)
    labels[1, :] = -100  # a row with nothing supervised
    labels[2, -3:] = -100  # padding at the end
    return labels


@pytest.mark.parametrize("num_items", [None, 23, "tensor"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_causal_lm_loss_matches_transformers(num_items, with_bias):
    b, length, vocab = 3, 17, 1200
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(H, vocab, bias=with_bias)
    hidden = torch.randn(b, length, H, requires_grad=True)
    labels = labels_with_gaps(b, length, vocab)
    n = torch.tensor(23) if num_items == "tensor" else num_items

    want = ForCausalLMLoss(lm_head(hidden), labels, vocab_size=vocab, num_items_in_batch=n)
    params = [hidden, *lm_head.parameters()]
    want_grads = torch.autograd.grad(want, params)
    got = causal_lm_loss_from_hidden(hidden, lm_head.weight, labels, lm_head.bias, n, chunk_size=8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(torch.autograd.grad(got, params), want_grads, strict=True):
        assert_close(g, w, 1e-5)


def test_causal_lm_loss_with_nothing_supervised_is_zero_not_nan():
    lm_head = torch.nn.Linear(H, 50, bias=False)
    hidden = torch.randn(2, 6, H, requires_grad=True)
    labels = torch.full((2, 6), -100)
    labels[:, 0] = 3  # the first position is never a target after the shift
    loss = causal_lm_loss_from_hidden(hidden, lm_head.weight, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert hidden.grad is not None and not hidden.grad.any()
    assert lm_head.weight.grad is not None and not lm_head.weight.grad.any()


def test_no_saved_tensor_holds_the_full_logits():
    n, vocab = 512, 4000
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, H, generator=g, requires_grad=True)
    weight = torch.randn(vocab, H, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (n,), generator=g)

    def largest_saved(fn) -> int:
        sizes = [0]

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn().backward()
        return max(sizes)

    # The check can fail: the plain path saves (N x V) tensors for backward.
    assert largest_saved(lambda: F.cross_entropy(hidden @ weight.T, targets, reduction="sum")) >= n * vocab
    assert largest_saved(lambda: linear_cross_entropy(hidden, weight, targets, chunk_size=CHUNK)) < n * vocab


def peak_cpu_bytes(fn, tmp_path) -> int:
    """Peak bytes allocated on CPU while fn() runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    live = peak = 0
    # Frees are negative; tensors made before profiling and freed inside only lower the running sum.
    for e in sorted(events, key=lambda e: e["ts"]):
        live += e["args"]["Bytes"]
        peak = max(peak, live)
    return peak


def test_peak_memory_stays_below_the_full_logits(tmp_path):
    n, vocab, chunk = 2048, 32000, 256  # fp32 logits: 2048 * 32000 * 4 B = 250 MiB
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, H, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, H, generator=g) * 0.1).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    logits_bytes = n * vocab * 4

    def chunked():
        linear_cross_entropy(hidden, weight, targets, chunk_size=chunk).backward()

    def full():
        F.cross_entropy(hidden @ weight.T, targets, reduction="sum").backward()

    # The measurement must see the full logits where they exist, or it proves nothing.
    assert peak_cpu_bytes(full, tmp_path) >= logits_bytes
    # One fp32 chunk of logits (31 MiB) plus grad_weight and grad_hidden (4.2 MiB), twice for slack.
    budget = chunk * vocab * 4 + 2 * (vocab * H * 4 + n * H * 4)
    assert peak_cpu_bytes(chunked, tmp_path) <= budget < logits_bytes // 5


def test_liger_errors_are_clear(monkeypatch):
    hidden, weight, bias, targets = make(4, torch.float32, ("hidden",), False)
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'qwenvl-ft\[liger\]'"):
        linear_cross_entropy(hidden, weight, targets, impl="liger")

    fake = types.ModuleType("liger_kernel.ops.fused_linear_cross_entropy")
    fake.LigerFusedLinearCrossEntropyFunction = object
    for name in ("liger_kernel", "liger_kernel.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        linear_cross_entropy(hidden, weight, targets, impl="liger")
    with pytest.raises(ValueError, match="impl"):
        linear_cross_entropy(hidden, weight, targets, impl="triton")


def cuda_case(n: int, dtype: torch.dtype, with_bias: bool):
    hidden, weight, bias, targets = make(n, dtype, ("hidden", "weight", "bias"), with_bias)
    return [
        None if t is None else t.detach().cuda().requires_grad_(t.requires_grad)
        for t in (hidden, weight, bias, targets)
    ]


def check_against_full_logits(impl: str, n: int, dtype: torch.dtype, with_bias: bool) -> None:
    hidden, weight, bias, targets = cuda_case(n, dtype, with_bias)
    want = F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")
    got = linear_cross_entropy(hidden, weight, targets, bias, chunk_size=CHUNK, impl=impl)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    rel = 1e-4 if dtype == torch.float32 else 2e-2
    for g, w in zip(
        grads(got * 0.37, hidden, weight, bias), grads(want * 0.37, hidden, weight, bias), strict=True
    ):
        assert_close(g, w, rel)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [0, 3 * CHUNK + 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_on_cuda_matches_full_logits(n, dtype, with_bias):
    # bf16 on CUDA takes the tensor-core addmm(out_dtype=fp32) path for grad_weight.
    check_against_full_logits("chunked", n, dtype, with_bias)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [0, 3 * CHUNK + 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_liger_matches_full_logits(n, dtype, with_bias):
    pytest.importorskip("liger_kernel", reason="pip install 'qwenvl-ft[liger]'")
    check_against_full_logits("liger", n, dtype, with_bias)
