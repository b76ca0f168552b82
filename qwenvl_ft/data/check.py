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

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .. import __version__
from .clips import VideoClip, plan_clip
from .conversation import Box, Conversation
from .encode import IGNORE, render, tokenize
from .images import ImageError, image_size, load_image
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


@dataclass
class Problem:
    where: str
    message: str


@dataclass
class PlanItem:
    source: int
    index: int
    turns: int
    """Turns kept (fewer than the sample has when it was truncated)."""
    length: int
    """Exact token count, visual tokens included: the encoder must produce exactly this."""
    images: int
    videos: int = 0
    video_frames: int = 0


@dataclass
class CheckReport:
    samples: int = 0
    errors: list[Problem] = field(default_factory=list)
    dropped: list[Problem] = field(default_factory=list)
    truncated: list[Problem] = field(default_factory=list)
    plan: list[PlanItem] = field(default_factory=list)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "cached"})

    @classmethod
    def from_json(cls, text: str) -> CheckReport:
        raw = json.loads(text)
        return cls(
            samples=raw["samples"],
            errors=[Problem(**p) for p in raw["errors"]],
            dropped=[Problem(**p) for p in raw["dropped"]],
            truncated=[Problem(**p) for p in raw["truncated"]],
            plan=[PlanItem(**p) for p in raw["plan"]],
            cached=True,
        )


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


def check_sample(
    conv: Conversation,
    processor: VLProcessor,
    max_length: int,
    overlength: str,
    supervise: str,
    allow_urls: bool,
    decode: bool,
) -> SampleCheck:
    """Problems, exact length and the drop / truncate decision for one conversation."""
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
                        load_image(seg.value, allow_urls).size
                        if decode
                        else image_size(seg.value, allow_urls)
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
    length, supervised = _length(conv, processor, sizes, supervise, clips)
    if not supervised:
        return SampleCheck(["no token is supervised (check data.supervise and the assistant turns)"])
    if length <= max_length:
        return SampleCheck([], length, len(conv.turns), length, len(sizes), clips)
    if overlength == "truncate":
        # Keep the longest prefix of whole turns that fits and ends with an assistant answer: never
        # inside an image span, never an assistant turn without its end.
        for k in range(len(conv.turns) - 1, 0, -1):
            if conv.turns[k - 1].role == "assistant":
                part = Conversation(conv.id, conv.turns[:k])
                n_img = sum(seg.kind == "image" for t in part.turns for seg in t.segments)
                n_vid = sum(seg.kind == "video" for t in part.turns for seg in t.segments)
                kept = _length(part, processor, sizes, supervise, clips[:n_vid])[0]
                if kept <= max_length:
                    return SampleCheck([], length, k, kept, n_img, clips[:n_vid])
    return SampleCheck([], length, kept_videos=clips)


def _length(
    conv: Conversation, processor: VLProcessor, sizes: list[Size], supervise: str, clips: list[VideoClip]
) -> tuple[int, int]:
    ids, labels, _ = tokenize(render(conv, processor, sizes, supervise, clips), processor.tokenizer)
    return len(ids), sum(lab != IGNORE for lab in labels)


def check_sources(
    sources: list[Source],
    processor: VLProcessor,
    max_length: int,
    overlength: Literal["drop", "truncate"] = "drop",
    supervise: str = "all_assistant",
    allow_urls: bool = False,
    decode: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> CheckReport:
    """Check every sample of every source; reuse a cached report when nothing that matters changed."""
    key = hashlib.sha256(
        json.dumps(
            [
                [s.fingerprint() for s in sources],
                [s.spec.format for s in sources],
                processor.family.name,
                len(processor.tokenizer),
                processor.min_pixels,
                processor.max_pixels,
                asdict(processor.video_config) if processor.video_config is not None else None,
                processor.thinking,
                getattr(processor, "special_text", "error"),
                max_length,
                overlength,
                supervise,
                decode,
                __version__,
            ]
        ).encode()
    ).hexdigest()[:24]
    cache_file = cache_dir / f"{key}.json" if cache_dir else None
    if cache_file and cache_file.is_file():
        return CheckReport.from_json(cache_file.read_text())
    from tqdm.auto import tqdm

    report = CheckReport()
    total = sum(len(s) for s in sources)
    with tqdm(total=total, desc="checking data", unit="sample", disable=not progress) as bar:
        for s, source in enumerate(sources):
            if not len(source):  # training on nothing is never what was meant
                report.errors.append(
                    Problem(str(source.path), "no samples: the dataset is empty (or blank lines only)")
                )
            for i in range(len(source)):
                bar.update()
                report.samples += 1
                try:
                    conv = source.conversation(i)  # raises DataError only, starting with the location
                except DataError as e:
                    report.errors.append(Problem(e.where or source.where(i), e.what))
                    continue
                try:
                    res = check_sample(conv, processor, max_length, overlength, supervise, allow_urls, decode)
                except Exception as e:  # whatever else decoding or encoding raises: an error at the sample
                    report.errors.append(Problem(conv.id, error_message(e)))
                    continue
                _record(report, res, conv, s, i, max_length)
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(report.to_json())
    return report


def _record(
    report: CheckReport, res: SampleCheck, conv: Conversation, s: int, i: int, max_length: int
) -> None:
    """One checked sample into the report: its errors, or dropped / truncated, and the plan."""
    report.errors += [Problem(conv.id, p) for p in res.problems]
    if res.problems:
        return
    if res.keep is None:
        # Name the videos' share: a long clip is the usual reason, and fps / max_frames /
        # max_pixels in data.video are the levers.
        videos = "".join(f"; video {c.path}: {c.describe()}" for c in res.kept_videos)
        report.dropped.append(
            Problem(conv.id, f"{res.length} tokens > max_length {max_length}: dropped{videos}")
        )
        return
    if res.keep < len(conv.turns):
        report.truncated.append(
            Problem(conv.id, f"{res.length} tokens: kept the first {res.keep} turns ({res.kept_length})")
        )
    frames = sum(len(c.indices) for c in res.kept_videos)
    report.plan.append(
        PlanItem(s, i, res.keep, res.kept_length, res.kept_images, len(res.kept_videos), frames)
    )


def check_specs(
    specs: list[DatasetSpec], processor: VLProcessor, **kwargs
) -> tuple[list[Source], CheckReport]:
    """`check_sources` over datasets still to open: a file that cannot be read at all (bad JSON or
    UTF-8 in a .json list, a corrupt parquet file, a missing path) is an error at the file, and the
    check goes on with the others. Returns the sources that opened and the report."""
    sources, unreadable = open_sources(specs)
    report = check_sources(sources, processor, **kwargs)
    report.errors[:0] = unreadable
    return sources, report


def open_sources(specs: list[DatasetSpec], kind: type[Source] = Source) -> tuple[list[Source], list[Problem]]:
    """The datasets that open as `kind`, and a problem at each file that cannot be read at all."""
    sources, unreadable = [], []
    for spec in specs:
        try:
            sources.append(kind(spec))
        except DataError as e:
            unreadable.append(Problem(e.where or str(spec.path), e.what))
        except Exception as e:  # datasets / pyarrow errors on a broken file
            unreadable.append(Problem(str(spec.path), error_message(e)))
    return sources, unreadable


def error_message(e: BaseException) -> str:
    """An exception as a finding: ours (which say what is wrong and where) as they are, any other
    with its type name, often the only clue (`KeyError: 'x'`)."""
    ours = isinstance(e, (DataError, ImageError, VideoError))
    return str(e) if ours else f"{type(e).__name__}: {e}"


def format_report(report: CheckReport, max_length: int, limit: int = 50) -> str:
    """The summary a person reads: counts, images per sample, length percentiles, then each problem."""
    lines = [f"samples: {report.samples}" + ("  (cached result)" if report.cached else "")]
    lines.append(
        f"usable: {len(report.plan)}   errors: {len(report.errors)}   "
        f"dropped (> {max_length} tokens): {len(report.dropped)}   truncated: {len(report.truncated)}"
    )
    if report.plan:
        images = sorted(p.images for p in report.plan)
        counts = {n: images.count(n) for n in sorted(set(images))}
        lines.append("images per sample: " + ", ".join(f"{n}: {c}" for n, c in counts.items()))
        with_video = [p for p in report.plan if p.videos]
        if with_video:
            frames = sorted(p.video_frames for p in with_video)
            lines.append(
                f"samples with video: {len(with_video)}, {sum(p.videos for p in with_video)} videos, "
                f"frames per sample: min {frames[0]}, median {frames[len(frames) // 2]}, max {frames[-1]}"
            )
        lengths = sorted(p.length for p in report.plan)
        pct = {q: lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))] for q in (50, 90, 99)}
        lines.append(
            f"tokens per sample: min {lengths[0]}, p50 {pct[50]}, p90 {pct[90]}, p99 {pct[99]}, "
            f"max {lengths[-1]}, total {sum(lengths)}"
        )
    for title, problems in (
        ("errors", report.errors),
        ("dropped", report.dropped),
        ("truncated", report.truncated),
    ):
        if problems:
            lines.append(f"{title}:")
            lines += [f"  {p.where}: {p.message}" for p in problems[:limit]]
            if len(problems) > limit:
                lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
