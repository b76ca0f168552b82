"""The data path at scale: the check's throughput with 1..k workers, the time to the first training
step with and without the check's cache, peak memory, against the transformers processor path.

    python bench/bench_data_scale.py --samples 100000 --workers 1,2 --out bench/results/data_scale_100k_cpu.json
    python bench/bench_data_scale.py --samples 1000000 --workers 2 --no-sweep --out bench/results/data_scale_1m_cpu.json

Data (generated once under --root, reused by later runs): `messages` JSONL, one image and one
question / answer a sample, like a captioning or VQA set. `--images shared` (default): 50 camera-like
JPEGs of 0.3-0.9 MP (synthetic_photo.camera_photo, quality 90) named by every sample in turn, as
the 100,000-sample measurement of the issue did; `--images unique`: one JPEG a sample (slow to write).

Measured, in one run, on one machine:
- check: `check_specs` (what `qwenvl-ft data check` and training run: each image decoded, exact token
  counts) with each worker count of --workers, no cache: samples/s, CPU seconds a sample (this process
  and its workers), and the efficiency against k x one worker;
- baseline: the transformers processor path on the first --baseline samples, one process: what
  `datasets.map` preprocessing runs per sample (`apply_chat_template`, the PIL image processor,
  `<|image_pad|>` expanded, the tokenizer; bench_encode.baseline_encode): samples/s;
- start: `qwenvl-ft train` (a tiny Qwen2.5-VL built here, --steps steps, 2 loader workers, the check with
  --workers[-1] workers) in a fresh process, twice with a fresh cache folder: wall seconds from the
  command to its first logged step, uncached then cached; the peak resident memory (VmHWM) of the
  training process and of each loader worker; and, from the same start on --small samples, the growth
  of the training process's peak memory per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

QUESTIONS = ["What is in the picture?", "Describe the image.", "What colour is the largest object?",
             "How many objects are there?", "Where is the brightest area?"]  # fmt: skip


def make_images(root: Path, count: int, seed: int) -> list[str]:
    from qwenvl_ft.data.synthetic_photo import camera_photo

    rng = random.Random(seed)
    names = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        name = f"images/{k:07d}.jpg"
        if not (root / name).is_file():
            area = rng.uniform(0.3e6, 0.9e6)
            ratio = rng.uniform(0.6, 1.7)
            w, h = int((area * ratio) ** 0.5), int((area / ratio) ** 0.5)
            camera_photo((w, h), seed=k).save(root / name, quality=90)
        names.append(name)
    return names


def make_data(root: Path, samples: int, images: str, seed: int = 0) -> Path:
    """root/data-N-images.jsonl (written once)."""
    path = root / f"data-{samples}-{images}.jsonl"
    if path.is_file():
        return path
    names = make_images(root, 50 if images == "shared" else samples, seed)
    rng = random.Random(seed)
    with open(path.with_suffix(".tmp"), "w") as f:
        for i in range(samples):
            q = rng.choice(QUESTIONS)
            a = " ".join(
                rng.choice(["a", "red", "blue", "shape", "near", "the", "top", "left"]) for _ in range(12)
            )
            record = {"id": i, "messages": [{"role": "user", "content": f"<image>{q}"},
                                            {"role": "assistant", "content": a}], "images": [names[i % len(names)]]}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    os.replace(path.with_suffix(".tmp"), path)
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def check_sweep(data: Path, model: Path, max_pixels: int, workers: list[int]) -> list[dict]:
    from qwenvl_ft.config import DatasetSpec
    from qwenvl_ft.data.check import check_specs
    from qwenvl_ft.models import resolve_family

    proc = resolve_family(str(model)).load_processor(str(model), None, max_pixels)
    out = []
    for k in workers:
        start, cpu = time.perf_counter(), cpu_seconds()
        _, report = check_specs(
            [DatasetSpec(path=str(data))], proc, 2048, workers=k, cache_dir=None, progress=False
        )
        wall = time.perf_counter() - start
        n = report.samples
        # CPU time is this process's own only with one worker: pool workers are the forkserver's children.
        cpu_s = round((cpu_seconds() - cpu) / n, 5) if k == 1 else None
        out.append({"workers": k, "samples": n, "usable": len(report.plan), "seconds": round(wall, 2),
                    "samples_per_s": round(n / wall, 1), "cpu_s_per_sample": cpu_s})  # fmt: skip
        print(f"check, {k} worker(s): {n} samples in {wall:.1f} s, {n / wall:.0f}/s", flush=True)
    one = out[0]["samples_per_s"] if out and out[0]["workers"] == 1 else None
    for r in out:
        if one:
            r["efficiency_vs_k_x_one"] = round(r["samples_per_s"] / (r["workers"] * one), 3)
    return out


def baseline(data: Path, model: Path, max_pixels: int, count: int) -> dict:
    from bench_encode import baseline_encode

    from qwenvl_ft.models import resolve_family

    proc = resolve_family(str(model)).load_processor(str(model), None, max_pixels)
    part = data.parent / f"baseline-{count}.jsonl"
    with open(data) as f, open(part, "w") as g:
        for _ in range(count):
            g.write(f.readline())
    start = time.process_time()
    wall = baseline_encode(part, proc)
    cpu = time.process_time() - start
    print(f"transformers processor path: {count} samples in {wall:.1f} s, {count / wall:.0f}/s", flush=True)
    return {"samples": count, "seconds": round(wall, 2), "samples_per_s": round(count / wall, 1),
            "cpu_s_per_sample": round(cpu / count, 5)}  # fmt: skip


def tree_peaks(root_pid: int, peaks: dict, stop: threading.Event) -> None:
    """Poll the process tree under root_pid: per process, (VmHWM, its command line, the largest RssAnon
    seen), in MiB. VmHWM is the peak resident memory; RssAnon its private part (the rest is file pages:
    memory-mapped plans and indexes, libraries, shared with other processes)."""
    while not stop.is_set():
        for pid in _tree(root_pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            kb = {
                ln.split(":")[0]: int(ln.split()[1])
                for ln in status.splitlines()
                if ln.startswith(("VmHWM", "RssAnon"))
            }
            old = peaks.get(pid, (0.0, "", 0.0))
            peaks[pid] = (
                max(kb.get("VmHWM", 0) / 1024, old[0]),
                cmd[:80],
                max(kb.get("RssAnon", 0) / 1024, old[2]),
            )
        time.sleep(0.2)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


def start_to_first_step(
    data: Path, model: Path, home: Path, out: Path, workers: int, steps: int, max_pixels: int
) -> dict:
    """`qwenvl-ft train` in a fresh process: seconds to its first logged step, peak memory."""
    cmd = [sys.executable, "-m", "qwenvl_ft", "train", str(REPO / "recipes/tiny/qwen2_5_vl_lora.yaml"),
           f"model.path={model}", f"output.dir={out}", "output.overwrite=true", f"data.train=[{{path: {data}}}]",
           "data.max_length=2048", f"model.max_pixels={max_pixels}", "data.num_workers=2",
           f"data.check_workers={workers}", f"train.max_steps={steps}", "train.logging_steps=1",
           "train.save_steps=100000", "train.per_device_batch_size=1"]  # fmt: skip
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    peaks: dict = {}
    stop = threading.Event()
    poll = threading.Thread(target=tree_peaks, args=(proc.pid, peaks, stop), daemon=True)
    poll.start()
    first = None
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if first is None and "'loss'" in line:
            first = time.perf_counter() - start
    proc.wait()
    stop.set()
    poll.join()
    if proc.returncode != 0:
        raise RuntimeError("training failed:\n" + "".join(tail))
    main, _, anon = peaks.get(proc.pid, (0.0, "", 0.0))
    # The check's workers start from multiprocessing's forkserver (its command line says so); the
    # loader workers are forks of the training process.
    others = [(v, cmd, a) for pid, (v, cmd, a) in peaks.items() if pid != proc.pid]
    loaders = sorted((round(v, 1), round(a, 1)) for v, cmd, a in others if "multiprocessing" not in cmd)
    return {
        "seconds_to_first_step": round(first, 1) if first else None,
        "seconds_total": round(time.perf_counter() - start, 1),
        "peak_rss_mib_main": round(main, 1),
        "peak_rss_anon_mib_main": round(anon, 1),
        "peak_rss_mib_loader_workers": [v for v, _ in loaders],
        "peak_rss_anon_mib_loader_workers": [a for _, a in loaders],
        "peak_rss_mib_check_workers": sorted(round(v, 1) for v, cmd, _ in others if "multiprocessing" in cmd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--images", choices=["shared", "unique"], default="shared")
    ap.add_argument("--workers", default="1,2", help="worker counts of the check sweep, comma-separated")
    ap.add_argument(
        "--no-sweep", action="store_true", help="skip the check sweep (the start's own check remains)"
    )
    ap.add_argument(
        "--baseline", type=int, default=1000, help="samples through the transformers path (0: skip)"
    )
    ap.add_argument(
        "--small", type=int, default=1000, help="samples of the small start (memory growth per sample)"
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-pixels", type=int, default=1003520)
    ap.add_argument("--root", default="/tmp/qwenvl-ft-bench-data", help="where data and the model are kept")
    ap.add_argument("--home", help="the cache folder (HOME) of an earlier run: skip the uncached start")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]

    from qwenvl_ft.cli import main as cli

    model = root / "model"
    if not (model / "config.json").is_file():
        assert cli(["make-tiny", "qwen2_5_vl", str(model), "--force"]) == 0
    t0 = time.perf_counter()
    data = make_data(root, args.samples, args.images)
    small = make_data(root, args.small, args.images)
    print(f"data: {data} ({time.perf_counter() - t0:.0f} s to make or find)", flush=True)
    result = {
        "command": "python bench/bench_data_scale.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "samples": args.samples, "images": args.images, "max_pixels": args.max_pixels,
    }  # fmt: skip
    if not args.no_sweep:
        result["check"] = check_sweep(data, model, args.max_pixels, workers)
    if args.baseline:
        result["transformers_path"] = baseline(data, model, args.max_pixels, args.baseline)
        if not args.no_sweep:
            result["check_vs_transformers_cpu_per_sample"] = round(
                result["transformers_path"]["cpu_s_per_sample"] / result["check"][0]["cpu_s_per_sample"], 1
            )
    home = Path(args.home) if args.home else root / f"home-{time.time_ns()}"  # fresh: the first start checks
    starts = [("cached", data), ("small_cached", small), ("small_cached_again", small)]
    if not args.home:
        starts.insert(0, ("uncached", data))
    runs = {}
    for name, d in starts:
        runs[name] = start_to_first_step(
            d, model, home, root / "run", workers[-1], args.steps, args.max_pixels
        )
        print(f"start, {name}: {runs[name]}", flush=True)
    result["start"] = runs
    for key in ("peak_rss_mib_main", "peak_rss_anon_mib_main"):
        growth = runs["cached"][key] - runs["small_cached_again"][key]
        name = key.replace("_mib_main", "")
        result[f"main_{name}_growth_bytes_per_sample"] = round(
            growth * 2**20 / (args.samples - args.small), 1
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
