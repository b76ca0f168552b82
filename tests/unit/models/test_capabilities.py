"""A new generation that declares what it does not implement is refused at start, by name.

The fake is the issue's 50-line trial: Qwen3-VL's module under a new name, with linear-attention
layers (packing must restart their state per sample) but no isolation installed, and a model whose
config the planner cannot read. Before the checks, that trial trained with packing silently wrong
(96.7% of positions) and `plan` died with an AttributeError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from family_facts import incomplete

from qwenvl_ft.cli import main
from qwenvl_ft.config import ConfigError, load_recipe
from qwenvl_ft.models import FAMILIES, ModelFamily
from qwenvl_ft.models.capabilities import check_capabilities, check_plan
from qwenvl_ft.models.qwen3_vl import Qwen3VLFamily
from qwenvl_ft.tiny import check as check_make_tiny
from qwenvl_ft.tiny.builders import BUILDERS, Qwen3VLTiny

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "recipes/tiny/qwen3_vl_lora.yaml"


class TrialFamily(Qwen3VLFamily):
    name = "trial3_5"
    title = "Trial Qwen3.5"
    model_types = ("trial3_5",)
    packing_isolation = "positions+linear_state"  # declared, but isolate_packed_samples not overridden

    def model_class(self):
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration


class IsolatingTrial(TrialFamily):
    name = "trial3_5_isolating"

    def isolate_packed_samples(self, model) -> None:
        model.isolated = True


@pytest.fixture
def trial(monkeypatch):
    family = TrialFamily()
    monkeypatch.setitem(FAMILIES, family.name, family)
    return family


def recipe(*overrides: str):
    return load_recipe(RECIPE, ["model.path=/nowhere", *overrides])


def test_packing_is_refused_by_name_when_the_isolation_is_not_installed(trial):
    check_capabilities(trial, recipe())  # unpacked: nothing to isolate
    with pytest.raises(ConfigError) as e:
        check_capabilities(trial, recipe("data.packing=true"))
    msg = str(e.value)
    assert "data.packing" in msg and "Trial Qwen3.5 (trial3_5)" in msg
    assert "packing_isolation='positions+linear_state'" in msg and "set data.packing: false" in msg


def test_an_installed_isolation_and_positions_only_families_pass():
    check_capabilities(IsolatingTrial(), recipe("data.packing=true"))
    for family in FAMILIES.values():
        if family.packing_isolation == "positions":
            check_capabilities(family, recipe("data.packing=true"))


def test_train_refuses_before_loading_anything(trial, tmp_path):
    """train() checks first: the model path need not even exist for the refusal to name the family."""
    from qwenvl_ft.train import train

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "trial3_5"}))
    cfg = load_recipe(RECIPE, [f"model.path={model}", f"output.dir={tmp_path}/o", "data.packing=true"])
    with pytest.raises(ConfigError, match=r"Trial Qwen3.5 \(trial3_5\) declares packing_isolation"):
        train(cfg)
    assert not (tmp_path / "o").exists()


def test_facts_completeness_names_the_trial(trial):
    assert incomplete(FAMILIES) and any(
        line.startswith("trial3_5: no entry") for line in incomplete(FAMILIES)
    )


def trial_checkpoint(tmp_path: Path) -> Path:
    from transformers import Qwen3_5Config

    config = Qwen3_5Config().to_dict()
    config["model_type"] = "trial3_5"
    path = tmp_path / "trial"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_plan_refuses_in_one_line_when_shapes_cannot_read_the_config(trial, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    path = trial_checkpoint(tmp_path)
    assert main(["plan", str(RECIPE), f"model.path={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot describe the layers of Trial Qwen3.5 (trial3_5): AttributeError" in err


def test_plan_refuses_a_family_that_declares_it_cannot_plan(monkeypatch):
    monkeypatch.setattr(TrialFamily, "plans_layers", False)
    with pytest.raises(ValueError, match=r"^qwenvl-ft plan does not support Trial Qwen3.5 \(trial3_5\) yet$"):
        check_plan(TrialFamily(), None)


def test_plan_accepts_every_family_that_plans_its_published_configs():
    from qwenvl_ft.plan import load_facts

    for family in FAMILIES.values():
        if not family.plans_layers:
            continue
        for stem in family.published_sizes.values():
            facts = load_facts("/nowhere", None, stem)
            check_plan(facts.family, facts.config)


def test_make_tiny_needs_a_tiny_config_and_a_standin_tokenizer_where_declared(monkeypatch, capsys, tmp_path):
    for family in FAMILIES.values():  # every registered generation can build its tiny model
        check_make_tiny(family)

    class NoTiny(ModelFamily):
        name, title = "none", "No tiny"

    with pytest.raises(NotImplementedError, match=r"make-tiny: No tiny \(none\) has no tiny-model builder"):
        check_make_tiny(NoTiny())

    class StandinWithoutSpec(Qwen3VLTiny):
        tokenizer = "standin"

    monkeypatch.setitem(BUILDERS, "trial3_5", StandinWithoutSpec)
    monkeypatch.setitem(FAMILIES, "trial3_5", TrialFamily())
    assert main(["make-tiny", "trial3_5", str(tmp_path / "t"), "--small-vocab"]) == 2
    err = capsys.readouterr().err
    assert "Trial Qwen3.5 (trial3_5) declares a stand-in tokenizer but gives no spec for it" in err
    assert not (tmp_path / "t").exists()
