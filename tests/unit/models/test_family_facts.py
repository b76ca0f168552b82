"""Every registered family has its hand-worked test expectations (tests/family_facts.py).

Per-family tests take their expected values from FACTS; a generation registered without them would
be tested only where nothing is expected of it. This fails the suite instead, naming the family
and the fields it lacks.
"""

from __future__ import annotations

from pathlib import Path

from family_facts import FACTS, incomplete, registered

from qwenvl_ft.models import FAMILIES

E2E = Path(__file__).resolve().parents[2] / "e2e"


def test_every_registered_family_has_complete_facts():
    missing = incomplete(FAMILIES)
    assert not missing, "tests/family_facts.py is incomplete:\n" + "\n".join(missing)


def test_facts_name_only_registered_families():
    assert set(FACTS) <= set(FAMILIES), (
        f"FACTS for unregistered families: {sorted(set(FACTS) - set(FAMILIES))}"
    )


def test_facts_agree_with_what_the_family_declares():
    """Facts that mirror a declaration, checked both ways so neither drifts alone."""
    from qwenvl_ft.tiny.builders import builder_for

    for name in registered(lambda f: name_complete(f.name)):
        family, facts = FAMILIES[name], FACTS[name]
        standin = builder_for(family).has_standin_vision()
        assert facts.standin_vision == standin, name
        assert set(facts.published_totals) == set(family.published_sizes.values()), name
        assert facts.e2e_module is None or (E2E / facts.e2e_module).is_file(), name
        assert facts.slow_e2e <= {"packed_run", "video", "merge", "train", "sequence_parallel"}, name
        assert (facts.video_clip is None) == (family.video is None), name


def name_complete(name: str) -> bool:
    return name in FACTS and not incomplete([name])


def test_every_registered_family_has_its_tiny_recipe():
    """The per-family training tests load recipes/tiny/<family>_lora.yaml."""
    recipes = E2E.parents[1] / "recipes/tiny"
    missing = [name for name in FAMILIES if not (recipes / f"{name}_lora.yaml").is_file()]
    assert not missing, f"no recipes/tiny/<family>_lora.yaml for: {', '.join(missing)}"
