"""Boxes in an answer with the referring text each answers: the demo labels its drawn boxes so.

Per family from the registry: a natural grounding answer written by hand in tests/family_facts.py
(ref_text + grounding_sep + box_text of BOX on a 160x120 image) gives back 'red square' and BOX.
"""

from __future__ import annotations

import pytest

from qwenvl_ft.models import get_family
from tests.family_facts import BOX, need, registered


@pytest.mark.parametrize("name", registered())
def test_a_natural_answer_gives_its_ref_and_box(name):
    facts = need(name, "ref_text", "grounding_sep", "box_text")
    family = get_family(name)
    resized = family.resized_size(120, 160)[::-1]
    answer = f"{facts.ref_text}{facts.grounding_sep}{facts.box_text}"
    [(label, box)] = family.labelled_boxes(answer, (160, 120), resized)
    assert label == "red square"
    # Back from the family's integers: within one unit of its coordinates (<= 0.2 px of 160x120 in
    # [0, 1000); 1 px of the resized image, scaled).
    assert box == pytest.approx(BOX, abs=1.5)


def test_qwen3_vl_json_objects_label_their_own_boxes():
    family = get_family("qwen3_vl")
    text = '```json\n[{"bbox_2d": [100, 200, 300, 400], "label": "cat"}, {"bbox_2d": [500, 0, 999, 500], "label": "dog"}]\n```'
    # [0, 1000) of a 1000x500 image: x as written, y halved (by hand).
    assert family.labelled_boxes(text, (1000, 500), (1000, 500)) == [
        ("cat", (100, 100, 300, 200)),
        ("dog", (500, 0, 999, 250)),
    ]


def test_first_generation_ref_applies_to_each_box_after_it():
    family = get_family("qwen_vl")
    text = "<ref>two cats</ref><box>(0,0),(500,500)</box><box>(500,500),(999,999)</box> and <ref>a dog</ref><box>(10,10),(20,20)</box>"
    got = family.labelled_boxes(text, (1000, 1000), (448, 448))
    assert [label for label, _ in got] == ["two cats", "two cats", "a dog"]
    assert got[2][1] == (10, 10, 20, 20)


def test_a_box_without_reference_text_has_no_label():
    family = get_family("qwen3_vl")
    assert family.labelled_boxes("[42, 708, 292, 958]", (96, 96), (96, 96)) == [
        (None, pytest.approx((42 * 0.096, 708 * 0.096, 292 * 0.096, 958 * 0.096)))
    ]
    assert family.labelled_boxes("no box here", (96, 96), (96, 96)) == []
