"""`qwenvl-ft data check --grpo`: the GRPO prompt rules that training applies at its start, from the
command line, by file:line (a prompt whose reference has no box while grounding_iou is asked; a
prompt that leaves no room for the sampled answer)."""

from __future__ import annotations

import json

from qwenvl_ft.cli import main


def test_grpo_prompt_rules_by_file_and_line(tiny_model, tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "set"), "--count", "3", "--seed", "1"]) == 0
    data = tmp_path / "set" / "data.jsonl"
    lines = data.read_text().splitlines()
    no_box = {
        "id": "text-only",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    data.write_text("\n".join([*lines, json.dumps(no_box)]) + "\n")
    model = str(tiny_model("qwen3_vl"))
    base = ["data", "check", str(data), "--model", model, "--max-length", "256"]

    assert main(base) == 0  # as SFT data every sample is fine
    capsys.readouterr()
    assert main([*base, "--grpo"]) == 1
    out = capsys.readouterr().out
    assert f"{data}:4" in out and "has no box" in out and "FAILED: 1 error" in out
    assert main([*base, "--grpo", "--rewards", "exact_match,format"]) == 0  # no box needed
    capsys.readouterr()
    # The 96x96 image is enlarged to the 65,536-pixel minimum (64 visual tokens), so a prompt is about
    # 80 tokens and 200 new tokens overflow 256: every prompt is dropped, and said so.
    assert main([*base, "--grpo", "--rewards", "exact_match", "--max-new-tokens", "200"]) == 0
    out = capsys.readouterr().out
    assert "grpo.max_new_tokens 200 > max_length 256: dropped" in out
