"""Expert parallelism against ZeRO-3 on a mixture of experts: step time and peak memory per GPU, each
beside the planner's estimate. Both sides are our real training command (`qwenvl_ft train` under
torchrun) on the same recipe, data and global batch; only the engine differs.

  # GPUs (one node of 8): Qwen3-VL-30B-A3B LoRA, EP 8 against DeepSpeed ZeRO-3, 12 steps a side
  python bench/bench_expert_parallel.py --nproc 8 --model /models/Qwen3-VL-30B-A3B-Instruct \\
      --recipe recipes/qwen3_vl_moe/30b_a3b_ep_lora.yaml --ep 8 --steps 12
  # its dry run on CPU (gloo, 2 processes, a tiny checkpoint): exercises every path, measures nothing useful
  python bench/bench_expert_parallel.py --nproc 2 --model runs/tiny/qwen3_vl_moe \\
      --recipe recipes/tiny/qwen3_vl_moe_lora.yaml --ep 2 --steps 3 --out /tmp/ep_bench.json

Data: `--data` (any format `qwenvl-ft data check` reads), else the bundled demo set. Step time is the
median of the logged steps after the first two (warm-up: kernels, allocator, NCCL); peak memory is
the largest `peak_mem_gb` any step logged (`torch.cuda.max_memory_allocated`, per rank 0). Each side
also records the planner's per-GPU total and what it says a GPU receives per micro-batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "data/demo/demo.jsonl"


def side(args, name: str, engine: list[str], work: Path) -> dict:
    out = work / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    overrides = [
        f"model.path={args.model}",
        f"data.train=[{{path: {args.data or DEMO}}}]",
        f"train.max_steps={args.steps}",
        "train.logging_steps=1",
        "train.save_steps=100000",
        "train.gradient_accumulation_steps=1",
        "train.report_to=[]",
        f"output.dir={out}",
        "output.overwrite=true",
        *engine,
        *args.override,
    ]
    cmd += ["-m", "qwenvl_ft", "train", args.recipe, *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    result: dict = {"overrides": overrides, "seconds": round(time.perf_counter() - started, 1)}
    if proc.returncode != 0:
        result["failed"] = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
        return result
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h and "train_runtime" not in h]
    runtime = [h["train_runtime"] for h in history if "train_runtime" in h]
    timed = steps[2:] or steps
    result["steps"] = len(steps)
    result["tokens_per_s"] = round(statistics.median(h["tokens_per_s"] for h in timed), 1)
    result["peak_mem_gib"] = max(h.get("peak_mem_gb", 0) for h in steps)
    result["train_runtime_s"] = runtime[0] if runtime else None
    result["loss"] = [round(h["loss"], 4) for h in steps]
    result["planned"] = planned(args, engine)
    return result


def planned(args, engine: list[str]) -> dict:
    from qwenvl_ft.config import load_recipe
    from qwenvl_ft.plan import plan_recipe
    from qwenvl_ft.plan.estimate import precision
    from qwenvl_ft.plan.experts import moved_bytes

    try:
        cfg = load_recipe(args.recipe, [f"model.path={args.model}", *engine, *args.override])
        report = plan_recipe(cfg, nproc=args.nproc)
    except Exception as e:  # the measured figures still stand; say why there is no estimate
        return {"error": f"{type(e).__name__}: {e}"}
    s = report.plan.setup
    return {
        "total_gib": round(report.plan.total_gib, 2),
        "received_gib_per_micro_batch": round(moved_bytes(report.facts, s, precision(s)) / 2**30, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, required=True)
    p.add_argument("--model", required=True, help="a checkpoint folder (the real model, or a tiny one)")
    p.add_argument("--recipe", required=True)
    p.add_argument("--ep", type=int, required=True, help="train.expert_parallel of the EP side")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--data", help="training data (default: the bundled demo set)")
    p.add_argument("--override", nargs="*", default=[], help="more key=value overrides for both sides")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", help="where to write the JSON (default bench/results/expert_parallel.json)")
    args = p.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "qwenvl_ft_ep_bench"
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python bench/bench_expert_parallel.py " + " ".join(sys.argv[1:]),
        "nproc": args.nproc,
        "sides": {
            f"expert_parallel_{args.ep}": side(
                args, "ep", [f"train.expert_parallel={args.ep}", "train.deepspeed=null"], work
            ),
            "zero3": side(args, "zero3", ["train.deepspeed=configs/deepspeed/zero3.json"], work),
        },
    }
    ep, zero = result["sides"].values()
    if "tokens_per_s" in ep and "tokens_per_s" in zero:
        result["ep_over_zero3_tokens_per_s"] = round(ep["tokens_per_s"] / zero["tokens_per_s"], 3)
    text = json.dumps(result, indent=1)
    print(text)
    path = Path(args.out) if args.out else REPO / "bench/results/expert_parallel.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


if __name__ == "__main__":
    main()
