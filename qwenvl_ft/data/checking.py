"""The one check loop: SFT samples, DPO pairs and GRPO prompts all go through it.

    report = run_check(SampleRules(max_length=2048), sources, processor, workers=8, cache_dir=CACHE_DIR)

What is checked is a `Rules` object (check.py's `SampleRules`, pairs.py's `PairRules`, GRPO's
`PromptRules`): it opens a dataset, checks its i-th sample and says how the sample fares (`Outcome`:
errors, dropped or truncated, and its plan row). The loop:

- visits every sample of every source exactly once, in chunks of a few hundred, in worker processes
  (`workers`; None: one per free core, fewer for small sets, whose pool would cost more than it saves),
  each holding the processor once; chunk results are put together in source order, so the report is
  the same, byte for byte, whatever the number of workers;
- shows a progress bar with samples/s and the time left;
- keeps its result in `cache_dir` under a key of the data's fingerprints (size, mtime and a sampled
  hash of every file), the rules and the processor settings: the report (`report.json`) and the
  compact plan (`plan.npy`, memory-mapped when read back). Training and `qwenvl-ft data check` read
  it there instead of checking again.

The check never crashes on data: whatever one sample raises is an error at that sample (the rules
see to it), and a dataset that cannot be opened at all is an error at its path (`open_sources`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .. import __version__
from .plan import SAMPLE_ROW, Plan, select
from .readers import DataError
from .sources import mix

if TYPE_CHECKING:
    from ..config import DataConfig, DatasetSpec
    from ..models.processor import VLProcessor
    from .sources import Source

SMALL = 2000
"""Samples below which the check runs in this process: a pool's start (about a second) costs more."""


@dataclass
class Problem:
    where: str
    message: str


@dataclass
class Outcome:
    """How one sample fares: errors (unusable), else dropped, else usable (a plan row), maybe truncated."""

    errors: list[Problem] = field(default_factory=list)
    dropped: Problem | None = None
    truncated: Problem | None = None
    row: tuple | None = None
    """The plan row's values (the rules' dtype), None when the sample is not usable."""


class Rules(Protocol):
    """What a check checks (module docstring)."""

    unit: str
    """What a sample is called in the progress bar: sample, pair, prompt."""
    dtype: np.dtype
    """The plan row of a usable sample."""

    def open(self, spec: DatasetSpec, cache_dir: Path | None) -> Source: ...

    def check(self, source: Source, s: int, i: int, processor: VLProcessor) -> Outcome: ...

    def key(self) -> list:
        """Whatever else decides the outcome (limits, modes), for the cache key."""
        ...


@dataclass
class CheckReport:
    samples: int = 0
    errors: list[Problem] = field(default_factory=list)
    dropped: list[Problem] = field(default_factory=list)
    truncated: list[Problem] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan.empty)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def run_check(
    rules: Rules,
    sources: list[Source],
    processor: VLProcessor,
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> CheckReport:
    """Check every sample of every source (module docstring); read the cached result when there is one."""
    cache = _cache_dir(rules, sources, processor, cache_dir)
    if cache is not None and (cache / "done").is_file():
        return _load(cache)
    total = sum(len(s) for s in sources)
    chunks = [
        (s, start, min(start + CHUNK, len(src)))
        for s, src in enumerate(sources)
        for start in range(0, len(src), CHUNK)
    ]
    workers = resolve_workers(workers, total)
    from tqdm.auto import tqdm

    results: dict[int, tuple] = {}
    with tqdm(total=total, desc=f"checking {rules.unit}s", unit=rules.unit, disable=not progress) as bar:
        if workers <= 1:
            for k, chunk in enumerate(chunks):
                results[k] = _check_chunk(rules, sources, processor, *chunk)
                bar.update(chunk[2] - chunk[1])
        else:
            _run_pool(rules, sources, processor, chunks, workers, results, bar)
    report = CheckReport(samples=total)
    rows = []
    for s, source in enumerate(sources):
        if not len(source):  # training on nothing is never what was meant
            report.errors.append(
                Problem(str(source.path), "no samples: the dataset is empty (or blank lines only)")
            )
        for k, (cs, _, _) in enumerate(chunks):
            if cs != s:
                continue
            errors, dropped, truncated, chunk_rows = results[k]
            report.errors += errors
            report.dropped += dropped
            report.truncated += truncated
            rows.append(chunk_rows)
    report.plan = Plan(np.concatenate(rows) if rows else np.zeros(0, rules.dtype))
    if cache is not None:
        _save(report, cache)
    return report


CHUNK = 256
"""Samples per task sent to a worker: small enough to balance, large enough that sending costs nothing."""


def resolve_workers(workers: int | None, total: int) -> int:
    """The worker count to use: as asked (at least 1), else one per free core, and one for a small set."""
    if workers is not None:
        return max(1, workers)
    if total < SMALL:
        return 1
    free = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(free, math.ceil(total / CHUNK)))


# -- the work of one chunk, in this process or a worker -------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(blob: bytes, kept: list[str], silence: bool) -> None:
    """A worker's start: this run's noise settings first (qwenvl_ft/noise.py), then what it checks
    with, unpickled only now, since unpickling imports transformers and whatever it pulls in."""
    from .. import noise

    noise.apply(kept, silence)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the pool is the parallelism
    import torch

    torch.set_num_threads(1)
    rules, sources, processor = pickle.loads(blob)
    _WORKER.update(rules=rules, sources=sources, processor=processor)


def _worker_chunk(s: int, start: int, stop: int) -> tuple:
    return _check_chunk(_WORKER["rules"], _WORKER["sources"], _WORKER["processor"], s, start, stop)


def _check_chunk(rules: Rules, sources: list[Source], processor: VLProcessor, s: int, start: int, stop: int):
    """(errors, dropped, truncated, plan rows) of samples start..stop-1 of source s, in order."""
    errors: list[Problem] = []
    dropped: list[Problem] = []
    truncated: list[Problem] = []
    rows: list[tuple] = []
    for i in range(start, stop):
        out = rules.check(sources[s], s, i, processor)
        errors += out.errors
        if out.dropped:
            dropped.append(out.dropped)
        if out.truncated:
            truncated.append(out.truncated)
        if out.row is not None:
            rows.append(out.row)
    return errors, dropped, truncated, np.array(rows, dtype=rules.dtype)


def _run_pool(rules, sources, processor, chunks, workers, results, bar) -> None:
    import multiprocessing

    # forkserver: workers start from a clean process, not a copy of this one (which may hold threads,
    # a CUDA context or a tokenizer's thread pool, none of which survive a fork).
    ctx = multiprocessing.get_context("forkserver")
    from .. import noise

    with ProcessPoolExecutor(
        workers,
        ctx,
        initializer=_init_worker,
        initargs=(pickle.dumps((rules, sources, processor)), *noise.settings()),
    ) as pool:
        pending = {pool.submit(_worker_chunk, *chunk): k for k, chunk in enumerate(chunks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                k = pending.pop(future)
                results[k] = future.result()
                bar.update(chunks[k][2] - chunks[k][1])


# -- the cache ------------------------------------------------------------------------------------
def _cache_dir(
    rules: Rules, sources: list[Source], processor: VLProcessor, cache_dir: Path | None
) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha256(
        json.dumps(
            [
                type(rules).__name__,
                str(rules.dtype),  # a plan row with other fields is another result
                rules.key(),
                [s.fingerprint() for s in sources],
                [s.spec.format for s in sources],
                [s.spec.image_root for s in sources],
                processor.family.name,
                len(processor.tokenizer),
                processor.min_pixels,
                processor.max_pixels,
                asdict(processor.video_config) if processor.video_config is not None else None,
                processor.thinking,
                getattr(processor, "reasoning_effort", None),
                getattr(processor, "special_text", "error"),
                __version__,
            ],
            default=str,
        ).encode()
    ).hexdigest()[:24]
    return Path(cache_dir) / key


def _save(report: CheckReport, cache: Path) -> None:
    """Written to a temporary folder, then renamed: a reader never sees half a result."""
    tmp = cache.parent / f"{cache.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    text = {
        "samples": report.samples,
        **{k: [asdict(p) for p in getattr(report, k)] for k in ("errors", "dropped", "truncated")},
    }
    (tmp / "report.json").write_text(json.dumps(text))
    report.plan.save(tmp / "plan.npy")
    (tmp / "done").write_text("")
    try:
        os.replace(tmp, cache)
    except OSError:  # another process put the same result there first
        shutil.rmtree(tmp, ignore_errors=True)


def _load(cache: Path) -> CheckReport:
    raw = json.loads((cache / "report.json").read_text())
    return CheckReport(
        samples=raw["samples"],
        errors=[Problem(**p) for p in raw["errors"]],
        dropped=[Problem(**p) for p in raw["dropped"]],
        truncated=[Problem(**p) for p in raw["truncated"]],
        plan=Plan.load(cache / "plan.npy"),
        cached=True,
    )


# -- opening datasets and reporting ---------------------------------------------------------------
def open_sources(
    specs: list[DatasetSpec], rules: Rules, cache_dir: Path | None = None
) -> tuple[list[Source], list[Problem]]:
    """The datasets that open under `rules`, and a problem at each one that cannot be read at all."""
    sources, unreadable = [], []
    for spec in specs:
        try:
            sources.append(rules.open(spec, cache_dir))
        except DataError as e:
            unreadable.append(Problem(e.where or str(spec.path), e.what))
        except Exception as e:  # datasets / pyarrow errors on a broken file
            unreadable.append(Problem(str(spec.path), error_message(e)))
    return sources, unreadable


def check_datasets(
    rules: Rules, specs: list[DatasetSpec], processor: VLProcessor, **kwargs
) -> tuple[list[Source], CheckReport]:
    """`run_check` over datasets still to open: one that cannot be read at all is an error at its path,
    and the check goes on with the others. Returns the sources that opened and the report."""
    sources, unreadable = open_sources(specs, rules, kwargs.get("cache_dir"))
    report = run_check(rules, sources, processor, **kwargs)
    report.errors[:0] = unreadable
    return sources, report


def check_split(
    rules: Rules,
    data: DataConfig,
    processor: VLProcessor,
    seed: int,
    split: str = "train",
    what: str = "data check",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[list[Source], CheckReport, np.ndarray]:
    """Check `data.<split>` under `rules` before training: any error, or nothing usable, is refused
    with the report; else (the sources, the report, the usable items in mixed order)."""
    sources, report = check_datasets(
        rules,
        getattr(data, split),
        processor,
        cache_dir=cache_dir,
        progress=progress,
        workers=data.check_workers,
    )
    if not report.ok:
        raise DataError(
            f"the {what} of data.{split} found {len(report.errors)} error(s); fix them before training "
            f"(qwenvl-ft data check lists them all):\n" + format_report(report, data.max_length, limit=20)
        )
    if not report.plan:
        raise DataError(f"no usable {rules.unit} in data.{split}: " + format_report(report, data.max_length))
    return sources, report, select(report.plan, mix(sources, seed), [len(s) for s in sources])


def error_message(e: BaseException) -> str:
    """An exception as a finding: ours (which say what is wrong and where) as they are, any other
    with its type name, often the only clue (`KeyError: 'x'`)."""
    from .images import ImageError
    from .video import VideoError

    ours = isinstance(e, (DataError, ImageError, VideoError))
    return str(e) if ours else f"{type(e).__name__}: {e}"


def format_report(report: CheckReport, max_length: int, limit: int = 50) -> str:
    """The summary a person reads: counts, images per sample, length percentiles, then each problem."""
    plan = report.plan
    lines = [f"samples: {report.samples}" + ("  (cached result)" if report.cached else "")]
    lines.append(
        f"usable: {len(plan)}   errors: {len(report.errors)}   "
        f"dropped (> {max_length} tokens): {len(report.dropped)}   truncated: {len(report.truncated)}"
    )
    if len(plan):
        values, counts = np.unique(plan.column("images"), return_counts=True)
        lines.append(
            "images per sample: " + ", ".join(f"{n}: {c}" for n, c in zip(values, counts, strict=True))
        )
        with_video = plan.column("videos") > 0
        if with_video.any():
            frames = np.sort(plan.column("video_frames")[with_video])
            videos = int(plan.column("videos")[with_video].sum())
            lines.append(
                f"samples with video: {int(with_video.sum())}, {videos} videos, frames per sample: min "
                f"{frames[0]}, median {frames[len(frames) // 2]}, max {frames[-1]}"
            )
        lengths = np.sort(plan.lengths)
        pct = {q: lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))] for q in (50, 90, 99)}
        lines.append(
            f"tokens per sample: min {lengths[0]}, p50 {pct[50]}, p90 {pct[90]}, p99 {pct[99]}, "
            f"max {lengths[-1]}, total {int(lengths.sum(dtype=np.int64))}"
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


__all__ = [
    "SAMPLE_ROW",
    "CheckReport",
    "Outcome",
    "Problem",
    "Rules",
    "check_datasets",
    "format_report",
    "run_check",
]
