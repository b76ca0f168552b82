"""Print pip requirement lines for qwenvl-ft's dependencies, for the version checks.

    python scripts/requirements_from_pyproject.py latest [EXTRA ...]   # upper bounds lifted
    python scripts/requirements_from_pyproject.py oldest [EXTRA ...]   # every lower bound, exactly

`latest` keeps each lower bound and drops every upper bound, so pip resolves the newest release
the registry has: what a user gets once we raise the bounds. `oldest` pins each library whose
internals our code reaches into (REACHED_INTO) to its lower bound (`>=X` -> `==X`): the oldest set
we claim to support; the other dependencies keep their ranges. torch is left out of both: the
caller pins the CPU build, since an unpinned torch pulls GBs of CUDA packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NOT_PINNED = {"torch"}
# Libraries whose internals we use (cache API, rope index, processors, tuner layers, ZeRO hooks,
# quantized layers): each has an upper bound at the newest tested release and a tested lower bound.
REACHED_INTO = {
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "bitsandbytes",
    "gptqmodel",
    "optimum",
    "gradio",
    "trl",
}


def requirement_lines(mode: str, extras: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    lines = []
    for spec in specs:
        req = Requirement(spec)
        if req.name in NOT_PINNED:
            continue
        lower = [s.version for s in req.specifier if s.operator == ">="]
        if mode == "oldest" and req.name in REACHED_INTO:
            lines.append(f"{req.name}=={lower[0]}")
        elif mode == "oldest":
            lines.append(str(req))
        elif mode == "latest" and lower:
            lines.append(f"{req.name}>={lower[0]}")
        else:
            lines.append(req.name)
    return lines


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("latest", "oldest"):
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(requirement_lines(argv[0], argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
