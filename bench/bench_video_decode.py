"""Video decoding on CPU: which decoder `qwenvl_ft.data.video` uses, and how it fetches sampled frames.

    python bench/bench_video_decode.py [--seconds 10] [--fps 30] [--sample 16] [--repeats 3]
        [--torchcodec DIR ...] [--out bench/results/video_decode_cpu.json]

    # a torchcodec to try, kept out of this venv (it must not replace torch):
    pip install --no-deps --target /tmp/tct_0.13.0 torchcodec==0.13.0

Videos: written once by PyAV into a temporary folder, a textured background panning under a moving
square (so motion search has real work): 320x240 and 1280x720, `--seconds` at `--fps`, as H.264
(libx264, veryfast) with x264's default keyframe interval (250) and with one keyframe a second,
MPEG-4 part 2 in AVI (keyframe every 12 frames) and VP9 in WebM (every 60).

PyAV, per video (best of `--repeats`, methods interleaved; each file was just written and read once):
- probe_header: open the container, read frame count and rate from the header;
- probe: `video.probe` (counts frames by demuxing every packet, which headers can overstate);
- sample_sequential: decode from the start, convert only the `--sample` wanted frames to RGB;
- sample_seek_each: for each wanted frame, seek to the keyframe before it and decode up to it
  (what decord's and torchcodec's get-frames-at do);
- sample_module: `video.read_frames` (packet index, decode forward, seek only over groups of
  pictures that hold no wanted frame);
- decode_all: every frame to RGB, through one shared converter (VideoReformatter);
- decode_all_naive: the same with `frame.to_ndarray(format="rgb24")`, a new swscale context per frame.
Wanted frames are `video.sample_indices` with num_frames=`--sample` (linspace over the video).
The three sampling methods must return identical frames (checked).

torchcodec, in a subprocess per `--torchcodec DIR` (a `pip install --no-deps --target DIR torchcodec==X`,
so this venv's torch is not replaced): first imported as installed, then with PyAV's bundled FFmpeg
libraries linked under their standard names on LD_LIBRARY_PATH (torchcodec wheels carry no FFmpeg).
The error of every attempt is recorded. The first that loads is timed: probe (approximate seek
mode: header), probe_exact (scans the file), sample_exact (`get_frames_at`), decode_all (in chunks),
and its sampled frames are compared with PyAV's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VIDEOS = [  # name, width, height, codec, suffix, codec options
    ("320x240 h264 gop250", 320, 240, "libx264", ".mp4", {"preset": "veryfast"}),
    ("320x240 h264 gop30", 320, 240, "libx264", ".mp4", {"preset": "veryfast", "g": "30"}),
    ("1280x720 h264 gop250", 1280, 720, "libx264", ".mp4", {"preset": "veryfast"}),
    ("1280x720 h264 gop30", 1280, 720, "libx264", ".mp4", {"preset": "veryfast", "g": "30"}),
    ("1280x720 mpeg4 gop12", 1280, 720, "mpeg4", ".avi", {"qscale": "4"}),
    (
        "1280x720 vp9 gop60",
        1280,
        720,
        "libvpx-vp9",
        ".webm",
        {"deadline": "realtime", "cpu-used": "8", "g": "60"},
    ),
]


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Best of `repeats` seconds per function, the functions interleaved so that load from other
    jobs on the machine spreads over all of them (callers have read each file once: no cold cache)."""
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t)
    return {k: min(v) for k, v in runs.items()}


# -- test videos -----------------------------------------------------------------------------------
def write_video(
    path: Path, width: int, height: int, codec: str, options: dict, seconds: float, fps: int
) -> int:
    import av
    from PIL import Image

    n = int(seconds * fps)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 8 + n // 4, width // 8 + n // 2, 3), dtype=np.uint8)
    texture = np.asarray(
        Image.fromarray(small).resize((small.shape[1] * 8, small.shape[0] * 8), Image.BICUBIC)
    )
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options
        for t in range(n):
            y, x = 2 * t, 4 * t  # panning camera
            frame = texture[y : y + height, x : x + width].copy()
            s = height // 6
            sx = (t * width // n) % (width - s)
            frame[height // 3 : height // 3 + s, sx : sx + s] = (230, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return n


# -- PyAV ------------------------------------------------------------------------------------------
def probe_header(path: str) -> tuple[int, float]:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        return s.frames, float(s.average_rate)


def sample_sequential(path: str, wanted: list[int]) -> list[np.ndarray]:
    import av
    from av.video.reformatter import VideoReformatter

    out, todo, reformatter = [], list(wanted), VideoReformatter()
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == todo[0]:
                out.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
                todo.pop(0)
                if not todo:
                    break
    return out


def sample_seek_each(path: str, wanted: list[int]) -> list[np.ndarray]:
    """Seek before every wanted frame, as decoders with random access do (constant frame rate assumed)."""
    import av
    from av.video.reformatter import VideoReformatter

    out, reformatter = [], VideoReformatter()
    with av.open(path) as c:
        s = c.streams.video[0]
        start = s.start_time or 0
        step = 1 / (Fraction(s.average_rate) * s.time_base)  # pts units per frame
        for i in wanted:
            target = start + round(i * step)
            c.seek(target, stream=s)
            for frame in c.decode(s):
                if frame.pts >= target:
                    out.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
                    break
    return out


def decode_all(path: str) -> int:
    """Every frame to RGB through one shared converter (as `video.read_frames` converts)."""
    import av
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    with av.open(path) as c:
        return sum(
            1 for f in c.decode(video=0) if reformatter.reformat(f, format="rgb24").to_ndarray() is not None
        )


def decode_all_naive(path: str) -> int:
    """Every frame to RGB by `frame.to_ndarray(format="rgb24")`, which sets up swscale per frame."""
    import av

    with av.open(path) as c:
        return sum(1 for f in c.decode(video=0) if f.to_ndarray(format="rgb24") is not None)


def bench_pyav(path: str, wanted: list[int], repeats: int) -> tuple[dict, list[np.ndarray]]:
    from qwenvl_ft.data import video

    ref = video.read_frames(path, wanted, timeout=None)
    for name, fn in (("sample_sequential", sample_sequential), ("sample_seek_each", sample_seek_each)):
        got = fn(path, wanted)
        if not all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True)):
            raise AssertionError(f"{path}: {name} returns other frames than video.read_frames")
    times = timed(
        {
            "probe_header": lambda: probe_header(path),
            "probe": lambda: video.probe(path, timeout=None),
            "sample_sequential": lambda: sample_sequential(path, wanted),
            "sample_seek_each": lambda: sample_seek_each(path, wanted),
            "sample_module": lambda: video.read_frames(path, wanted, timeout=None),
            "decode_all": lambda: decode_all(path),
            "decode_all_naive": lambda: decode_all_naive(path),
        },
        repeats,
    )
    return times, list(ref)


# -- torchcodec (subprocess) -----------------------------------------------------------------------
def borrowed_ffmpeg(tmp: Path) -> tuple[Path, Path]:
    """PyAV's bundled FFmpeg libraries linked under the names torchcodec asks for (libavutil.so.60 ...)."""
    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    links = tmp / "ffmpeg-from-pyav"
    links.mkdir(exist_ok=True)
    for lib in libs.iterdir():
        m = re.match(
            r"lib(avutil|avcodec|avformat|avdevice|avfilter|swscale|swresample)-[0-9a-f]+\.so\.(\d+)",
            lib.name,
        )
        if m and not (links / f"lib{m[1]}.so.{m[2]}").exists():
            (links / f"lib{m[1]}.so.{m[2]}").symlink_to(lib)
    return links, libs


def import_errors(text: str) -> dict[str, str]:
    """Per FFmpeg major version, the first OSError torchcodec met loading its library for it."""
    errors, current = {}, "import"
    for line in text.splitlines():
        if m := re.match(r"FFmpeg version (\d+)", line.strip()):
            current = f"ffmpeg {m[1]}"
        elif line.startswith(("OSError:", "ImportError:", "ModuleNotFoundError:")) and current not in errors:
            errors[current] = line.split(":", 1)[1].strip()
    return errors or {"import": text.strip().splitlines()[-1] if text.strip() else "unknown"}


def wheel_version(d: str) -> str:
    """torchcodec's version in a --target dir, read without importing it (+cpu / +cu130: the build)."""
    m = re.search(r"__version__ = '([^']+)'", (Path(d) / "torchcodec" / "version.py").read_text())
    return m[1] if m else "unknown"


def try_torchcodec(dirs: list[str], tmp: Path, args) -> dict:
    report: dict = {"attempts": [], "timed": None}
    if not dirs:
        report["note"] = "no --torchcodec DIR given"
        return report
    links, libs = borrowed_ffmpeg(tmp)
    for d in dirs:
        for label, extra in (
            ("as installed", {}),
            ("with PyAV's FFmpeg on LD_LIBRARY_PATH", {"LD_LIBRARY_PATH": f"{links}:{libs}"}),
        ):
            env = {**os.environ, "PYTHONPATH": d, **extra}
            probe = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import torchcodec, torchcodec.decoders; print(torchcodec.__version__)",
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            attempt = {"dir": d, "wheel": wheel_version(d), "how": label, "loaded": probe.returncode == 0}
            if probe.returncode == 0:
                attempt["version"] = probe.stdout.strip()
            else:
                attempt["errors"] = import_errors(probe.stderr)
            report["attempts"].append(attempt)
            if probe.returncode == 0 and report["timed"] is None:
                cmd = [sys.executable, __file__, "--worker", str(tmp), "--repeats", str(args.repeats)]
                run = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if run.returncode != 0:
                    attempt["bench_error"] = run.stderr.strip().splitlines()[-1]
                else:
                    report["timed"] = {"version": attempt["version"], "how": label, **json.loads(run.stdout)}
    return report


def torchcodec_worker(tmp: Path, repeats: int) -> dict:
    """Runs in the subprocess: time torchcodec on the videos listed in tmp/videos.json."""
    import torch
    from torchcodec.decoders import VideoDecoder

    torch.set_num_threads(1)
    out = {}
    for v in json.loads((tmp / "videos.json").read_text()):
        path, wanted = v["path"], v["wanted"]

        def decode_all(path=path):
            d = VideoDecoder(path)
            n = d.metadata.num_frames
            for start in range(0, n, 30):  # chunks: 300 frames of 720p RGB would be 830 MB at once
                d.get_frames_in_range(start, min(n, start + 30))

        def sample(path=path, wanted=wanted):
            return (
                VideoDecoder(path, seek_mode="exact").get_frames_at(wanted).data.permute(0, 2, 3, 1).numpy()
            )

        got = sample()
        ref = np.load(tmp / v["ref"])
        meta = VideoDecoder(path, seek_mode="approximate").metadata
        exact = VideoDecoder(path, seek_mode="exact").metadata
        out[v["name"]] = {
            **timed(
                {
                    "probe": lambda path=path: VideoDecoder(path, seek_mode="approximate").metadata,
                    "probe_exact": lambda path=path: VideoDecoder(path, seek_mode="exact").metadata,
                    "sample_exact": sample,
                    "decode_all": decode_all,
                },
                repeats,
            ),
            "frames_header": meta.num_frames,
            "frames_exact": exact.num_frames,
            "max_abs_diff_vs_pyav": int(np.abs(got.astype(int) - ref.astype(int)).max()),
            "mean_abs_diff_vs_pyav": float(np.abs(got.astype(int) - ref.astype(int)).mean()),
        }
    return out


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--sample", type=int, default=16, help="frames sampled per video")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torchcodec", action="append", default=[], metavar="DIR", help="a pip --target dir")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "video_decode_cpu.json")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(torchcodec_worker(args.worker, args.repeats)))
        return

    import av
    import torch

    from qwenvl_ft.data import video

    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with another job), OMP_NUM_THREADS="
        + os.environ.get("OMP_NUM_THREADS", "unset"),
        "pyav": av.__version__,
        "torch": torch.__version__,
        "ffmpeg_in_pyav": ".".join(map(str, av.library_versions["libavcodec"])) + " (libavcodec)",
        "sample": args.sample,
        "videos": [],
        "pyav_s": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        listed = []
        for name, w, h, codec, suffix, options in VIDEOS:
            path = tmp / (name.replace(" ", "_") + suffix)
            t = time.perf_counter()
            n = write_video(path, w, h, codec, options, args.seconds, args.fps)
            info = video.probe(path, timeout=None)
            wanted = video.sample_indices(info, video.FrameRules(), num_frames=args.sample)
            with av.open(str(path)) as c:
                keyframes = sum(p.is_keyframe for p in c.demux(video=0) if p.size)
            result["videos"].append(
                {
                    "name": name,
                    "frames": n,
                    "probed_frames": info.frames,
                    "keyframes": keyframes,
                    "bytes": path.stat().st_size,
                }
            )
            print(
                f"wrote {name}: {n} frames, {keyframes} keyframes, {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            times, ref = bench_pyav(str(path), wanted, args.repeats)
            result["pyav_s"][name] = times
            ref_name = path.stem + ".npy"
            np.save(tmp / ref_name, np.stack(ref))
            listed.append({"name": name, "path": str(path), "wanted": wanted, "ref": ref_name})
        (tmp / "videos.json").write_text(json.dumps(listed))
        result["torchcodec"] = try_torchcodec(args.torchcodec, tmp, args)

    result["module_over_sequential"] = {
        k: round(v["sample_sequential"] / v["sample_module"], 2) for k, v in result["pyav_s"].items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print_table(result)


def print_table(result: dict) -> None:
    cols = ["probe_header", "probe", "sample_sequential", "sample_seek_each", "sample_module", "decode_all"]
    cols += ["decode_all_naive"]
    print("\nPyAV, ms (best of repeats)\n| video | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, t in result["pyav_s"].items():
        print(f"| {name} | " + " | ".join(f"{t[c] * 1000:.1f}" for c in cols) + " |")
    timed = result["torchcodec"].get("timed")
    if timed:
        cols = ["probe", "probe_exact", "sample_exact", "decode_all"]
        print(
            f"\ntorchcodec {timed['version']} ({timed['how']}), ms (best of repeats)\n| video | "
            + " | ".join(cols)
            + " |"
        )
        print("|---" * (len(cols) + 1) + "|")
        for name, t in timed.items():
            if isinstance(t, dict):
                print(f"| {name} | " + " | ".join(f"{t[c] * 1000:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
