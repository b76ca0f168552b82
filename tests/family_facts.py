"""Hand-worked expectations per model family, keyed by registry name (`qwenvl_ft.models.FAMILIES`).

Per-family tests are parametrized over the registry (`registered()`), never over a list of names,
and take what they expect from here. Every value was worked out by hand or copied from what the
Qwen team publishes (tokenizer.json, model cards, the official chat template), never computed with
our code: the comments say how. A registered family without an entry, or with fields left unset,
fails tests/unit/models/test_family_facts.py, naming the family and the fields; a test that needs
an unset field fails with the same message (`need`).

A new generation: add its `FamilyFacts` below, each field worked out the way its comment says.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import pytest


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""A field nobody has worked out yet: reported by test_family_facts.py, never compared against."""

BOX = (48, 50, 107, 109)
"""The box of the box-text tests, in pixels of a 160x120 image ('red square' is its referring text)."""


@dataclass(frozen=True)
class Budget:
    """One image size and the visual tokens it costs (test_budget_and_boxes.py), by hand."""

    width: int
    height: int
    max_pixels: int | None
    """None: the family's published max_pixels."""
    resized: tuple[int, int]
    """(height, width) after the processor's resize."""
    tokens: int


@dataclass(frozen=True)
class Learning:
    """How tests/e2e/test_learning.py trains the family on the synthetic grounding task."""

    recipe: str
    overrides: tuple[str, ...] = ()
    """Recipe overrides beyond the model, data and output paths."""
    tiny: dict = field(default_factory=dict)
    """make_tiny keyword arguments beyond the stand-in vision tower."""
    slow: bool = False
    """Minutes on 2 cores: run only with --run-slow."""


@dataclass(frozen=True)
class VideoClip:
    """test_video_encode.py's clip (3 s at 10 fps, 64x48; 2 fps sampling keeps 6 of its 30 frames),
    worked out by hand from qwen-vl-utils' rules."""

    size: tuple[int, int]
    """(height, width) every frame is resized to."""
    grid: tuple[int, int, int]
    """video_grid_thw: (temporal patches, height patches, width patches)."""
    text: str
    """The prompt text from the video's first token through the user's 'What moves?'."""
    second_per_grid_ts: tuple[float, ...] | None
    """Seconds per temporal patch where the family puts time into rotary positions, else None."""


@dataclass(frozen=True)
class FamilyFacts:
    """What the per-family tests expect of one generation. Every field must be set (not UNSET)."""

    budgets: tuple[Budget, ...] = UNSET
    """Image sizes and their hand-computed resize and token count (smart_resize by hand)."""
    ref_text: str = UNSET
    """format_ref('red square'): the family's referring-expression text."""
    box_text: str = UNSET
    """format_box(BOX) on a 160x120 image, by hand in the family's coordinates."""
    grounding_sep: str = UNSET
    """Text between the referring expression and the box in a natural grounding answer."""
    special_ids: dict[str, int] = UNSET
    """Special tokens at the ids the published tokenizer gives them (tokenizer.json)."""
    two_turn_text: str = UNSET
    """The rendered text of test_encode.py's two-turn conversation (a 56x56 image, 'What is this?' /
    'A red square.' / 'Sure?' / 'Yes'), written by hand from the official template."""
    two_turn_grid: tuple[int, int, int] | None = UNSET
    """image_grid_thw of that 56x56 image (None: the family has no grid)."""
    two_turn_supervised: tuple[str, ...] = UNSET
    """The supervised tokens of that conversation, decoded one by one, in order."""
    template_text: str = UNSET
    """The saved chat template on [image, 'Hi'] -> 'Hello' (apply_chat_template), by hand."""
    first_decoder_layer: str = UNSET
    """Module name of the first decoder layer: dummy vision calls must come before it (keepalive)."""
    vision_input: str = UNSET
    """The vision-tower module that first sees the pixels, under `paths.vision` (frozen-vision test)."""
    standin_vision: bool = UNSET
    """The family defines a stand-in vision tower (make-tiny --standin-vision)."""
    published_totals: dict[str, float] = UNSET
    """Parameter totals of its published configs (models/published/<stem>.json), from the model cards."""
    e2e_module: str | None = UNSET
    """A module of tests/e2e that trains and merges this family end to end in its own way, instead of
    test_train.py / test_merge.py (None: those two run it)."""
    slow_e2e: frozenset[str] = UNSET
    """E2e checks that run for this family only under --run-slow, because a family of the same
    architecture runs them in the fast suite: "packed_run" (test_train.py, packed vs padded run),
    "video" (test_train_video.py), "merge" (test_merge.py), "train" (test_train.py's full and LoRA
    runs), "sequence_parallel" (test_sequence_parallel.py; left out, not marked slow: one run holds
    every family). A new generation leaves this empty: it runs everything."""
    learning: Learning | None = UNSET
    """The learning test's setup (None: the family has no stand-in vision tower to learn with)."""
    video_clip: VideoClip | None = UNSET
    """The video test's clip by hand (None: the family takes no video)."""


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
_TWO_TURN_TAIL = (
    "What is this?<|im_end|>\n"
    "<|im_start|>assistant\nA red square.<|im_end|>\n"
    "<|im_start|>user\nSure?<|im_end|>\n"
    "<|im_start|>assistant\nYes<|im_end|>\n"
)
_SUPERVISED = ("A", " red", " square", ".", "<|im_end|>", "Yes", "<|im_end|>")
_CHATML_TEMPLATE = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
    "<|im_start|>assistant\nHello<|im_end|>\n"
)
# Box BOX on a 160x120 image. In [0, 1000): 48/160 -> 300, 50/120 -> 416.7 -> 417,
# 107/160 -> 668.75 -> 669, 109/120 -> 908.3 -> 908. Qwen2.5-VL resizes 160x120 to 168x112:
# 48*168/160 = 50.4 -> 50, 50*112/120 = 46.7 -> 47, 107*1.05 = 112.35 -> 112, 109*112/120 = 101.7 -> 102.
_QWEN2_REF = "<|object_ref_start|>red square<|object_ref_end|>"
# Qwen2-VL ids (tokenizer.json of Qwen/Qwen2-VL-7B-Instruct).
_QWEN2_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|box_start|>": 151648,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
# Qwen3-VL 160x120 (factor 32): 128x160 = 20480 < 65536, scale 1.8475: ceil(6.93)=7 -> 224,
# ceil(9.24)=10 -> 320; 70 tokens. 56x56: 64x64 = 4096 < 65536, scale 256/56: 8 -> 256x256, 64 tokens.
_QWEN3_BUDGETS = (Budget(160, 120, None, (224, 320), 70), Budget(56, 56, None, (256, 256), 64))
_QWEN3_TWO_TURN = (
    "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 64 + "<|vision_end|>" + _TWO_TURN_TAIL
)
# Qwen3-VL and Qwen3-VL-MoE ship the same tokenizer (Qwen/Qwen3-VL-*-Instruct tokenizer.json).
# 64x48 is far under the video floor 128*28*28 = 100352 px: scale by sqrt(100352 / 3072) = 5.7155,
# ceil to multiples of 28: h = ceil(48 * 5.7155 / 28) * 28 = 280, w = ceil(64 * 5.7155 / 28) * 28 = 392.
# 20 x 28 patches merge 2x2 into 140 tokens per temporal patch; 6 frames make 3 temporal patches.
_QWEN2_VIDEO = VideoClip(
    (280, 392), (3, 20, 28), "<|vision_start|>" + "<|video_pad|>" * 420 + "<|vision_end|>What moves?", None
)
# Qwen3-VL: floor 128*32*32 = 131072, factor 32: sqrt(131072 / 3072) = 6.532 -> 320 x 448, 20 x 28
# patches of 16 px. Time as text before each temporal patch: the mean of its two frames at 10 fps
# (0+6)/2/10 = 0.3, (12+17)/2/10 = 1.45 -> '1.4' (1.45 is 1.4499... in binary), (23+29)/2/10 = 2.6.
_PER = "<|video_pad|>" * 140
_QWEN3_VIDEO = VideoClip(
    (320, 448),
    (3, 20, 28),
    "<|vision_start|>"
    f"<0.3 seconds><|vision_start|>{_PER}<|vision_end|>"
    f"<1.4 seconds><|vision_start|>{_PER}<|vision_end|>"
    f"<2.6 seconds><|vision_start|>{_PER}<|vision_end|>"
    "<|vision_end|>What moves?",
    None,
)
_QWEN3_IDS = {"<|image_pad|>": 151655, "<tool_response>": 151665, "<think>": 151667, "</think>": 151668}
_QWEN3_LEARNING = Learning(
    "recipes/tiny/qwen3_vl_grounding.yaml", tiny={"min_pixels": 9216, "max_pixels": 9216}
)

QWEN2_VL = FamilyFacts(
    # 160x120: round(120/28)=4 -> 112, round(160/28)=6 -> 168; (112/28)*(168/28) = 24 tokens.
    # 20x10: rounds to 28x28 = 784 < 3136, scale by sqrt(3136/200)=3.96: ceil(1.41)*28=56, ceil(2.83)*28=84.
    budgets=(Budget(160, 120, None, (112, 168), 24), Budget(20, 10, None, (56, 84), 6)),
    ref_text=_QWEN2_REF,
    box_text="<|box_start|>(300,417),(669,908)<|box_end|>",
    grounding_sep="",
    special_ids=_QWEN2_IDS,
    # 56x56 resizes to itself for 14-px patches: a 4x4 patch grid, merged 2x2 -> 4 image tokens.
    two_turn_text=SYSTEM
    + "<|im_start|>user\n<|vision_start|>"
    + "<|image_pad|>" * 4
    + "<|vision_end|>"
    + _TWO_TURN_TAIL,
    two_turn_grid=(1, 4, 4),
    two_turn_supervised=_SUPERVISED,
    template_text=SYSTEM + _CHATML_TEMPLATE,
    first_decoder_layer="model.language_model.layers.0",
    vision_input="patch_embed",
    standin_vision=False,
    published_totals={"qwen2_vl-7b": 8.29e9, "qwen2_vl-2b": 2.21e9},
    e2e_module=None,
    slow_e2e=frozenset({"packed_run", "merge"}),  # Qwen2.5-VL runs them on the same architecture
    learning=None,
    video_clip=_QWEN2_VIDEO,
)

QWEN3_VL = FamilyFacts(
    budgets=_QWEN3_BUDGETS,
    ref_text="red square",
    box_text="[300, 417, 669, 908]",
    grounding_sep=": ",
    special_ids=_QWEN3_IDS,
    two_turn_text=_QWEN3_TWO_TURN,  # no default system prompt
    two_turn_grid=(1, 16, 16),
    two_turn_supervised=_SUPERVISED,
    template_text=_CHATML_TEMPLATE,
    first_decoder_layer="model.language_model.layers.0",
    vision_input="patch_embed",
    standin_vision=True,
    published_totals={"qwen3_vl-8b": 8.77e9, "qwen3_vl-4b": 4.44e9},
    e2e_module=None,
    slow_e2e=frozenset(),
    # The quickstart's model and recipe, unchanged.
    learning=Learning("recipes/tiny/qwen3_vl_grounding.yaml", tiny={"min_pixels": 9216, "max_pixels": 9216}),
    video_clip=_QWEN3_VIDEO,
)

# Qwen3.5: tokenizer.json of Qwen/Qwen3.5-* (several public copies agree): the BPE ends at 248043,
# then Qwen3-VL's 26 special tokens in the same order, then 7 audio / speech tokens (to 248076).
_QWEN3_5_IDS = {
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
    "<think>": 248068,
    "</think>": 248069,
    "<|audio_pad|>": 248076,
}
# The official Qwen3.5 template (models/qwen3_5/chat_template.jinja): no default system prompt; an
# assistant turn after the last user turn opens with its think block, empty when it has no reasoning;
# earlier assistant turns are written without one.
_QWEN3_5_THINK = "<think>\n\n</think>\n\n"
QWEN3_5 = replace(
    QWEN3_VL,  # the same budgets (patch 16, merge 2, 65536..16777216 px), boxes and module names
    special_ids=_QWEN3_5_IDS,
    two_turn_text=_QWEN3_TWO_TURN.replace("assistant\nYes", "assistant\n" + _QWEN3_5_THINK + "Yes"),
    template_text=_CHATML_TEMPLATE.replace("assistant\nHello", "assistant\n" + _QWEN3_5_THINK + "Hello"),
    # The stand-in BPE (no published vocabulary ships) learned no "Yes": two tokens. The empty think
    # block before it is prompt, as the official template writes it for every answer without reasoning.
    two_turn_supervised=("A", " red", " square", ".", "<|im_end|>", "Y", "es", "<|im_end|>"),
    # Meta-device totals without the mtp.* head transformers drops, by hand in test_qwen3_5.py; the
    # cards' 0.9B and 27.8B add it (20.5 M and 424.7 M; 9B: 243 M; 2B: 60.8 M; 4B: 120.6 M).
    published_totals={
        "qwen3_5-0.8b": 0.853e9,
        "qwen3_5-2b": 2.213e9,
        "qwen3_5-4b": 4.539e9,
        "qwen3_5-9b": 9.41e9,
        "qwen3_5-27b": 27.36e9,
    },
    slow_e2e=frozenset(),
    # The quickstart's recipe for twice the steps, evaluated with --thinking off (the answers trained
    # after the template's empty think block): held-out acc@0.5 1.000 (mIoU 0.996) against 0.000
    # untrained, in 17 min on one thread, the 248,320-row head dominating; 400 steps gave 0.406, and
    # evaluating with thinking on 0.000 (the model never learned to close a think block).
    learning=Learning(
        "recipes/tiny/qwen3_vl_grounding.yaml",
        ("train.max_steps=800",),
        tiny={"min_pixels": 9216, "max_pixels": 9216},
        slow=True,
    ),
)

# Qwen3.8's template (models/qwen3_8_chat_template.jinja, hash-checked against the published file):
# Qwen3.5's tokens, budgets and boxes; every assistant turn opens with its think block
# (preserve_thinking on by default); while thinking is on (the default) a system turn opens with the
# xhigh instruction. The two-turn conversation has no reasoning: rendered as with
# enable_thinking=false (no instruction), both answers after the empty block.
_QWEN3_8_XHIGH = (
    "<|im_start|>system\nReasoning effort is set to xhigh. Please think carefully through the task, validate "
    "key assumptions, consider plausible alternatives, and prioritize correctness, consistency, and "
    "clarity in the final answer.<|im_end|>\n"
)
QWEN3_8 = replace(
    QWEN3_5,
    two_turn_text=_QWEN3_TWO_TURN.replace("assistant\n", "assistant\n" + _QWEN3_5_THINK),
    template_text=_QWEN3_8_XHIGH
    + _CHATML_TEMPLATE.replace("assistant\nHello", "assistant\n" + _QWEN3_5_THINK + "Hello"),
    # Published as the same config as Qwen3.6-27B (identical key sets, second-hand): qwen3_5-27b.
    published_totals={"qwen3_5-27b": 27.36e9},
    e2e_module=None,
    # Qwen3.5's architecture, tiny builder and stand-in tower: its e2e runs cover these; the
    # template is what differs, and test_qwen3_8.py pins it token for token.
    slow_e2e=frozenset({"packed_run", "video", "merge", "train", "sequence_parallel"}),
    learning=None,  # the stand-in tower is Qwen3.5's; the learning test samples it there
)

FACTS: dict[str, FamilyFacts] = {
    "qwen_vl": FamilyFacts(
        budgets=(Budget(160, 120, None, (448, 448), 256),),  # always 448x448 and 256 tokens
        ref_text="<ref>red square</ref>",
        box_text="<box>(300,417),(669,908)</box>",
        grounding_sep="",
        special_ids={  # tokenization_qwen.py: endoftext, im_start, im_end, 205 extras, image tokens
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
        two_turn_text=SYSTEM
        + "<|im_start|>user\nPicture 1: <img>"
        + "<imgpad>" * 256
        + "</img>\n"
        + _TWO_TURN_TAIL,
        two_turn_grid=None,
        two_turn_supervised=_SUPERVISED,
        # The original template writes the image's path between the tags; a bare image has none.
        template_text=SYSTEM
        + "<|im_start|>user\nPicture 1: <img></img>\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
        first_decoder_layer="transformer.h.0",
        vision_input="conv1",
        standin_vision=True,
        published_totals={"qwen_vl": 9.6e9, "qwen_vl-int4": 9.6e9},
        e2e_module="test_qwen_vl.py",
        slow_e2e=frozenset(),
        # 112-px images (8x8 patches) and a 128-wide language model; full fine-tuning.
        learning=Learning(
            "recipes/tiny/qwen_vl_lora.yaml",
            (
                "train.mode=full",
                "train.freeze_merger=true",
                "train.learning_rate=1e-3",
                "train.lr_scheduler=constant_with_warmup",
                "train.max_steps=1000",
                "train.per_device_batch_size=16",
                "train.logging_steps=50",
                "train.save_steps=100000",
            ),
            tiny={
                "overrides": {
                    "hidden_size": 128,
                    "intermediate_size": 256,
                    "kv_channels": 32,
                    "visual.output_dim": 128,
                    "visual.image_size": 112,
                }
            },
            slow=True,
        ),
        video_clip=None,
    ),
    "qwen2_vl": QWEN2_VL,
    "qwen2_5_vl": replace(
        QWEN2_VL,
        # 1000x500 capped at 50176: beta = sqrt(500000/50176) = 3.157; floor(158.4/28)=5 -> 140,
        # floor(316.8/28)=11 -> 308; 5*11 = 55 tokens. 160x120 as Qwen2-VL.
        budgets=(Budget(160, 120, None, (112, 168), 24), Budget(1000, 500, 50176, (140, 308), 55)),
        box_text="<|box_start|>(50,47),(112,102)<|box_end|>",
        special_ids={**_QWEN2_IDS, "<tool_call>": 151657, "<|file_sep|>": 151664},
        published_totals={"qwen2_5_vl-7b": 8.29e9, "qwen2_5_vl-3b": 3.75e9},
        slow_e2e=frozenset(),
        # As Qwen2-VL; time goes into the rotary positions: one temporal patch of 2 frames at 2 fps is 1.0 s.
        video_clip=replace(_QWEN2_VIDEO, second_per_grid_ts=(1.0,)),
    ),
    "qwen3_vl": QWEN3_VL,
    # Qwen3-VL with sparse-expert MLPs: the same tokenizer, template, vision tower and boxes.
    "qwen3_vl_moe": replace(
        QWEN3_VL,
        # 30B-A3B: 31.07 B as a model listing quotes the Hub's count; 235B-A22B: "235 billion total
        # parameters" (vendor pages; no exact count found here).
        published_totals={"qwen3_vl_moe-30b-a3b": 31.07e9, "qwen3_vl_moe-235b-a22b": 235e9},
        # Qwen3-VL runs these on the same architecture; the MoE MLPs train in test_train / test_merge.
        slow_e2e=frozenset({"packed_run", "video"}),
        learning=None,  # the stand-in is Qwen3-VL's; the learning test samples it there
    ),
    "qwen3_5": QWEN3_5,
    # Qwen3.5 with sparse-expert MLPs: the same tokenizer, template, vision tower and boxes.
    "qwen3_5_moe": replace(
        QWEN3_5,
        # Without the mtp.* head, as the names count (35B, 122B, 397B); the 35B card's 36B adds it
        # (844.6 M; 122B: 2.52 B).
        published_totals={
            "qwen3_5_moe-35b-a3b": 35.11e9,
            "qwen3_5_moe-122b-a10b": 122.56e9,
            "qwen3_5_moe-397b-a17b": 396.8e9,
        },
        learning=None,  # the stand-in tower is Qwen3.5's; the learning test samples it there
    ),
    "qwen3_8": QWEN3_8,
}


def incomplete(families) -> list[str]:
    """One line per registered family without an entry or with fields left unset (empty: all complete)."""
    lines = []
    for name in families:
        if name not in FACTS:
            lines.append(
                f"{name}: no entry (add FACTS[{name!r}] = FamilyFacts(...), every field worked out by hand)"
            )
            continue
        unset = [f.name for f in fields(FACTS[name]) if getattr(FACTS[name], f.name) is UNSET]
        if unset:
            lines.append(f"{name}: fields not set: {', '.join(unset)}")
    return lines


def need(name: str, *wanted: str) -> FamilyFacts:
    """FACTS[name], failing the test with a clear message when the entry or a wanted field is missing."""
    if name not in FACTS:
        pytest.fail(f"tests/family_facts.py has no entry for the registered family {name!r}", pytrace=False)
    missing = [w for w in wanted if getattr(FACTS[name], w) is UNSET]
    if missing:
        pytest.fail(f"tests/family_facts.py: {name} has no {', '.join(missing)}", pytrace=False)
    return FACTS[name]


def registered(where=None) -> list[str]:
    """Names of the registered families, optionally those whose family object satisfies `where`."""
    from qwenvl_ft.models import FAMILIES

    return [name for name, family in FAMILIES.items() if where is None or where(family)]


def sampled(names: list[str], check: str) -> list:
    """pytest params of `names`, marked slow for the families whose `slow_e2e` names `check`."""
    slow = {
        n
        for n in names
        if n in FACTS and isinstance(FACTS[n].slow_e2e, frozenset) and check in FACTS[n].slow_e2e
    }
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


SAME_ARCHITECTURE = {"qwen3_8": "qwen3_5"}
"""Generations whose model (architecture, tiny builder, stand-in tower) is another's: what differs is
their template, tokens or facts, which their own tests cover; the model-level tests sample the
other one in the fast suite and run them too only with --run-slow (`by_architecture`)."""


def by_architecture(names: list[str]) -> list:
    """pytest params of `names`, marked slow for the families whose model another of `names` is."""
    return [
        pytest.param(n, marks=pytest.mark.slow) if SAME_ARCHITECTURE.get(n) in names else n for n in names
    ]


def trained_by_test_train() -> list[str]:
    """The families test_train.py and test_merge.py run: all but those with their own e2e module
    (a family without facts runs too)."""
    return [n for n in registered() if n not in FACTS or FACTS[n].e2e_module in (None, UNSET)]
