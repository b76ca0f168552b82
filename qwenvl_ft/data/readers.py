"""Readers: each source format -> the neutral `Conversation` (no tokenizer involved).

Formats (detected per record with format "auto"):
- qwen_vl:  {"id", "conversations": [{"from": "user"|"assistant", "value"}]}, images as
            `Picture N: <img>PATH</img>`, boxes as `<ref>T</ref><box>(x1,y1),(x2,y2)</box>` in [0,1000).
- llava:    {"id", "image": str|list, "conversations": [{"from": "human"|"gpt", "value"}]} with `<image>`.
- messages: {"messages": [{"role", "content": str}], "images", "videos",
             "objects": {"ref": [...], "bbox": [[x1,y1,x2,y2], ...]}} with `<image>`, `<video>`,
             `<ref-object>`, `<bbox>` placeholders; boxes in pixels (or "bbox_type": "norm1000").
- openai:   {"messages": [{"role", "content": [{"type": "image", "image"}, {"type": "text", "text"}]}]}.

Reasoning, in every format: an assistant message's `reasoning_content` field (OpenAI / ms-swift
style) or a `<think>...</think>` block opening its text becomes the turn's `reasoning`, apart from
its answer. A `<think>` that is never closed, an assistant's tag anywhere but at the start of its
first text, reasoning given twice, or reasoning (a field, or a block opening the text) in a system
or user turn is a `DataError`.

Every error names the sample as `file:line` (JSONL), `file[index]` (JSON) and its id. Whatever a
record holds (wrong types, NaN, bad UTF-8, nesting too deep), reading it raises `DataError`, never
another exception.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conversation import Box, Conversation, Segment, Turn

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
# As Qwen-VL's tokenizer reads its markup: `<img>...</img>` is an image wherever it stands ("Picture N: "
# before it is ordinary text the data may or may not write), `<ref>...</ref>` a referring expression,
# `<box>(x1,y1),(x2,y2)</box>` a box in [0, 1000) (spaces tolerated, integers required).
_NUM = r"\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*"
_QWEN_VL_TOKENS = re.compile(
    r"(?P<pre>Picture \d+:\s?)?<img>(?P<img>.*?)</img>(?P<nl>\n?)"
    r"|<ref>(?P<ref>.*?)</ref>"
    rf"|<box>\s*\({_NUM},{_NUM}\)\s*,\s*\({_NUM},{_NUM}\)\s*</box>",
    re.S,
)
_QWEN_VL_MARKUP = ("<img>", "</img>", "<ref>", "</ref>", "<box>", "</box>")
_PLACEHOLDERS = re.compile(r"<image>|<video>|<ref-object>|<bbox>")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A sample (or file) that cannot be used; the message starts with its location, `where`."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(f"{where}: {message}" if where else message)
        self.where, self.what = where, message


def detect_format(record: dict[str, Any]) -> str:
    """The format of one record (see the module docstring)."""
    if "messages" in record:
        msgs = record["messages"]
        if isinstance(msgs, list) and any(
            isinstance(m, dict) and isinstance(m.get("content"), list) for m in msgs
        ):
            return "openai"
        return "messages"
    if "conversations" in record:
        convs = record["conversations"]
        first = convs[0] if isinstance(convs, list) and convs else {}
        if "image" in record or "video" in record:
            return "llava"
        # Qwen-VL's own data names its roles user / assistant, but sets converted from LLaVA keep
        # human / gpt: the `<img>` markup, not the role names, tells the two formats apart.
        markup = isinstance(convs, list) and any(
            isinstance(m, dict) and isinstance(m.get("value"), str) and "<img>" in m["value"] for m in convs
        )
        if not markup and isinstance(first, dict) and first.get("from") in ("human", "gpt"):
            return "llava"
        return "qwen_vl"
    raise DataError(f"record has neither 'messages' nor 'conversations' (keys: {', '.join(sorted(record))})")


def to_conversation(record: dict[str, Any], where: str, fmt: str, base: Path) -> Conversation:
    """One record -> Conversation; `base` is the folder relative media paths resolve against."""
    if not isinstance(record, dict):
        raise DataError(f"a sample must be a JSON object, got {type(record).__name__}", where)
    # The id as printable text: a lone surrogate in it would make the report itself unprintable.
    sample_id = f"{where} (id {_printable(str(record['id']))})" if "id" in record else where
    try:
        bad = _lone_surrogate(record)
        if bad is not None:  # the tokenizer would fail on it with a TypeError that names nothing
            raise DataError(f"text {bad!r} holds a lone UTF-16 surrogate: not valid Unicode")
        fmt = detect_format(record) if fmt == "auto" else fmt
        conv = _READERS[fmt](record, base)
    except DataError as e:
        raise DataError(str(e), sample_id) from None
    except Exception as e:  # any shape the readers did not foresee is a malformed sample, not a crash
        raise DataError(f"malformed {fmt} sample ({type(e).__name__}: {e})", sample_id) from None
    conv.id = sample_id
    conv.source_id = str(record["id"]) if "id" in record else None
    return conv


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _lone_surrogate(record: Any) -> str | None:
    """The first string of a record that cannot be UTF-8 (JSON's "\\ud800" escape decodes to one)."""
    stack = [record]
    while stack:  # not recursive: records nest as deep as json.loads allows
        node = stack.pop()
        if isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node
        elif isinstance(node, str) and _printable(node) != node:
            return node
    return None


def _media(value: Any, base: Path) -> Any:
    """A path resolved against `base`; URLs, data: URIs, PIL images and {"bytes", "path"} dicts as they are."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return value  # a Hugging Face `Image` feature read without decoding
    if hasattr(value, "size") and hasattr(value, "mode"):
        return value  # an in-memory PIL image
    if not isinstance(value, str) or not value:
        raise DataError(f"image/video must be a non-empty path or URL, got {value!r}")
    if "://" in value or value.startswith("data:") or Path(value).is_absolute():
        return value
    return str(base / value)


def _role(raw: Any) -> str:
    if raw not in ROLE_ALIASES:
        raise DataError(f"unknown role {raw!r} (expected one of {', '.join(sorted(ROLE_ALIASES))})")
    return ROLE_ALIASES[raw]


def _has_think_tag(text: Any) -> bool:
    return isinstance(text, str) and (THINK_OPEN in text or THINK_CLOSE in text)


def _split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a text that opens with `<think>...</think>`; the answer loses the
    newlines after `</think>`, as the official template strips them."""
    head = text.lstrip()
    if not head.startswith(THINK_OPEN):
        tag = THINK_OPEN if THINK_OPEN in text else THINK_CLOSE
        raise DataError(f"{tag} inside the text: reasoning must open the turn as <think>...</think>")
    end = head.find(THINK_CLOSE)
    if end < 0:
        raise DataError(f"{THINK_OPEN} is never closed by {THINK_CLOSE}")
    reasoning, rest = head[len(THINK_OPEN) : end], head[end + len(THINK_CLOSE) :]
    if _has_think_tag(reasoning) or _has_think_tag(rest):
        raise DataError(f"more than one {THINK_OPEN} block: give one, at the start of the turn")
    return reasoning.strip(), rest.lstrip("\n")


def _reasoning(msg: dict[str, Any], role: str, k: int, text: Any) -> tuple[str | None, Any, str | None]:
    """(reasoning or None, text without it, the text it was cut from verbatim or None) of message `k`
    (0-based): its `reasoning_content` field or a `<think>` block opening `text` (text that is not a
    string is returned as it is).

    Only an assistant's text is read for tags, as the official templates read them; a system or
    user text may mention them (R1-style prompts do) and is reasoning only when a block opens it."""
    field = msg.get("reasoning_content")
    if field is not None and not isinstance(field, str):
        raise DataError(f"turn {k + 1}: reasoning_content must be a string, got {type(field).__name__}")
    block = verbatim = None
    opens = isinstance(text, str) and text.lstrip().startswith(THINK_OPEN)
    if _has_think_tag(text) and (role == "assistant" or opens):
        try:
            block, answer = _split_think(text)
            verbatim, text = text[: len(text) - len(answer)], answer
        except DataError as e:
            raise DataError(f"turn {k + 1} ({role}): {e}") from None
    if field and block is not None:
        raise DataError(f"turn {k + 1}: reasoning given twice, in reasoning_content and in a <think> block")
    reasoning = block if block is not None else field
    # An empty reasoning_content on a user turn is an export artefact, not reasoning.
    if role != "assistant" and (block is not None or field):
        raise DataError(f"turn {k + 1}: reasoning in a {role} turn: only assistant turns carry reasoning")
    return reasoning, text, verbatim


def _read_qwen_vl(record: dict[str, Any], base: Path) -> Conversation:
    turns, n_images = [], 0
    for k, msg in enumerate(record["conversations"]):
        role = _role(msg["from"])
        reasoning, text, verbatim = _reasoning(msg, role, k, msg["value"])
        if not isinstance(text, str):
            raise DataError(f"turn {k + 1}: 'value' must be a string, got {type(text).__name__}")
        segments, pos = [], 0
        for m in _QWEN_VL_TOKENS.finditer(text):
            if m.start() > pos:
                segments.append(_plain(text[pos : m.start()], k))
            if m.group("img") is not None:
                around = (m.group("pre") or "", m.group("nl"))
                segments.append(Segment("image", _media(m.group("img"), base), around=around))
                n_images += 1
            elif m.group("ref") is not None:
                segments.append(Segment("ref", m.group("ref")))
            else:
                # A box refers to the most recent image; Qwen-VL data writes it in [0, 1000).
                coords = _box_integers(m.group(0), m.groups()[-4:], k)
                segments.append(Segment("box", Box(*coords, image=max(n_images - 1, 0), normalized=True)))
            pos = m.end()
        if pos < len(text):
            segments.append(_plain(text[pos:], k))
        turns.append(Turn(role, segments, reasoning, verbatim))
    return Conversation(id="", turns=turns)


def _box_integers(markup: str, groups: tuple[str, ...], k: int) -> list[int]:
    """The coordinates of a `<box>`: integers, as Qwen-VL writes them in [0, 1000)."""
    if not all(re.fullmatch(r"[-+]?\d+", g) for g in groups):
        hint = " (normalised to [0, 1]? multiply by 1000)" if all(float(g) <= 1 for g in groups) else ""
        raise DataError(
            f"turn {k + 1}: {markup!r}: Qwen-VL box coordinates are integers in [0, 1000), got "
            f"{', '.join(groups)}{hint}"
        )
    return [int(g) for g in groups]


def _plain(text: str, k: int) -> Segment:
    """Text between Qwen-VL markup; markup left in it is malformed (never trained as plain text)."""
    for tag in _QWEN_VL_MARKUP:
        if tag in text:
            start = text.find(tag)
            raise DataError(
                f"turn {k + 1}: malformed Qwen-VL markup {text[start : start + 60]!r}: {tag} without its "
                "pair (expected <img>PATH</img>, <ref>TEXT</ref>, <box>(x1,y1),(x2,y2)</box>)"
            )
    return Segment("text", text)


def _read_llava(record: dict[str, Any], base: Path) -> Conversation:
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else list(images)
    videos = record.get("video", [])
    videos = [videos] if isinstance(videos, str) else list(videos)
    msgs = _with_reasoning(record["conversations"], "from", "value")
    return _placeholders(msgs, images, videos, None, base, llava=True)


def _read_messages(record: dict[str, Any], base: Path) -> Conversation:
    msgs = _with_reasoning(record["messages"], "role", "content")
    return _placeholders(
        msgs, record.get("images", []), record.get("videos", []), record.get("objects"), base
    )


def _with_reasoning(raw: list[dict[str, Any]], role_key: str, text_key: str) -> list[dict[str, Any]]:
    """Messages as {"role", "content", "reasoning", "verbatim"}: the reasoning taken out of the text."""
    msgs = []
    for k, m in enumerate(raw):
        role = _role(m[role_key])
        reasoning, content, verbatim = _reasoning(m, role, k, m[text_key])
        msgs.append({"role": role, "content": content, "reasoning": reasoning, "verbatim": verbatim})
    return msgs


def _placeholders(msgs, images, videos, objects, base: Path, llava: bool = False) -> Conversation:
    """Replace <image>/<video>/<ref-object>/<bbox> placeholders by the record's lists, in order."""
    if isinstance(images, str):
        images = [images]
    refs = list((objects or {}).get("ref", []))
    bboxes = list((objects or {}).get("bbox", []))
    image_ids = list((objects or {}).get("image_id", []))
    normalized = (objects or {}).get("bbox_type", "real") == "norm1000"
    queues = {"<image>": list(images), "<video>": list(videos), "<ref-object>": refs, "<bbox>": bboxes}
    counts = {k: 0 for k in queues}
    turns = []
    for msg in msgs:
        if not isinstance(msg["content"], str):
            raise DataError(
                f"{msg['role']} content must be a string in this format, got {type(msg['content']).__name__}"
            )
        segments, pos, text = [], 0, msg["content"]
        for m in _PLACEHOLDERS.finditer(text):
            if m.start() > pos:
                segments.append(Segment("text", text[pos : m.start()]))
            pos = m.end()
            tag = m.group(0)
            i = counts[tag]
            counts[tag] += 1
            if i >= len(queues[tag]):
                continue  # reported below with the totals
            value = queues[tag][i]
            if tag == "<image>":
                segments.append(Segment("image", _media(value, base)))
                if llava and text[pos : pos + 1] == "\n":
                    pos += 1  # LLaVA writes "<image>\n": the newline belongs to the placeholder
            elif tag == "<video>":
                segments.append(Segment("video", _media(value, base)))
            elif tag == "<ref-object>":
                segments.append(Segment("ref", str(value)))
            else:
                if not (isinstance(value, list) and len(value) == 4):
                    raise DataError(f"bbox {i} must be [x1, y1, x2, y2], got {value!r}")
                for k, v in enumerate(value):  # "12", NaN, inf, null, true: never read as a coordinate
                    if not _is_number(v) or not math.isfinite(v):
                        raise DataError(f"bbox {i} coordinate {k + 1} must be a finite number, got {v!r}")
                img = image_ids[i] if i < len(image_ids) else 0
                if not isinstance(img, int) or isinstance(img, bool):
                    raise DataError(f"objects.image_id {i} must be an image index, got {img!r}")
                segments.append(Segment("box", Box(*map(float, value), image=img, normalized=normalized)))
        if pos < len(text):
            segments.append(Segment("text", text[pos:]))
        turns.append(Turn(msg["role"], segments, msg["reasoning"], msg["verbatim"]))
    for tag, queue in queues.items():
        if counts[tag] != len(queue):
            name = {
                "<image>": "images",
                "<video>": "videos",
                "<ref-object>": "objects.ref",
                "<bbox>": "objects.bbox",
            }[tag]
            raise DataError(f"{counts[tag]} {tag} placeholder(s) but {len(queue)} entries in '{name}'")
    return Conversation(id="", turns=turns)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_openai(record: dict[str, Any], base: Path) -> Conversation:
    turns = []
    for k, msg in enumerate(record["messages"]):
        role, content = _role(msg["role"]), msg["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        segments, reasoning, verbatim = [], None, None
        for j, part in enumerate(content):
            kind = part.get("type") or next((key for key in ("image", "video", "text") if key in part), None)
            if kind == "text":
                text = part["text"]
                if j == 0:  # reasoning opens the turn: a <think> block in its first part
                    reasoning, text, verbatim = _reasoning(msg, role, k, text)
                elif role == "assistant" and _has_think_tag(text):
                    raise DataError(f"turn {k + 1} ({role}): a think tag after the first content part")
                segments.append(Segment("text", text))
            elif kind in ("image", "image_url"):
                value = part.get("image") or part.get("image_url")
                value = value.get("url") if isinstance(value, dict) else value
                segments.append(Segment("image", _media(value, base)))
            elif kind == "video":
                segments.append(Segment("video", _media(part["video"], base)))
            else:
                raise DataError(
                    f"unknown content part type {kind!r} (expected text, image, image_url or video)"
                )
        if reasoning is None and (not content or segments[0].kind != "text"):
            reasoning = _reasoning(msg, role, k, None)[0]  # the field alone, when no text comes first
        turns.append(Turn(role, segments, reasoning, verbatim))
    return Conversation(id="", turns=turns)


_READERS = {
    "qwen_vl": _read_qwen_vl,
    "llava": _read_llava,
    "messages": _read_messages,
    "openai": _read_openai,
}


def parse_json(raw: bytes, path: Path, line: int | None = None) -> Any:
    """One JSON document: line `line` of a JSONL file, or (None) a whole .json file.

    Bad UTF-8, bad syntax, integers over Python's 4300 digits and nesting deeper than the stack
    all raise `DataError` at `file:line`.
    """

    def at(lineno: int) -> str:
        return f"{path}:{line or lineno}"

    if raw.startswith(BOM) and line in (None, 1):
        raw = raw[len(BOM) :]  # a byte-order mark some editors and exporters put at a file's start
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno, column = raw.count(b"\n", 0, e.start) + 1, e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(
            f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {column}", at(lineno)
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg} (column {e.colno})", at(e.lineno)) from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"not valid JSON ({type(e).__name__}: {e})", at(1)) from None


def read_json_list(path: Path) -> list[Any]:
    """The samples of a .json file, which must hold one list."""
    records = parse_json(path.read_bytes(), path)
    if not isinstance(records, list):
        raise DataError(f"a JSON dataset must be a list of samples, got {type(records).__name__}", str(path))
    return records


def read_file(path: str | Path, fmt: str = "auto", image_root: str | None = None) -> Iterator[Conversation]:
    """Every conversation of a JSON or JSONL file, in order."""
    path = Path(path)
    base = Path(image_root) if image_root else path.parent
    if path.suffix == ".jsonl":
        from .index import JsonlIndex

        index = JsonlIndex(path)
        for i in range(len(index)):
            where = index.where(i)
            yield to_conversation(parse_json(index.raw(i), path, index.line(i)), where, fmt, base)
    elif path.suffix == ".json":
        for i, record in enumerate(read_json_list(path)):
            yield to_conversation(record, f"{path}[{i}]", fmt, base)
    else:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (expected .json or .jsonl)")
