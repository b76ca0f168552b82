"""GRPO's pieces against hand-worked values: group advantages, the clipped loss with its KL term and
clip ratio, the answer mask, the repeated sampler; the prompt data check's errors by file:line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from family_facts import by_architecture, registered

from qwenvl_ft.config import load_recipe
from qwenvl_ft.config.schema import ConfigError, DatasetSpec
from qwenvl_ft.training.grpo import RepeatBlocks, completion_mask, group_advantages, grpo_loss
from qwenvl_ft.training.methods import check_honoured, get_method


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.4])
    # group 1: mean 0.5, std (n - 1) sqrt(0.5) = 0.70711; group 2: no spread; group 3: mean 0.3, std 0.14142
    got = group_advantages(rewards, 2)
    want = [
        0.5 / (0.70711 + 1e-4),
        -0.5 / (0.70711 + 1e-4),
        0.0,
        0.0,
        -0.1 / (0.14142 + 1e-4),
        0.1 / (0.14142 + 1e-4),
    ]
    assert got.tolist() == pytest.approx(want, rel=1e-4)
    assert group_advantages(rewards, 2, scale="none").tolist() == pytest.approx([0.5, -0.5, 0, 0, -0.1, 0.1])
    # batch: the same centred rewards over the std of all six, sqrt(0.57333 / 5) = 0.33863
    centred = [0.5, -0.5, 0.0, 0.0, -0.1, 0.1]
    got = group_advantages(rewards, 2, scale="batch").tolist()
    assert got == pytest.approx([c / (0.338625 + 1e-4) for c in centred], rel=1e-4)
    with pytest.raises(ValueError, match="unknown scale_rewards"):
        group_advantages(rewards, 2, scale="sometimes")
    # groups of 3: (1, 0, 0.5) and (0.5, 0.2, 0.4)
    assert group_advantages(rewards, 3, scale="none").tolist() == pytest.approx(
        [0.5, -0.5, 0.0, 0.5 - 1.1 / 3, 0.2 - 1.1 / 3, 0.4 - 1.1 / 3]
    )


def loss_case():
    """Two answers of two tokens; the second answer's second token is padding.

    ratios: answer 1 (1.5, 0.9) with advantage +1; answer 2 (0.5, 2.0) with advantage -1; epsilon 0.2.
    Per token -min(r A, clip(r) A): 1.5 -> -1.2 (clipped), 0.9 -> -0.9, 0.5 with A < 0 -> +0.8 (clipped).
    """
    old = torch.zeros(2, 2)
    logps = torch.log(torch.tensor([[1.5, 0.9], [0.5, 2.0]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    return logps, old, torch.tensor([1.0, -1.0]), mask


@pytest.mark.parametrize(
    ("loss_type", "want"),
    [
        ("bnpo", (-1.2 - 0.9 + 0.8) / 3),  # mean over the 3 answer tokens
        ("grpo", ((-1.2 - 0.9) / 2 + 0.8) / 2),  # mean per answer, then over answers
        ("dr_grpo", (-1.2 - 0.9 + 0.8) / (2 * 4)),  # sum / (answers x max_new_tokens 4)
    ],
)
def test_clipped_loss_by_hand(loss_type, want):
    logps, old, adv, mask = loss_case()
    loss, stats = grpo_loss(logps, old, adv, mask, 0.2, 0.2, loss_type=loss_type, max_new_tokens=4)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert stats["clip_ratio"] == pytest.approx(2 / 3)  # tokens 1.5 (A > 0) and 0.5 (A < 0) are cut
    assert "kl" not in stats


def test_kl_term_and_clip_higher_by_hand():
    logps, old, adv, mask = loss_case()
    ref = torch.zeros(2, 2)  # the reference gives each token probability ratio 1 to `old`
    # k3 = exp(ref - logp) - (ref - logp) - 1 per token: r = 1.5 -> 1/1.5 + ln 1.5 - 1, and so on.
    k3 = [1 / r + math.log(r) - 1 for r in (1.5, 0.9, 0.5)]
    # epsilon_high 0.6: 1.5 is no longer clipped (-1.5); the low side stays 0.8.
    want = (-1.5 - 0.9 + 0.8 + 0.1 * sum(k3)) / 3
    loss, stats = grpo_loss(logps, old, adv, mask, 0.2, 0.6, beta=0.1, ref_logps=ref)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert stats["kl"] == pytest.approx(sum(k3) / 3, rel=1e-6)
    assert stats["clip_ratio"] == pytest.approx(1 / 3)


def test_loss_gradient_is_the_advantage_at_ratio_one():
    # On-policy (num_iterations 1) the ratio is 1 and d loss / d logp = -A / tokens for every token.
    logps = torch.zeros(2, 2, requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), torch.tensor([2.0, -1.0]), torch.ones(2, 2), 0.2, 0.2)
    loss.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.25, 0.25])


def test_completion_mask_keeps_the_stop_token():
    completion = torch.tensor([[5, 9, 9, 9], [5, 6, 7, 8], [7, 1, 5, 9]])
    assert completion_mask(completion, [9, 1]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_repeat_blocks_returns_each_block_num_iterations_times():
    order = list(RepeatBlocks(6, block=2, repeats=3, seed=0))
    assert len(order) == 18 and sorted(set(order)) == list(range(6))
    blocks = [order[i : i + 2] for i in range(0, 18, 2)]
    for k in range(0, 9, 3):
        assert blocks[k] == blocks[k + 1] == blocks[k + 2]


def test_grpo_config_is_checked(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: m}\ndata: {train: [{path: d.jsonl}]}\ntrain: {method: grpo}\n")
    cfg = load_recipe(recipe)
    assert [r.name for r in cfg.grpo.rewards] == ["grounding_iou"] and cfg.grpo.num_generations == 8
    with pytest.raises(ConfigError, match="'grpo.num_generations' must be at least 2"):
        load_recipe(recipe, ["grpo.num_generations=1"])
    with pytest.raises(ConfigError, match="'train.method: grpo' does not use 'data.packing'"):
        check_honoured(get_method("grpo"), load_recipe(recipe, ["data.packing=true"]))
    with pytest.raises(ConfigError, match="unknown key 'grpo.group'"):
        load_recipe(recipe, ["grpo.group=4"])


# -- the prompt data check -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grounding_data(tmp_path_factory):
    from qwenvl_ft.data.synthetic import write_grounding_set

    root = tmp_path_factory.mktemp("grpo-data")
    path = write_grounding_set(root, 4, seed=0)
    lines = path.read_text().splitlines()
    # Line 2: the answer is text, no box; line 4: a long question.
    second = json.loads(lines[1])
    second["messages"][1]["content"] = "top left"
    second["objects"] = {"ref": [], "bbox": []}
    lines[1] = json.dumps(second)
    fourth = json.loads(lines[3])
    fourth["messages"][0]["content"] = "<image>" + "Where is it? " * 15
    lines[3] = json.dumps(fourth)
    path.write_text("\n".join(lines) + "\n")
    return path


def check(tiny_model, path, *overrides):
    from qwenvl_ft.data.checking import check_datasets
    from qwenvl_ft.models import get_family
    from qwenvl_ft.training.grpo_data import prompt_rules

    model = tiny_model("qwen3_vl")
    recipe = model / "r.yaml"
    recipe.write_text(
        f"model: {{path: {model}}}\ndata: {{train: [{{path: {path}}}]}}\ntrain: {{method: grpo}}\n"
    )
    cfg = load_recipe(recipe, list(overrides))
    processor = get_family("qwen3_vl").load_processor(str(model))
    _, report = check_datasets(prompt_rules(cfg), cfg.data.train, processor, progress=False)
    return report, processor


def test_prompt_check_names_each_bad_sample_by_file_and_line(tiny_model, grounding_data):
    report, processor = check(tiny_model, grounding_data, "data.max_length=200", "grpo.max_new_tokens=120")
    where = str(grounding_data)
    assert [(p.where, p.message[:40]) for p in report.errors] == [
        (f"{where}:2 (id s0-1)", "the reference answer (the last assistant")
    ]
    assert "grounding_iou" in report.errors[0].message
    assert [p.where for p in report.dropped] == [f"{where}:4 (id s0-3)"]
    assert "+ grpo.max_new_tokens 120 > max_length 200" in report.dropped[0].message
    assert [p.index for p in report.plan] == [0, 2]
    # The planned length is the prompt's as inference encodes it, from the decoded image.
    from qwenvl_ft.data.sources import Source
    from qwenvl_ft.training.grpo_data import PromptDataset

    source = Source(DatasetSpec(path=str(grounding_data)))
    dataset = PromptDataset([source], report.plan, np.arange(len(report.plan)), processor, thinking=None)
    assert [len(dataset[k]["prompt"].input_ids) for k in range(2)] == [p.length for p in report.plan]
    assert dataset[0]["sample"]["reference_boxes"] and dataset[0]["sample"]["where"] == f"{where}:1 (id s0-0)"


def test_prompt_check_without_grounding_reward_accepts_text_answers(tiny_model, grounding_data):
    report, _ = check(
        tiny_model,
        grounding_data,
        "data.max_length=200",
        "grpo.max_new_tokens=32",
        "grpo.rewards=[{name: exact_match}]",
    )
    assert not report.errors and [p.index for p in report.plan] == [0, 1, 2, 3]


# -- the training forward sees what sampling saw ----------------------------------------------------


def grounding_prompts(name, tiny_model, grounding_data):
    """(tiny model, its Predictor, two encoded prompts): lines 1 and 4 (a much longer question)."""
    from qwenvl_ft.data.images import load_image
    from qwenvl_ft.data.prompts import split_reference
    from qwenvl_ft.data.sources import Source
    from qwenvl_ft.infer import Predictor
    from qwenvl_ft.models import get_family

    family = get_family(name)
    path = tiny_model(name)
    model = family.load_model(str(path), dtype=torch.float32).eval()
    predictor = Predictor(model, family.load_processor(str(path)), family)
    source = Source(DatasetSpec(path=str(grounding_data)))
    prompts = []
    for i in (0, 3):
        prompt, _ = split_reference(source.conversation(i))
        images = [load_image(s.value) for t in prompt.turns for s in t.segments if s.kind == "image"]
        prompts.append(predictor.prompt(prompt, images))
    return model, predictor, prompts


@pytest.mark.parametrize("name", by_architecture(registered()))
def test_answer_log_probs_equal_the_sampling_distribution(name, tiny_model, grounding_data):
    """Prompts of different lengths (left-padded) sampled with generate(); the loss's forward over
    prompt + answer must give each answer token the log-probability generation sampled it from
    (raw logits / temperature): positions (mRoPE, 1-D), padding and visual tokens all agree."""
    from qwenvl_ft.training.logprobs import token_logps

    model, predictor, prompts = grounding_prompts(name, tiny_model, grounding_data)
    batch = predictor.batch(prompts)
    torch.manual_seed(0)
    out = model.generate(
        **batch, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=6, min_new_tokens=6,
        output_logits=True, return_dict_in_generate=True, pad_token_id=predictor.processor.tokenizer.pad_token_id,
    )  # fmt: skip
    completion = out.sequences[:, batch["input_ids"].shape[1] :]
    sampled = torch.stack(out.logits, dim=1).float().div(0.7).log_softmax(-1)
    want = sampled.gather(-1, completion[..., None])[..., 0]
    inputs = {
        "input_ids": torch.cat([batch["input_ids"], completion], 1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(completion)], 1),
        "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], 1),
        **{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")},
    }
    with torch.no_grad():
        got = token_logps(model, inputs, completion, temperature=0.7)
    assert got.shape == (2, 6)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", by_architecture(registered()))
def test_the_vision_tower_runs_once_per_prompt(name, tiny_model, grounding_data):
    """A rollout repeats each prompt's image once per sampled answer; within vision_once(..., "each")
    the tower sees each image once, and the answers' log-probs are those of a tower run per row
    (the first generation's tower, without grids, runs per row either way)."""
    from qwenvl_ft.models import get_family
    from qwenvl_ft.training.logprobs import token_logps
    from qwenvl_ft.training.vision_once import vision_once

    family = get_family(name)
    model, predictor, prompts = grounding_prompts(name, tiny_model, grounding_data)
    batch = predictor.batch([p for p in prompts for _ in range(3)])  # each prompt once per answer
    completion = torch.randint(100, 1000, (6, 5), generator=torch.Generator().manual_seed(0))
    inputs = dict(batch)
    inputs["input_ids"] = torch.cat([batch["input_ids"], completion], 1)
    inputs["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(completion)], 1)
    inputs["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], 1)
    visual = model.get_submodule(family.paths.vision)
    seen: list[int] = []
    per_row = visual.forward

    def counting(pixel_values, *args, **kwargs):
        seen.append(pixel_values.shape[0])
        return per_row(pixel_values, *args, **kwargs)

    visual.forward = counting
    with torch.no_grad():
        plain = token_logps(model, inputs, completion)
        with vision_once(visual, 3, "each"):
            once = token_logps(model, inputs, completion)
    assert "forward" not in vars(visual)  # the class's forward again
    rows = batch["pixel_values"].shape[0]
    assert seen == ([rows, rows] if family.vision.fixed_size else [rows, rows // 3])
    torch.testing.assert_close(once, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_use_vllm_is_refused_on_cpu():
    from qwenvl_ft.config.schema import GRPOConfig
    from qwenvl_ft.training.grpo import check_vllm

    check_vllm(GRPOConfig())  # off: nothing to check
    with pytest.raises(RuntimeError, match="'grpo.use_vllm: true' needs a CUDA GPU"):
        check_vllm(GRPOConfig(use_vllm=True))
