"""The torchrun launch scripts and the real-size recipes stay runnable as documented.

Every scripts/finetune_*.sh parses, names a default recipe that loads (with the script's own
overrides applied, as the script would pass them) and DeepSpeed configs that exist, and launches
`-m qwenvl_ft train`. Every real-size recipe says in its header how to launch it and on what GPUs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from qwenvl_ft.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "scripts").glob("finetune_*.sh"))
RECIPES = sorted(
    p for p in (REPO / "recipes").rglob("*.yaml") if "tiny" not in p.relative_to(REPO / "recipes").parts
)


HELPER = REPO / "scripts/_torchrun.sh"
LAUNCH = re.compile(r"-m qwenvl_ft train|torchrun_train ")


def full_text(script: Path) -> str:
    """The script with the shared torchrun helper it sources (scripts/_torchrun.sh)."""
    text = script.read_text()
    return text + "\n" + HELPER.read_text() if "source scripts/_torchrun.sh" in text else text


def code_lines(text: str) -> list[str]:
    """The script's lines that are not comments."""
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def header(path: Path) -> list[str]:
    """The leading comment block of a recipe."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def test_the_script_set_is_there():
    names = {p.name for p in SCRIPTS}
    assert names >= {
        "finetune_full_zero3.sh",
        "finetune_lora_zero2.sh",
        "finetune_lora_single_gpu.sh",
        "finetune_qlora_zero2.sh",
        "finetune_qlora_single_gpu.sh",
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_shape(script):
    text = full_text(script)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert f"bash scripts/{script.name} [RECIPE] [key=value ...]" in text
    assert "-m qwenvl_ft train" in text
    code = "\n".join(code_lines(text))
    assert 'cd "$(dirname "$0")/.."' in code
    if "torchrun" in code:
        for flag in ("--nnodes", "--node_rank", "--master_addr", "--master_port", "--nproc_per_node"):
            assert flag in code, f"{script.name}: torchrun without {flag}"
        for var in ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
            assert var in code, f"{script.name}: {var} not honoured"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_default_recipe_loads_with_the_scripts_overrides(script, monkeypatch):
    monkeypatch.chdir(REPO)  # deepspeed paths are repo-relative, as the script cds to the repo root
    text = script.read_text()
    code = code_lines(text)
    defaults = [m.group(1) for line in code if (m := re.match(r"RECIPE=(\S+)$", line.strip()))]
    assert len(defaults) == 1, f"{script.name}: expected one `RECIPE=<default>` line"
    assert (REPO / defaults[0]).is_file(), f"{script.name}: default recipe {defaults[0]} is missing"
    launch = [line for line in code if LAUNCH.search(line)]
    assert len(launch) == 1, f"{script.name}: expected exactly one launch line"
    overrides = [tok for tok in shlex.split(launch[0]) if re.match(r"^[a-z_]+\.[a-z_]+=", tok)]
    cfg = load_recipe(defaults[0], overrides)
    if "qlora" in script.name:
        assert cfg.train.mode == "qlora"
    elif "full" in script.name:
        assert cfg.train.mode == "full"
    else:
        assert cfg.train.mode == "lora"
    if "single_gpu" in script.name:
        assert cfg.train.deepspeed is None
        assert "torchrun" not in "\n".join(code)
    else:
        assert cfg.train.deepspeed is not None


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_path_a_script_names_exists(script, monkeypatch):
    monkeypatch.chdir(REPO)
    text = script.read_text()
    for ds in re.findall(r"configs/deepspeed/[\w.-]+\.json", text):
        assert (REPO / ds).is_file(), f"{script.name} names {ds}, which does not exist"
    for recipe in set(re.findall(r"recipes/[\w/.-]+\.yaml", text)):
        assert (REPO / recipe).is_file(), f"{script.name} names {recipe}, which does not exist"
        load_recipe(recipe)


def test_there_are_real_size_recipes():
    assert len(RECIPES) >= 12


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipe_header_says_how_to_launch_and_on_what(recipe, monkeypatch):
    monkeypatch.chdir(REPO)
    lines = header(recipe)
    assert lines, f"{recipe.name}: no header comment"
    assert any("torchrun" in line or "scripts/finetune_" in line for line in lines), (
        f"{recipe.name}: the header does not give the launch command"
    )
    assert any("GPU" in line for line in lines), f"{recipe.name}: the header does not name the hardware"
    rel = str(recipe.relative_to(REPO))
    assert any(rel in line for line in lines), f"{recipe.name}: the launch command names another file"
    for script in re.findall(r"scripts/finetune_\w+\.sh", "\n".join(lines)):
        assert (REPO / script).is_file(), f"{recipe.name} names {script}, which does not exist"
    cfg = load_recipe(recipe)
    if cfg.train.mode == "qlora" and cfg.train.deepspeed:
        assert "zero3" not in cfg.train.deepspeed
