"""The dependency bounds are honest: bounded where we reach into internals, and the pinned CPU set
(scripts/constraints-cpu.txt, what CI installs) lies inside them, at the upper bound README states."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from requirements_from_pyproject import REACHED_INTO, requirement_lines  # noqa: E402

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [
        s for extra in project["optional-dependencies"].values() for s in extra
    ]
    return {Requirement(s).name.lower(): Requirement(s) for s in specs}


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "scripts" / "constraints-cpu.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("name", sorted(REACHED_INTO))
def test_libraries_we_reach_into_have_both_bounds(name):
    ops = {s.operator for s in project_requirements()[name].specifier}
    assert ">=" in ops and ops & {"<=", "<", "=="}, f"{name} needs a tested lower and upper bound"


def test_the_pinned_set_lies_inside_the_bounds():
    reqs, pins = project_requirements(), pinned()
    assert pins["torch"] == "2.13.0"
    for name, req in reqs.items():
        if name in pins:
            assert req.specifier.contains(Version(pins[name]), prereleases=True), (name, pins[name])
    for name in REACHED_INTO:  # the upper bound is the pinned (fully tested) release
        upper = [s.version for s in reqs[name].specifier if s.operator == "<="]
        assert upper == [pins[name]], f"{name}: upper bound {upper} but constraints pin {pins[name]}"


def test_readme_states_the_tested_versions():
    readme = (REPO / "README.md").read_text()
    reqs = project_requirements()
    for name in ("transformers", "peft", "accelerate"):
        lower = next(s.version for s in reqs[name].specifier if s.operator == ">=")
        upper = next(s.version for s in reqs[name].specifier if s.operator == "<=")
        row = re.search(rf"^\| {name} \| (\S+) \| (\S+) \|$", readme, re.M)
        assert row, f"README's tested-versions table has no row for {name}"
        assert Version(row.group(1)) == Version(lower) and Version(row.group(2)) == Version(upper)


def test_version_check_requirement_sets():
    latest = requirement_lines("latest", ["gptq"])
    oldest = requirement_lines("oldest", ["gptq"])
    assert "transformers>=5.23" in latest and not any("<" in line for line in latest)
    assert "transformers==5.23" in oldest and "gptqmodel==7.6" in oldest
    assert not any(line.startswith("torch") for line in latest + oldest)
