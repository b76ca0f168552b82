"""Qwen3.8 (27B dense, August 2026): Qwen3.5's architecture, checkpoint files and config
(`model_type` qwen3_5, `Qwen3_5ForConditionalGeneration`) with its own chat template.

Facts, and where they were checked (the template is `qwen3_8_chat_template.jinja`, byte for byte the
official `chat_template.jinja` of Qwen/Qwen3.8-27B: sha256 c3cf9e34...7a81041, 8,952 bytes, the hash
published for the checkpoint and its quantized copies; the same text as TRL's `qwen3_8.jinja`):
- `reasoning_effort` takes xhigh (the default), medium or low; any other value raises
  ("Unexpected reasoning effort ...", QwenLM/Qwen3.8 issue #217). While thinking is on it writes an
  instruction at the head of the system turn (`effort_instruction`; medium writes none), followed by
  a blank line and the data's system text, or a system turn of its own when the conversation has
  none; an empty system message gives no system turn. With `enable_thinking=false` nothing is written;
- earlier turns' thinking is kept (`preserve_thinking`, on by default): every assistant turn opens
  with its think block, empty when it has no reasoning (`data.thinking: drop_earlier` renders
  `preserve_thinking=false`);
- the generation prompt is Qwen3.5's (`<think>\\n`, or the empty block with thinking off);
- reasoning comes only from `reasoning_content`: the template does not split a `<think>` block out
  of the content as Qwen3.5's does. Our readers always keep such a block apart as the turn's
  reasoning (README 'Reasoning'), as ms-swift's `qwen3_8` template also does before rendering.

Detection: config.json cannot tell a Qwen3.8 checkpoint from a Qwen3.5 one (the published key sets
are identical; ms-swift picks its template by model id), so `recognizes` reads the checkpoint's own
chat template (`chat_template.jinja` or `tokenizer_config.json`): one that takes `reasoning_effort` is
Qwen3.8's (never the directory name). A checkpoint stripped of its template is taken for Qwen3.5;
a recipe's `model.family: qwen3_8` says otherwise.
Not found here, so not modelled: the published config.json (only second-hand key lists), and the
MoE Qwen3.8-2.4T-A95B beyond its template (its checkpoints are refused by name: `detect_family`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from .base import ThinkFormat
from .qwen3_5 import Qwen3_5Family

EFFORT_INSTRUCTIONS = {
    "xhigh": "Reasoning effort is set to xhigh. Please think carefully through the task, validate key "
    "assumptions, consider plausible alternatives, and prioritize correctness, consistency, and "
    "clarity in the final answer.",
    "medium": "",
    "low": "Reasoning effort is set to low. Keep your thinking brief and focused, moving directly to the "
    "conclusion without unnecessary elaboration.",
}
TEMPLATE_FILE = Path(__file__).with_name("qwen3_8_chat_template.jinja")


def checkpoint_template(model_dir: Path) -> str | None:
    """The chat template a checkpoint ships (chat_template.jinja, else tokenizer_config.json's), if any."""
    jinja = Path(model_dir) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = Path(model_dir) / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except json.JSONDecodeError:
        return None
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = "\n".join(t.get("template", "") for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else None


def takes_reasoning_effort(model_dir: Path) -> bool:
    """The checkpoint's own template renders `reasoning_effort` (Qwen3.8's does)."""
    template = checkpoint_template(model_dir)
    return template is not None and "reasoning_effort" in template


class Qwen3_8Family(Qwen3_5Family):
    name = "qwen3_8"
    title = "Qwen3.8"
    # Every assistant turn shows its think block (preserve_thinking on by default).
    chat = replace(Qwen3_5Family.chat, think=ThinkFormat(history="keep"))
    reasoning_efforts = ("xhigh", "medium", "low")
    published_sizes = {"Qwen3.8-27B": "qwen3_5-27b"}  # the same config keys and sizes as Qwen3.6-27B

    @cached_property
    def chat_template(self) -> str:  # type: ignore[override]
        if not TEMPLATE_FILE.is_file():
            raise FileNotFoundError(
                f"{TEMPLATE_FILE}: the official Qwen3.8 chat template is missing from the package"
            )
        return TEMPLATE_FILE.read_text(encoding="utf-8")

    def effort_instruction(self, effort: str | None) -> str:
        effort = self.reasoning_efforts[0] if effort is None else effort
        if effort not in EFFORT_INSTRUCTIONS:
            raise ValueError(
                f"reasoning effort {effort!r}: {self.title} takes {', '.join(self.reasoning_efforts)} "
                f"(default {self.reasoning_efforts[0]})"
            )
        return EFFORT_INSTRUCTIONS[effort]

    def recognizes(self, model_dir: Path) -> bool:
        return takes_reasoning_effort(model_dir)
