"""Task metrics against values worked out by hand (the derivation sits next to each number)."""

from __future__ import annotations

import math

import pytest

from qwenvl_ft.eval import (
    bleu,
    bleu4,
    box_iou,
    caption_scores,
    caption_tokens,
    cer,
    cider_d,
    cider_d_per_sample,
    format_table,
    grounding_scores,
    levenshtein,
    normalize_answer,
    ocr_scores,
    vqa_accuracy,
    vqa_exact_match,
    vqa_scores,
)

# ---------------------------------------------------------------------------------------------
# Grounding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175),  # overlap 5x5, union 100 + 100 - 25
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (0, 0, 10, 5), 50 / 100),  # contained: 50 / 100
        ((0, 0, 4, 2), (2, 0, 6, 2), 4 / 12),  # half-overlapping: 2x2 / (8 + 8 - 4)
        ((0, 0, 1, 1), (2, 2, 3, 3), 0.0),  # disjoint
        ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),  # touching edges share no area
        ((0, 0, 0, 10), (0, 0, 0, 10), 0.0),  # degenerate: zero width
        ((10, 10, 0, 0), (0, 0, 10, 10), 0.0),  # inverted corners: degenerate
        ((0.5, 0.5, 2.5, 1.5), (1.5, 0.5, 3.5, 1.5), 1 / 3),  # float pixels: 1x1 / (2 + 2 - 1)
    ],
)
def test_box_iou(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


def test_grounding_scores():
    pred = [
        [(0, 0, 10, 10), (100, 100, 110, 110)],  # first box exact: IoU 1 (the second is ignored)
        [(0, 0, 10, 5)],  # IoU exactly 0.5: counts for acc@0.5, not acc@0.75
        [],  # no box: IoU 0
        [(0, 0, 10, 10)],  # several acceptable boxes: the best, 25/175
        [(100, 100, 110, 110), (0, 0, 10, 10)],  # only the first box is scored: IoU 0
    ]
    ref = [(0, 0, 10, 10), [0, 0, 10, 10], (0, 0, 10, 10), [(50, 50, 60, 60), (5, 5, 15, 15)], (0, 0, 10, 10)]
    s = grounding_scores(pred, ref)
    assert s["miou"] == pytest.approx((1 + 0.5 + 0 + 1 / 7 + 0) / 5)
    assert s["acc@0.5"] == pytest.approx(2 / 5)
    assert s["acc@0.75"] == pytest.approx(1 / 5)
    assert s["no_box"] == 1
    assert s["n"] == 5


def test_grounding_scores_rejects_mismatch_and_empty_reference():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        grounding_scores([[], []], [(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="at least one box"):
        grounding_scores([[(0, 0, 1, 1)]], [[]])


# ---------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # lowercase, then number word -> digit
        ("none", "0"),
        ("ten", "10"),
        ("the dog.", "dog"),  # period not before a digit dropped, article removed
        ("An apple", "apple"),
        ("isnt", "isn't"),  # contraction restored
        ("dont know", "don't know"),
        ("yes, it is", "yes it is"),  # comma followed by a space: deleted
        ("yes,it is", "yes it is"),  # comma between words: becomes a space
        ("3,000", "3000"),  # digit,digit comma: every mark deleted
        ("red/blue", "red blue"),
        ("t-shirt", "t shirt"),
        ("Hello - world", "hello world"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("dog?!", "dog"),
        ("What's up?", "what's up"),  # the apostrophe is not on the punctuation list
        ("  Yes\n", "yes"),
        ("Two dogs.", "2 dogs"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_vqa_accuracy_leave_one_out():
    others = ["3"] * 8
    # 2 of 10 humans ("two" and "2" normalise alike): 8 subsets hold both -> 2/3, 2 hold one -> 1/3
    assert vqa_accuracy("2", ["two", "2"] + others) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert vqa_accuracy("2", ["two", "2"] + others) == pytest.approx(0.6)
    # 1 of 10: 9 subsets hold it -> 1/3 each
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(9 / 3 / 10)
    # 3 of 10: 7 subsets hold 3 -> 1, 3 subsets hold 2 -> 2/3
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx((7 + 3 * 2 / 3) / 10)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("7", ["2"] * 10) == 0.0


def test_vqa_accuracy_few_answers():
    # 3 agreeing answers: every subset holds 2 of them -> 2/3
    assert vqa_accuracy("yes", ["yes", "yes", "yes"]) == pytest.approx(2 / 3)
    # leave out "yes" -> 0 matches, leave out "no" -> 1 match (1/3)
    assert vqa_accuracy("Yes.", ["yes", "no"]) == pytest.approx(1 / 6)
    # one answer: exact match
    assert vqa_accuracy("Yes.", ["yes"]) == 1.0
    assert vqa_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


def test_vqa_exact_match_and_scores():
    assert vqa_exact_match("The Dog", ["cat", "dog"]) == 1.0
    assert vqa_exact_match("The Dog", "a dog.") == 1.0
    assert vqa_exact_match("dogs", ["dog"]) == 0.0
    s = vqa_scores(["2", "cat", "no"], [["two", "2"] + ["3"] * 8, "a cat", ["yes"] * 10])
    assert s["accuracy"] == pytest.approx((0.6 + 1 + 0) / 3)
    assert s["exact_match"] == pytest.approx((1 + 1 + 0) / 3)
    assert s["n"] == 3


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------


def test_caption_tokens():
    assert caption_tokens("A T-shirt, 3.5 dollars!") == ["a", "t-shirt", "3.5", "dollars"]


def test_cider_d_identical_captions():
    # 2 images, every n-gram in one image's references: idf weight log(2) - log(1) for all.
    # Identical 2-word captions: cosine 1 for n = 1, 2; no 3- or 4-grams -> 0. (1+1+0+0)/4 * 10.
    assert cider_d_per_sample(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx([5.0, 5.0])
    # 4 words: cosine 1 for every n -> 10.
    assert cider_d(["a b c d", "e f g h"], [["a b c d"], ["e f g h"]]) == pytest.approx(10.0)


def test_cider_d_length_penalty():
    # "a b x" vs "a b": every weight is w = log 2 ("x" and "b x" are in no reference: df 1).
    # n=1: (w^2 + w^2) / (sqrt(3) w * sqrt(2) w) = 2/sqrt(6); n=2: w^2 / (sqrt(2) w * w) = 1/sqrt(2);
    # n=3: no reference trigram -> 0; n=4: 0. Length difference 1: exp(-1 / (2 * 36)).
    expected = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    assert cider_d_per_sample(["a b x", "c d"], [["a b"], ["c d"]])[0] == pytest.approx(expected)


def test_cider_d_clips_repeated_ngrams():
    # "a a" vs "a b": candidate tf-idf of "a" is 2w, clipped to the reference's w: w * w /
    # (2w * sqrt(2) w) = 1 / (2 sqrt 2); bigram "a a" unmatched. Without clipping: 1/sqrt(2).
    expected = 10 * (1 / (2 * math.sqrt(2))) / 4
    assert cider_d_per_sample(["a a", "c d"], [["a b"], ["c d"]])[0] == pytest.approx(expected)


def test_cider_d_averages_over_references():
    # vs "a b": (1 + 1 + 0 + 0) / 4 = 0.5; vs "c d": 0. Mean over the 2 references, x10.
    assert cider_d_per_sample(["a b", "e f"], [["a b", "c d"], ["e f"]])[0] == pytest.approx(2.5)


def test_cider_d_zero_cases():
    # no shared n-gram
    assert cider_d_per_sample(["x y", "c d"], [["a b"], ["c d"]])[0] == 0.0
    # "a" is in every image's references: idf log(2) - log(2) = 0, so it carries no weight
    assert cider_d_per_sample(["a", "c"], [["a b"], ["a c"]])[0] == 0.0
    # one image: log(1) = 0 makes every weight 0
    assert cider_d(["a b c d"], [["a b c d"]]) == 0.0


def test_cider_d_prefers_the_matching_caption():
    refs = [["a dog runs on the grass"], ["two cats sleep on a sofa"], ["a man rides a red bike"]]
    matched = ["a dog runs on grass", "two cats sleep on the sofa", "a man rides a bike"]
    shuffled = matched[1:] + matched[:1]
    assert cider_d(matched, refs) > 1.0
    assert cider_d(matched, refs) > 10 * cider_d(shuffled, refs)
    with pytest.raises(ValueError, match="non-empty list of reference captions"):
        cider_d(["a"], ["a"])


def test_bleu_identical_and_partial():
    assert bleu4(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    # "a b c d e" vs "a b c d f": precisions 4/5, 3/4, 2/3, 1/2; same length, no penalty
    b = bleu(["a b c d e"], [["a b c d f"]])
    assert b == pytest.approx(
        [4 / 5, math.sqrt(4 / 5 * 3 / 4), (4 / 5 * 3 / 4 * 2 / 3) ** (1 / 3), 0.2**0.25]
    )


def test_bleu_brevity_penalty():
    # every n-gram of "the cat sat on" matches; c = 4 < r = 6: exp(1 - 6/4)
    assert bleu4(["the cat sat on"], [["the cat sat on the mat"]]) == pytest.approx(math.exp(-0.5))


def test_bleu_clips_and_zero_precision():
    # "the" counted at most once (the reference has one): 1/4; no matching bigram -> BLEU-2..4 = 0
    assert bleu(["the the the the"], [["the cat"]]) == pytest.approx([0.25, 0.0, 0.0, 0.0])
    assert bleu4([""], [["a b"]]) == 0.0
    # several references: "the" credited up to its count in the richest one (2), not the sum (3);
    # c = 3 and the closest reference has 3 words, so no penalty
    assert bleu(["the the the"], [["the cat", "the the dog"]])[0] == pytest.approx(2 / 3)


def test_bleu_is_corpus_level():
    # matches and totals are summed before dividing: (4+4)/(4+5), (3+3)/(3+4), (2+2)/(2+3), (1+1)/(1+2)
    preds, refs = ["a b c d", "a b c d e"], [["a b c d"], ["a b c d f"]]
    expected = (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert bleu4(preds, refs) == pytest.approx(expected)
    assert expected != pytest.approx((1.0 + 0.2**0.25) / 2)


def test_bleu_closest_reference_length():
    # lengths 6 and 2 are both 2 away from 4: the shorter wins, so no brevity penalty
    assert bleu4(["a b c d"], [["a b c d e f", "x y"]]) == pytest.approx(1.0)
    # 6 (2 away) is closer than 9: r = 6 -> exp(1 - 6/4)
    assert bleu4(["a b c d"], [["a b c d e f", "x y z z z z z z z"]]) == pytest.approx(math.exp(-0.5))


def test_caption_scores_keys():
    s = caption_scores(["a b c d", "e f g h"], [["a b c d"], ["e f g h"]])
    assert s == pytest.approx(
        {"cider_d": 10.0, "bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0, "n": 2}
    )


# ---------------------------------------------------------------------------------------------
# OCR
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, d",
    [
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("intention", "execution", 5),
        ("flaw", "lawn", 2),
        ("abcXdef", "abcYdef", 1),
        ("", "abc", 3),
        ("abc", "abc", 0),
    ],
)
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


def test_cer():
    assert cer("kitten", "sitting") == pytest.approx(3 / 7)
    assert cer("", "") == 0.0
    assert cer("a", "") == 1.0
    assert cer("", "abc") == 1.0
    # normalised: whitespace stripped and collapsed; raw: 2 leading + 2 extra inner + 1 trailing
    assert cer("  hello   world\n", "hello world") == 0.0
    assert cer("  hello   world\n", "hello world", normalize=False) == pytest.approx(5 / 11)


def test_ocr_scores():
    s = ocr_scores(["kitten", " abc "], ["sitting", "abc"])
    assert s["cer"] == pytest.approx((3 + 0) / (7 + 3))
    assert s["mean_cer"] == pytest.approx((3 / 7 + 0) / 2)
    assert s["exact_match"] == 0.5
    assert s["n"] == 2
    assert ocr_scores([" abc "], ["abc"], normalize=False)["exact_match"] == 0.0


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def test_format_table():
    table = format_table({"vqa": {"accuracy": 0.6, "n": 10}, "cer": 0.123456})
    assert table == (
        "metric         value\n"
        "------------  ------\n"
        "vqa.accuracy  0.6000\n"
        "vqa.n             10\n"
        "cer           0.1235"
    )
    assert format_table({}) == ""
