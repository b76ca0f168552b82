"""The data check: every sample verified before step one, and the plan training follows.

For each sample: it parses; roles go (system) user, assistant, user, ...; no assistant turn is
empty; every image exists and decodes; every box lies on its image with x1 < x2 and y1 < y2; and
its exact token length (visual tokens included, from the family's resize rules) fits
`max_length`, else it is dropped or truncated at a turn boundary, as the recipe says. Errors make
the check fail; drops and truncations are reported. `qwenvl-ft data check` prints the report;
training runs the same check (cached by file fingerprint) and refuses to start on errors.

The check never crashes on data: whatever one sample raises while it is read, decoded or encoded
becomes an error at its location (`file:line (id X)`), and a file that cannot be read at all an
error at the file (`check_specs`); the other samples are still checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from .checking import (  # noqa: F401  (the report's pieces, where callers have always found them)
    CheckReport,
    Outcome,
    Problem,
    check_datasets,
    error_message,
    format_report,
    open_sources,
    run_check,
)
from .clips import VideoClip, plan_clip
from .conversation import Box, Conversation
from .encode import IGNORE, render, shown_reasoning, tokenize
from .images import ImageError, image_size, verify_image
from .plan import SAMPLE_ROW, PlanItem, row  # noqa: F401
from .readers import DataError
from .sources import Source
from .video import VideoError

if TYPE_CHECKING:
    from ..config import DatasetSpec
    from ..models.processor import VLProcessor


@dataclass
class Size:
    """Stands in for a loaded image when only its size matters (token budgets, box text)."""

    width: int
    height: int


def structure_problems(conv: Conversation) -> list[str]:
    """Role order and empty turns."""
    turns = conv.turns
    if not turns:
        return ["the conversation has no turns"]
    problems = []
    start = 1 if turns[0].role == "system" else 0
    for k, turn in enumerate(turns[start:], start):
        expected = "user" if (k - start) % 2 == 0 else "assistant"
        if turn.role != expected:
            article = "an" if expected == "assistant" else "a"
            problems.append(f"turn {k + 1}: expected {article} {expected} turn, got {turn.role}")
        if turn.role == "assistant" and not any(
            s.kind != "text" or str(s.value).strip() for s in turn.segments
        ):
            problems.append(f"turn {k + 1}: empty assistant turn")
    if turns[-1].role != "assistant":
        problems.append(
            f"the last turn is a {turns[-1].role} turn: a sample must end with an assistant answer"
        )
    return problems


def box_problems(box: Box, sizes: list[Size]) -> list[str]:
    coords = f"({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g})"
    if not 0 <= box.image < len(sizes):
        return [f"box {coords} refers to image {box.image + 1} but the sample has {len(sizes)} image(s)"]
    problems = []
    # Written as "not (valid)" so that a NaN coordinate, for which every comparison is False, fails.
    if not (box.x1 < box.x2 and box.y1 < box.y2):
        problems.append(
            f"box {coords} has x1 >= x2 or y1 >= y2 (expected x1, y1, x2, y2 with x1 < x2, y1 < y2)"
        )
    w, h = (1000, 1000) if box.normalized else (sizes[box.image].width, sizes[box.image].height)
    if not (box.x1 >= 0 and box.y1 >= 0 and box.x2 <= w and box.y2 <= h):
        space = "[0, 1000)" if box.normalized else f"the {w}x{h} image"
        problems.append(f"box {coords} lies outside {space}")
    return problems


@dataclass
class SampleCheck:
    problems: list[str]
    length: int = 0
    """Full token length (0 when the sample has problems)."""
    keep: int | None = None
    """Turns to keep; None: drop (over max_length and not truncatable)."""
    kept_length: int = 0
    kept_images: int = 0
    kept_videos: list[VideoClip] = field(default_factory=list)
    reasoning: bool = False
    """A kept answer's think block shows reasoning (thinking generations: how the run was trained)."""


def check_sample(
    conv: Conversation,
    processor: VLProcessor,
    max_length: int,
    overlength: str,
    supervise: str,
    allow_urls: bool,
    decode: bool,
    thinking: bool | None = None,
) -> SampleCheck:
    """Problems, exact length and the drop / truncate decision for one conversation.

    thinking: the system turn's thinking mode on generations with a reasoning effort (`render`)."""
    problems = structure_problems(conv)
    sizes: list[Size] = []
    clips: list[VideoClip] = []
    for turn in conv.turns:
        for seg in turn.segments:
            if seg.kind == "video":
                try:  # metadata only: the exact frames, size and tokens without decoding pixels
                    clips.append(plan_clip(seg.value, processor))
                except (VideoError, ValueError) as e:
                    problems.append(str(e))
            elif seg.kind == "image":
                try:
                    w, h = (
                        verify_image(seg.value, allow_urls) if decode else image_size(seg.value, allow_urls)
                    )
                    processor.image_tokens(h, w)  # refuses extreme aspect ratios
                    sizes.append(Size(w, h))
                except (ImageError, ValueError) as e:
                    problems.append(str(e))
                    sizes.append(Size(1, 1))
    for turn in conv.turns:
        problems += [p for s in turn.segments if s.kind == "box" for p in box_problems(s.value, sizes)]
    if problems:
        return SampleCheck(problems)
    length, supervised = _length(conv, processor, sizes, supervise, clips, thinking)
    if not supervised:
        return SampleCheck(["no token is supervised (check data.supervise and the assistant turns)"])
    if length <= max_length:
        return SampleCheck(
            [], length, len(conv.turns), length, len(sizes), clips, _shows_reasoning(conv, processor)
        )
    if overlength == "truncate":
        # Keep the longest prefix of whole turns that fits and ends with an assistant answer: never
        # inside an image span, never an assistant turn without its end.
        for k in range(len(conv.turns) - 1, 0, -1):
            if conv.turns[k - 1].role == "assistant":
                part = Conversation(conv.id, conv.turns[:k])
                n_img = sum(seg.kind == "image" for t in part.turns for seg in t.segments)
                n_vid = sum(seg.kind == "video" for t in part.turns for seg in t.segments)
                kept = _length(part, processor, sizes, supervise, clips[:n_vid], thinking)[0]
                if kept <= max_length:
                    thinks = _shows_reasoning(part, processor)
                    return SampleCheck([], length, k, kept, n_img, clips[:n_vid], thinks)
    return SampleCheck([], length, kept_videos=clips)


def _shows_reasoning(conv: Conversation, processor: VLProcessor) -> bool:
    """Whether a think block of the rendered conversation shows reasoning (not the empty block)."""
    return any(shown_reasoning(conv, processor))


def _length(
    conv: Conversation,
    processor: VLProcessor,
    sizes: list[Size],
    supervise: str,
    clips: list[VideoClip],
    thinking: bool | None = None,
) -> tuple[int, int]:
    ids, labels, _ = tokenize(render(conv, processor, sizes, supervise, clips, thinking), processor.tokenizer)
    return len(ids), sum(lab != IGNORE for lab in labels)


@dataclass(frozen=True)
class SampleRules:
    """The SFT sample check (module docstring), as the check loop (checking.py) runs it."""

    max_length: int
    overlength: Literal["drop", "truncate"] = "drop"
    supervise: str = "all_assistant"
    allow_urls: bool = False
    decode: bool = True
    unit: ClassVar[str] = "sample"
    dtype: ClassVar = SAMPLE_ROW

    def open(self, spec: DatasetSpec, cache_dir: Path | None) -> Source:
        return Source(spec, cache_dir)

    def key(self) -> list:
        return [self.max_length, self.overlength, self.supervise, self.allow_urls, self.decode]

    def check(self, source: Source, s: int, i: int, processor: VLProcessor) -> Outcome:
        try:
            conv = source.conversation(i)  # raises DataError only, starting with the location
        except DataError as e:
            return Outcome([Problem(e.where or source.where(i), e.what)])
        try:
            res = check_sample(
                conv,
                processor,
                self.max_length,
                self.overlength,
                self.supervise,
                self.allow_urls,
                self.decode,
            )
        except Exception as e:  # whatever else decoding or encoding raises: an error at the sample
            return Outcome([Problem(conv.id, error_message(e))])
        return outcome(res, conv, s, i, self.max_length)


def outcome(res: SampleCheck, conv: Conversation, s: int, i: int, max_length: int) -> Outcome:
    """One checked sample's fate: its errors, or dropped / truncated, and its plan row."""
    if res.problems:
        return Outcome([Problem(conv.id, p) for p in res.problems])
    if res.keep is None:
        # Name the videos' share: a long clip is the usual reason, and fps / max_frames /
        # max_pixels in data.video are the levers.
        videos = "".join(f"; video {c.path}: {c.describe()}" for c in res.kept_videos)
        return Outcome(
            dropped=Problem(conv.id, f"{res.length} tokens > max_length {max_length}: dropped{videos}")
        )
    truncated = None
    if res.keep < len(conv.turns):
        truncated = Problem(
            conv.id, f"{res.length} tokens: kept the first {res.keep} turns ({res.kept_length})"
        )
    frames = sum(len(c.indices) for c in res.kept_videos)
    values = row(
        SAMPLE_ROW, source=s, index=i, turns=res.keep, length=res.kept_length, images=res.kept_images,
        videos=len(res.kept_videos), video_frames=frames, reasoning=int(res.reasoning),
    )  # fmt: skip
    return Outcome(truncated=truncated, row=values)


LOOP_KEYS = ("cache_dir", "progress", "workers")


def _split(max_length: int, args: tuple, kwargs: dict) -> tuple[SampleRules, dict]:
    """SampleRules from the rule arguments; the check loop's (`cache_dir`, `progress`, `workers`) apart."""
    loop = {k: kwargs.pop(k) for k in LOOP_KEYS if k in kwargs}
    return SampleRules(max_length, *args, **kwargs), loop


def check_sources(
    sources: list[Source], processor: VLProcessor, max_length: int, *args, **kwargs
) -> CheckReport:
    """Check every sample of every source: `SampleRules`' fields (max_length, overlength, supervise,
    allow_urls, decode) and the loop's keywords (cache_dir, progress, workers: checking.py)."""
    rules, loop = _split(max_length, args, kwargs)
    return run_check(rules, sources, processor, **loop)


def check_specs(
    specs: list[DatasetSpec], processor: VLProcessor, max_length: int, *args, **kwargs
) -> tuple[list[Source], CheckReport]:
    """`check_sources` over datasets still to open: a file that cannot be read at all (bad JSON or
    UTF-8 in a .json list, a corrupt parquet file, a missing path) is an error at the file, and the
    check goes on with the others. Returns the sources that opened and the report."""
    rules, loop = _split(max_length, args, kwargs)
    return check_datasets(rules, specs, processor, **loop)
