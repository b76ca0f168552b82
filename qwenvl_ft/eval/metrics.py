"""Task metrics: model predictions scored against references, in pure Python (no new dependencies).

One section per task, each ending in a `*_scores(preds, refs) -> dict` that `qwenvl-ft eval` and the
evaluation during training report through `format_table`:

- grounding: IoU of boxes, (x1, y1, x2, y2) in pixels of the ORIGINAL image. Turning generated text
  into such boxes is the family's job, since each generation writes coordinates its own way:

      family = get_family("qwen2_5_vl")
      pred_boxes = [family.parse_boxes(text, image_size, resized) for text, image_size, resized in outs]
      grounding_scores(pred_boxes, ref_boxes)   # {"miou": ..., "acc@0.5": ..., ...}

- VQA: the VQAv2 answer normalisation and accuracy (min(1, #humans / 3), leave-one-out averaged);
- captions: CIDEr-D and corpus BLEU, as the coco-caption toolkit computes them;
- OCR: character error rate from the Levenshtein distance.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Mapping, Sequence

Box = Sequence[float]
"""(x1, y1, x2, y2) in pixels of the original image."""

Report = dict[str, float | int]


def _check_pairs(preds: Sequence, refs: Sequence) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ----------------------------------------------------------------------------------------------
# Grounding
# ----------------------------------------------------------------------------------------------


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when disjoint or degenerate.

    Continuous coordinates: a box covers [x1, x2) x [y1, y2), area (x2 - x1) * (y2 - y1), no +1.
    """
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    if area_a == 0 or area_b == 0:
        return 0.0
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / (area_a + area_b - inter)


def _ref_box_list(ref: Box | Sequence[Box]) -> list[Box]:
    """One reference box, or several acceptable ones, as a list of boxes."""
    if len(ref) == 4 and all(isinstance(v, numbers.Real) for v in ref):
        return [ref]  # type: ignore[list-item]
    if not ref:
        raise ValueError("a grounding reference needs at least one box")
    return list(ref)  # type: ignore[arg-type]


def grounding_scores(pred_boxes: Sequence[Sequence[Box]], ref_boxes: Sequence[Box | Sequence[Box]]) -> Report:
    """Score the first predicted box of each sample against its reference.

    pred_boxes: per sample, every box parsed from the output (may be empty: IoU 0, counted in no_box).
    ref_boxes: per sample, one box or a list of acceptable boxes (the best match counts).
    Returns miou, acc@0.5 and acc@0.75 (fraction with IoU >= threshold), no_box and n.
    """
    _check_pairs(pred_boxes, ref_boxes)
    ious, no_box = [], 0
    for preds, ref in zip(pred_boxes, ref_boxes, strict=True):
        if not preds:
            no_box += 1
            ious.append(0.0)
            continue
        ious.append(max(box_iou(preds[0], r) for r in _ref_box_list(ref)))
    return {
        "miou": _mean(ious),
        "acc@0.5": _mean([float(v >= 0.5) for v in ious]),
        "acc@0.75": _mean([float(v >= 0.75) for v in ious]),
        "no_box": no_box,
        "n": len(ious),
    }


# ----------------------------------------------------------------------------------------------
# VQA: the normalisation of the official VQAv2 evaluation script (vqaEval.py, Python 3 version)
# ----------------------------------------------------------------------------------------------

# Missing apostrophes restored. Kept as the official script has them, quirks included (the
# capitalised keys never match after lowercasing; "somebody'd" maps to "somebodyd"), so that
# scores compare with published ones.
# fmt: off
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
_MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# fmt: on
_ARTICLES = {"a", "an", "the"}
# Verbatim from the script: "(?!<=\d)" is a typo'd lookbehind that never fires, so in effect a
# period is dropped unless a digit follows it ("3.5" stays, "dog." -> "dog").
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    # Per mark, decided on the input text: a mark next to a space, or any mark at all when the
    # text holds a digit,digit comma, is deleted ("yes, it is", "3,000"); otherwise it splits
    # the words around it ("red/blue" -> "red blue").
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(s: str) -> str:
    """The VQAv2 normalisation: punctuation, lowercase, number words -> digits, articles, contractions.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    """
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(s))


def vqa_exact_match(pred: str, answers: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference answer, else 0.0."""
    answers = [answers] if isinstance(answers, str) else answers
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(a) for a in answers))


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """The VQAv2 accuracy: min(1, #matching answers / 3), averaged over the leave-one-out subsets.

    With 10 answers, 2 matching give 0.6 and 4 or more give 1.0. With fewer answers the same
    average is taken, so with n answers the best score is min(1, (n - 1) / 3); a single answer
    has no non-empty subset, and falls back to exact match. Unlike the official script, which
    trusts the annotations to be normalised already, the answers are normalised here too.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("vqa_accuracy needs a non-empty list of reference answers")
    if len(answers) == 1:
        return vqa_exact_match(pred, answers)
    p = normalize_answer(pred)
    hits = [normalize_answer(a) == p for a in answers]
    total = sum(hits)
    # Leaving out answer i removes one match exactly when answer i matched.
    return _mean([min(1.0, (total - hit) / 3) for hit in hits])


def vqa_scores(preds: Sequence[str], answers_list: Sequence[str | Sequence[str]]) -> Report:
    """accuracy: exact match for samples with one answer, VQAv2 accuracy for several;
    exact_match: the prediction equals any of the answers; n: the number of samples."""
    _check_pairs(preds, answers_list)
    acc, em = [], []
    for pred, answers in zip(preds, answers_list, strict=True):
        answers = [answers] if isinstance(answers, str) else answers
        acc.append(vqa_accuracy(pred, answers))
        em.append(vqa_exact_match(pred, answers))
    return {"accuracy": _mean(acc), "exact_match": _mean(em), "n": len(acc)}


# ----------------------------------------------------------------------------------------------
# Captions: CIDEr-D and BLEU as coco-caption computes them
# ----------------------------------------------------------------------------------------------

# coco-caption runs the Java PTB tokenizer, then drops punctuation tokens; this approximation keeps
# hyphens, apostrophes and decimal points inside words ("t-shirt", "3.5") and drops the rest.
_TOKEN = re.compile(r"\w+(?:[-'.]\w+)*")


def caption_tokens(s: str) -> list[str]:
    """Lowercase words of a caption, punctuation removed."""
    return _TOKEN.findall(s.lower())


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of 1..max_n words."""
    return Counter(tuple(tokens[i : i + k]) for k in range(1, max_n + 1) for i in range(len(tokens) - k + 1))


def _check_refs(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    _check_pairs(preds, refs)
    if any(isinstance(r, str) or not r for r in refs):
        raise ValueError("every caption needs a non-empty list of reference captions")


def _tfidf(counts: Counter, df: Counter, log_n: float, max_n: int) -> tuple[list[dict], list[float]]:
    """Per n, the tf-idf vector of an n-gram count bag and its L2 norm."""
    vecs: list[dict] = [{} for _ in range(max_n)]
    for gram, tf in counts.items():
        # An n-gram in no reference gets df 1 like a rare one: it only enlarges the norm.
        vecs[len(gram) - 1][gram] = tf * (log_n - math.log(max(1.0, df[gram])))
    return vecs, [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]


def _cider_sim(hyp: tuple[list[dict], list[float]], ref: tuple[list[dict], list[float]]) -> list[float]:
    """Per n, the clipped cosine of CIDEr-D: a candidate repeating an n-gram gains nothing over the
    reference's count of it."""
    (hvecs, hnorms), (rvecs, rnorms) = hyp, ref
    out = []
    for hvec, rvec, hn, rn in zip(hvecs, rvecs, hnorms, rnorms, strict=True):
        dot = sum(min(v, rvec.get(g, 0.0)) * rvec.get(g, 0.0) for g, v in hvec.items())
        out.append(dot / (hn * rn) if hn and rn else 0.0)
    return out


def cider_d_per_sample(
    preds: Sequence[str], refs: Sequence[Sequence[str]], sigma: float = 6.0, max_n: int = 4
) -> list[float]:
    """CIDEr-D of each candidate against its references (Vedantam et al. 2015), on coco's x10 scale.

    The idf comes from the document frequency of n-grams over the references of this corpus, so a
    score depends on the whole set: with a single image every weight is log(1) = 0 and CIDEr-D is 0.
    For each reference: the clipped cosine per n = 1..max_n, averaged, times the length penalty
    exp(-(len_cand - len_ref)^2 / (2 sigma^2)); then averaged over the references, times 10.
    """
    _check_refs(preds, refs)
    ref_toks = [[caption_tokens(r) for r in rs] for rs in refs]
    ref_counts = [[_ngrams(t, max_n) for t in ts] for ts in ref_toks]
    # Document frequency: in how many images' reference sets an n-gram appears.
    df = Counter(g for counts in ref_counts for g in set().union(*counts))
    log_n = math.log(len(refs))
    scores = []
    for pred, ts, counts in zip(preds, ref_toks, ref_counts, strict=True):
        cand = caption_tokens(pred)
        hyp = _tfidf(_ngrams(cand, max_n), df, log_n, max_n)
        total = 0.0
        for toks, rc in zip(ts, counts, strict=True):
            penalty = math.exp(-((len(cand) - len(toks)) ** 2) / (2 * sigma**2))
            total += penalty * _mean(_cider_sim(hyp, _tfidf(rc, df, log_n, max_n)))
        scores.append(10.0 * total / len(ts))
    return scores


def cider_d(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D: the mean of `cider_d_per_sample`."""
    return _mean(cider_d_per_sample(preds, refs))


def _closest_ref_len(cand_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to the candidate's, the shorter one on a tie (coco "closest")."""
    return min(ref_lens, key=lambda r: (abs(r - cand_len), r))


def bleu(preds: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n (Papineni et al. 2002) with coco-caption's "closest" reference length.

    Clipped n-gram matches and candidate n-gram totals are summed over the corpus before the
    precisions are taken; brevity penalty exp(1 - r / c) when the candidates are shorter (c < r).
    Where a precision is zero BLEU is 0 (coco's smoothing constants give ~1e-4 there instead).
    """
    _check_refs(preds, refs)
    correct, guess = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for pred, rs in zip(preds, refs, strict=True):
        cand = caption_tokens(pred)
        ref_toks = [caption_tokens(r) for r in rs]
        cand_len += len(cand)
        ref_len += _closest_ref_len(len(cand), [len(t) for t in ref_toks])
        # A candidate n-gram is credited at most as often as it appears in any one reference.
        max_ref: Counter = Counter()
        for t in ref_toks:
            max_ref |= _ngrams(t, max_n)
        for gram, count in _ngrams(cand, max_n).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(max_n):
            guess[k] += max(0, len(cand) - k)
    if cand_len == 0:
        return [0.0] * max_n
    bp = 1.0 if cand_len >= ref_len else math.exp(1 - ref_len / cand_len)
    scores, log_prec = [], 0.0
    for k in range(max_n):
        if correct[k] == 0:
            return scores + [0.0] * (max_n - k)
        log_prec += math.log(correct[k] / guess[k])
        scores.append(bp * math.exp(log_prec / (k + 1)))
    return scores


def bleu4(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4."""
    return bleu(preds, refs, max_n=4)[3]


def caption_scores(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> Report:
    """cider_d, bleu1..bleu4 and n of a set of captions."""
    report: Report = {"cider_d": cider_d(preds, refs)}
    report.update({f"bleu{k + 1}": v for k, v in enumerate(bleu(preds, refs))})
    report["n"] = len(preds)
    return report


# ----------------------------------------------------------------------------------------------
# OCR
# ----------------------------------------------------------------------------------------------


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance: the fewest insertions, deletions and substitutions turning a into b."""
    # A shared prefix or suffix costs nothing; trimming it keeps long, mostly right OCR cheap.
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    while a and b and a[-1] == b[-1]:
        a, b = a[:-1], b[:-1]
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _normalize_ocr(s: str) -> str:
    """Strip and collapse whitespace, so line wrapping and indentation are not counted as errors."""
    return " ".join(s.split())


def cer(pred: str, ref: str, normalize: bool = True) -> float:
    """Character error rate: Levenshtein(pred, ref) / len(ref); for an empty ref, 0 if pred is
    empty too, else 1. Can exceed 1 when the prediction is much longer than the reference."""
    if normalize:
        pred, ref = _normalize_ocr(pred), _normalize_ocr(ref)
    if not ref:
        return 0.0 if not pred else 1.0
    return levenshtein(pred, ref) / len(ref)


def ocr_scores(preds: Sequence[str], refs: Sequence[str], normalize: bool = True) -> Report:
    """cer: total edits / total reference characters (long texts weigh more); mean_cer: the mean
    of the per-sample CERs; exact_match: the fraction of identical texts; n."""
    _check_pairs(preds, refs)
    if normalize:
        preds = [_normalize_ocr(p) for p in preds]
        refs = [_normalize_ocr(r) for r in refs]
    edits = sum(levenshtein(p, r) for p, r in zip(preds, refs, strict=True))
    chars = sum(len(r) for r in refs)
    return {
        "cer": edits / chars if chars else float(edits > 0),
        "mean_cer": _mean([cer(p, r, normalize=False) for p, r in zip(preds, refs, strict=True)]),
        "exact_match": _mean([float(p == r) for p, r in zip(preds, refs, strict=True)]),
        "n": len(preds),
    }


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _flatten(report: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts become dotted keys: {"vqa": {"accuracy": x}} -> [("vqa.accuracy", x)]."""
    rows: list[tuple[str, object]] = []
    for key, value in report.items():
        name = f"{prefix}{key}"
        rows += _flatten(value, name + ".") if isinstance(value, Mapping) else [(name, value)]
    return rows


def _format_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):.4f}"


def format_table(report: Mapping) -> str:
    """A two-column text table of a metrics dict: names left-aligned, values right-aligned,
    floats to 4 decimals, nested dicts as dotted names."""
    rows = [(name, _format_value(v)) for name, v in _flatten(report)]
    if not rows:
        return ""
    kw = max(len("metric"), *(len(n) for n, _ in rows))
    vw = max(len("value"), *(len(v) for _, v in rows))
    lines = [f"{'metric':<{kw}}  {'value':>{vw}}", f"{'-' * kw}  {'-' * vw}"]
    lines += [f"{n:<{kw}}  {v:>{vw}}" for n, v in rows]
    return "\n".join(lines)
