"""Every tiny recipe's header, run as written in a fresh folder, makes that recipe train.

A recipe's header lists every command it needs, in order (building the tiny model, writing the data,
the runs it starts from). Each `qwenvl-ft` command of a tiny recipe's header is run here in order, in
a folder that holds only the repository's `recipes/` and bundled `data/` (as a fresh clone's root
does), through the CLI's `main`; training commands run one step (`train.max_steps=1`), so what is
tested is that the commands chain: each finds what the ones before it wrote. The recipes for real
checkpoints need downloads and GPUs; their headers are read by tests/unit/config/test_loader.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from qwenvl_ft.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = sorted((REPO / "recipes" / "tiny").glob("*.yaml"))


def header_commands(recipe: Path) -> list[list[str]]:
    """The `qwenvl-ft` commands of the recipe's leading comment block, continuation lines joined,
    environment assignments (OMP_NUM_THREADS=1) left out."""
    lines = []
    for raw in recipe.read_text().splitlines():
        if not raw.startswith("#"):
            break
        lines.append(raw.lstrip("#").strip())
    commands, current = [], None
    for line in lines:
        start = re.match(r"(?:\w+=\S+\s+)*qwenvl-ft\s", line)  # a command starts the line
        if current is None and start:
            current = line[start.end() :]
        elif current is not None:
            current += " " + line
        if current is not None and not current.endswith("\\"):
            commands.append(shlex.split(current, comments=True))
            current = None
        elif current is not None:
            current = current[:-1]
    return commands


def test_every_tiny_recipe_names_its_commands():
    for recipe in TINY:
        commands = header_commands(recipe)
        trains = [c for c in commands if c[0] == "train"]
        assert trains and trains[-1][1] == f"recipes/tiny/{recipe.name}", (recipe.name, commands)
        assert any(c[0] == "make-tiny" for c in commands), f"{recipe.name}: its header never builds a model"


@pytest.mark.parametrize("recipe", TINY, ids=lambda p: p.stem)
def test_a_tiny_recipes_header_makes_it_train(recipe, tmp_path, monkeypatch):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    (tmp_path / "data").symlink_to(REPO / "data")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for args in header_commands(recipe):
            if args[0] == "train":
                args = [*args, "train.max_steps=1", "data.num_workers=0"]
            assert main(args) == 0, args
    finally:
        torch.set_num_threads(threads)
    out = Path(
        next(
            a.split("=", 1)[1]
            for a in [*args, f"output.dir={_output_dir(recipe)}"]
            if a.startswith("output.dir=")
        )
    )
    assert (tmp_path / out / "qwenvl_ft.json").is_file()


def _output_dir(recipe: Path) -> str:
    from qwenvl_ft.config import load_recipe

    return load_recipe(recipe).output.dir
