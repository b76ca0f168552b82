"""DPO against independent computations: the loss and the answer log-probs on a tiny batch equal a
hand computation from a plain forward per row; with LoRA the reference log-probs are the base
model's (loaded separately), and differ from the adapted policy's."""

from __future__ import annotations

import math

import pytest
import torch
from family_facts import by_architecture

from qwenvl_ft.config import DatasetSpec
from qwenvl_ft.config.schema import DPOConfig
from qwenvl_ft.data.pairs import PairCollator, PairSource, load_and_encode
from qwenvl_ft.data.synthetic_pairs import write_pair_set
from qwenvl_ft.models import FAMILIES, get_family
from qwenvl_ft.tiny import make_tiny
from qwenvl_ft.training.dpo import dpo_loss, reference_logps, vision_once
from qwenvl_ft.training.logprobs import sequence_logps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two different tiny Qwen3-VL models (policy, reference), their processor and a batch of 3 pairs."""
    root = tmp_path_factory.mktemp("dpo")
    family = get_family("qwen3_vl")
    for name, seed in (("policy", 0), ("reference", 1)):
        make_tiny(family, root / name, real_vocab=False, seed=seed, min_pixels=9216, max_pixels=9216)
    path = write_pair_set(root / "pairs", 3, seed=5)
    processor = family.load_processor(str(root / "policy"))
    source = PairSource(DatasetSpec(path=str(path)))
    encoded = [load_and_encode(source.pair(i), processor) for i in range(len(source))]
    batch = PairCollator(processor.tokenizer.pad_token_id)(encoded)  # padded rows: chosen, then rejected
    models = {
        n: family.load_model(str(root / n), dtype=torch.float32).eval() for n in ("policy", "reference")
    }
    return family, root, batch, models, encoded


def hand_logps(model, batch) -> list[float]:
    """Each row alone, unpadded, through a plain forward; sum log_softmax at the supervised targets."""
    out = []
    n_pairs = batch["input_ids"].shape[0] // 2
    per_image = (
        batch["pixel_values"].shape[0] // batch["image_grid_thw"].shape[0]
    )  # one image per row, one size
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        pair = row % n_pairs
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"][row : row + 1, :n],
                attention_mask=batch["attention_mask"][row : row + 1, :n],
                mm_token_type_ids=batch["mm_token_type_ids"][row : row + 1, :n],
                pixel_values=batch["pixel_values"][pair * per_image : (pair + 1) * per_image],
                image_grid_thw=batch["image_grid_thw"][pair : pair + 1],
            ).logits[0]
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        labels = batch["labels"][row, :n]
        total = 0.0
        for t in range(1, n):
            if labels[t] != -100:
                total += logprobs[t - 1, labels[t]].item()  # position t-1 predicts token t
        out.append(total)
    return out


def test_sequence_logps_match_a_plain_forward_per_row(setup):
    _, _, batch, models, encoded = setup
    got, counts = sequence_logps(models["policy"], batch)
    want = hand_logps(models["policy"], batch)
    assert got.tolist() == pytest.approx(want, rel=1e-4, abs=1e-4)
    answers = [len([x for x in e.chosen_labels if x != -100]) for e in encoded]
    answers += [len([x for x in e.rejected_labels if x != -100]) for e in encoded]
    assert counts.tolist() == answers


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_hand_computation(setup, loss_type):
    _, _, batch, models, _ = setup
    cfg = DPOConfig(beta=0.3, loss_type=loss_type, sft_weight=0.5)
    policy, counts = sequence_logps(models["policy"], batch)
    reference = reference_logps(models["policy"], models["reference"], batch)
    loss, metrics = dpo_loss(policy, reference, counts, cfg)

    pol, ref = hand_logps(models["policy"], batch), hand_logps(models["reference"], batch)
    n = counts.tolist()
    b = len(pol) // 2
    losses, rewards = [], []
    for i in range(b):
        rc, rr = pol[i] - ref[i], pol[b + i] - ref[b + i]  # log-ratios of chosen and rejected
        if loss_type == "sigmoid":
            z = 0.3 * (rc - rr)
            dpo = math.log(1 + math.exp(-z))  # -log sigmoid(z)
        else:
            dpo = (rc / n[i] - rr / n[b + i] - 1 / (2 * 0.3)) ** 2
        losses.append(dpo + 0.5 * (-pol[i] / n[i]))
        rewards.append((0.3 * rc, 0.3 * rr))
    assert loss.item() == pytest.approx(sum(losses) / b, rel=1e-4)
    assert metrics["rewards/chosen"].tolist() == pytest.approx([r[0] for r in rewards], rel=1e-4, abs=1e-5)
    assert metrics["rewards/rejected"].tolist() == pytest.approx([r[1] for r in rewards], rel=1e-4, abs=1e-5)
    margins = [r[0] - r[1] for r in rewards]
    assert metrics["rewards/margins"].tolist() == pytest.approx(margins, rel=1e-4, abs=1e-5)
    assert metrics["rewards/accuracies"].tolist() == [float(m > 0) for m in margins]
    assert any(m != 0 for m in margins)  # the two models differ: the check is not 0 == 0


def test_lora_reference_is_the_base_model(setup):
    """The adapter switched off gives exactly the base model's log-probs (base loaded separately)."""
    from peft import LoraConfig, get_peft_model

    family, root, batch, _, _ = setup
    base = family.load_model(str(root / "policy"), dtype=torch.float32).eval()
    policy = get_peft_model(
        family.load_model(str(root / "policy"), dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_target_regex, modules_to_save=["lm_head"]),
    ).eval()
    with torch.no_grad():  # a trained adapter: LoRA B and the saved lm_head copy moved away from the base
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    positions: list[int] = []  # what reaches lm_head: the answer positions, not the prompt's (PEFT too)
    head = policy.get_base_model().lm_head
    hook = head.register_forward_pre_hook(lambda m, args: positions.append(args[0].shape[1]))
    adapted = sequence_logps(policy, batch)[0]
    hook.remove()
    first_answer = int((batch["labels"] != -100).float().argmax(dim=1).min())
    assert positions == [batch["labels"].shape[1] - first_answer + 1]
    reference = reference_logps(policy, None, batch)
    want = sequence_logps(base, batch)[0]
    assert reference.tolist() == pytest.approx(want.tolist(), rel=1e-5, abs=1e-5)
    assert (adapted - want).abs().max() > 1e-2  # the adapter does change them: the comparison can fail
    assert not reference.requires_grad


def test_the_vision_tower_runs_once_per_pair(setup):
    """vision_once: the tower sees each pair's image once, and the log-probs (and gradients) are unchanged."""
    family, _, batch, models, _ = setup
    model = models["policy"]
    visual = model.get_submodule(family.paths.vision)
    seen: list[int] = []
    # Inside the tower: its own pre-hook would see the call's arguments, before vision_once halves them.
    hook = visual.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        model.zero_grad()
        plain = sequence_logps(model, batch)[0]
        plain.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        with vision_once(visual):
            once = sequence_logps(model, batch)[0]
        once.sum().backward()
    finally:
        hook.remove()
    assert seen == [batch["pixel_values"].shape[0], batch["pixel_values"].shape[0] // 2]
    assert once.tolist() == pytest.approx(plain.tolist(), rel=1e-5, abs=1e-5)
    assert any(n.startswith(family.paths.vision) for n in grads)  # the tower's gradient is compared too
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
    assert "forward" not in vars(visual)  # the class's forward again after the block


@pytest.mark.parametrize("name", by_architecture(list(FAMILIES)))
def test_every_generation_gives_the_same_sequence_logps_with_the_vision_tower_once(tmp_path, name):
    """Per registered family: a pair batch's log-probs are the same whether the tower runs per row
    or once per pair (a tower without grids, the first generation's, runs per row either way)."""
    family = get_family(name)
    make_tiny(family, tmp_path / "m", real_vocab=False)
    processor = family.load_processor(str(tmp_path / "m"))
    source = PairSource(DatasetSpec(path=str(write_pair_set(tmp_path / "pairs", 2, seed=6))))
    encoded = [load_and_encode(source.pair(i), processor) for i in range(len(source))]
    batch = PairCollator(processor.tokenizer.pad_token_id)(encoded)
    model = family.load_model(str(tmp_path / "m"), dtype=torch.float32).eval()
    with torch.no_grad():
        plain = sequence_logps(model, batch)[0]
        with vision_once(model.get_submodule(family.paths.vision)):
            once = sequence_logps(model, batch)[0]
    assert once.tolist() == pytest.approx(plain.tolist(), rel=1e-5, abs=1e-5)
    assert torch.isfinite(plain).all() and (plain < 0).all()
