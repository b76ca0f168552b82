"""Random access to the lines of a JSONL file at a few bytes a sample, and cheap file fingerprints.

`JsonlIndex` keeps one uint64 byte offset per non-blank line (8 bytes a sample) and, only for the
blank lines a file has (usually none), their positions: a sample's line number is its index plus the
blank lines before it. It is built by scanning the file in 16 MiB blocks with numpy (about 1 GB/s),
never holding the file in memory, and is kept next to the data check's cache under the file's
fingerprint, so a second start memory-maps it instead of reading the file again; loader workers and
check workers share those pages instead of each holding a copy.

A fingerprint is the file's size and modification time plus a hash of three 64 KiB samples (start,
middle, end): what changes when a file is rewritten, without reading a multi-GB file in full.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

BLOCK = 16 << 20
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True  # what bytes.strip() strips
BOM = b"\xef\xbb\xbf"


def fingerprint(path: str | Path) -> list:
    """[resolved path, size, mtime_ns, sampled hash] of one file (module docstring)."""
    p = Path(path).resolve()
    st = p.stat()
    h = hashlib.blake2b(digest_size=12)
    with open(p, "rb") as f:
        for at in sorted({0, max(0, st.st_size // 2 - 32768), max(0, st.st_size - 65536)}):
            f.seek(at)
            h.update(f.read(65536))
    return [str(p), st.st_size, st.st_mtime_ns, h.hexdigest()]


def scan_lines(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(byte offsets of the non-blank lines, 1-based numbers of the blank lines) of a file.

    A line is blank when it holds only spaces, tabs and line ends (and, on the first line, a UTF-8
    byte-order mark)."""
    offsets: list[np.ndarray] = []
    blanks: list[np.ndarray] = []
    start, content, line = 0, False, 1  # the line under way: its offset, content so far, number
    with open(path, "rb") as f:
        pos = 3 if f.read(3) == BOM else 0  # the mark is not content; the first line still starts at 0
        f.seek(pos)
        while block := f.read(BLOCK):
            buf = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(buf == 10)  # a line ends after each newline
            solid = np.cumsum(~_WHITESPACE[buf], dtype=np.int64)
            upto = solid[ends] if len(ends) else np.zeros(0, dtype=np.int64)
            has = np.diff(upto, prepend=0) > 0  # content in each line's part inside this block
            if len(ends):
                has[0] |= content
                starts = np.concatenate([[start], pos + ends[:-1] + 1]).astype(np.uint64)
                offsets.append(starts[has])
                blanks.append(line + np.flatnonzero(~has))
                start, line = pos + int(ends[-1]) + 1, line + len(ends)
                content = bool(solid[-1] - upto[-1] > 0)
            else:
                content = content or bool(solid[-1] > 0)
            pos += len(block)
    if content:
        offsets.append(np.asarray([start], dtype=np.uint64))  # a last line without a newline
    elif start < pos:
        blanks.append(np.asarray([line]))
    cat = np.concatenate
    return (
        cat(offsets).astype(np.uint64) if offsets else np.zeros(0, np.uint64),
        cat(blanks).astype(np.int64) if blanks else np.zeros(0, np.int64),
    )


class JsonlIndex:
    """Byte offsets of a JSONL file's non-blank lines (module docstring)."""

    def __init__(self, path: str | Path, cache_dir: Path | None = None):
        self.path = Path(path)
        self._cached: Path | None = None
        self.offsets, self.blanks = self._load(cache_dir)

    def _load(self, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        if cache_dir is None:
            return scan_lines(self.path)
        key = hashlib.sha256(repr(fingerprint(self.path)).encode()).hexdigest()[:24]
        stem = Path(cache_dir) / "jsonl-index" / key
        self._cached = stem
        if (stem.with_suffix(".blanks.npy")).is_file():
            return np.load(stem.with_suffix(".offsets.npy"), mmap_mode="r"), np.load(
                stem.with_suffix(".blanks.npy")
            )
        offsets, blanks = scan_lines(self.path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        for name, array in (("offsets", offsets), ("blanks", blanks)):  # blanks last: it marks completion
            tmp = stem.parent / f"{key}.{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, stem.with_suffix(f".{name}.npy"))
        return np.load(stem.with_suffix(".offsets.npy"), mmap_mode="r"), blanks

    def __len__(self) -> int:
        return len(self.offsets)

    def line(self, i: int) -> int:
        """The 1-based line number of the i-th non-blank line: i + 1 + the blank lines before it. Blank
        line j (at line b_j) has b_j - 1 - j non-blank lines before it, a non-decreasing count."""
        if not len(self.blanks):
            return i + 1
        before = self.blanks - np.arange(1, len(self.blanks) + 1)
        return i + 1 + int(np.searchsorted(before, i, side="right"))

    def where(self, i: int) -> str:
        """'file:line' of the i-th non-blank line."""
        return f"{self.path}:{self.line(i)}"

    def raw(self, i: int) -> bytes:
        """The i-th non-blank line's bytes."""
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return f.readline()

    def __getstate__(self) -> dict:
        # Into a worker process: a memory-mapped index travels as its file's name, not its bytes.
        state = dict(self.__dict__)
        if self._cached is not None:
            state["offsets"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.offsets is None:
            self.offsets = np.load(self._cached.with_suffix(".offsets.npy"), mmap_mode="r")
