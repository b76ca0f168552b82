"""Sequence parallelism (train.sequence_parallel, Ulysses): what spreading a sample over N ranks costs
and saves. Run under torchrun; rank 0 prints the JSON and writes it to bench/results/.

  # CPU (gloo), 2 processes: the vision tower spread by frame against every rank running all of it
  torchrun --nproc_per_node 2 bench/bench_sequence_parallel.py vision

  # GPUs: peak memory and tokens/s of a real-size decoder at 32k / 64k / 128k tokens with N = 1, 2, 4,
  # beside the planner's estimate for the same setup (needs 4 GPUs; weights random, from the
  # published config)
  torchrun --nproc_per_node 4 bench/bench_sequence_parallel.py step --model qwen3_vl-8b
  # its dry run on CPU, on a tiny checkpoint (exercises every code path, measures nothing useful)
  torchrun --nproc_per_node 2 bench/bench_sequence_parallel.py step --model runs/tiny/qwen3_vl \\
      --lengths 256 512 --sp 1 2 --device cpu --out /tmp/sp_step.json

`step` runs the decoder the way LoRA training does without the adapters: weights frozen, the input
embeddings requiring gradients (so every layer keeps what backward needs), gradient checkpointing,
the chunked loss of this rank's shard; a text-only sample of exactly L tokens per group. With
world W and group size N there are W / N groups, each on its own sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rank0() -> bool:
    return dist.get_rank() == 0


def _write(result: dict, out: str | None, name: str) -> None:
    if not _rank0():
        return
    result["command"] = "torchrun --nproc_per_node {} bench/bench_sequence_parallel.py {}".format(
        dist.get_world_size(), " ".join(sys.argv[1:])
    )
    text = json.dumps(result, indent=1)
    print(text)
    path = Path(out) if out else REPO / "bench/results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


# -- vision: spread by frame against replicated -----------------------------------------------


def vision(args) -> None:
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    from qwenvl_ft.models.ulysses import SpreadVision, new_group

    torch.manual_seed(0)
    config = Qwen3VLVisionConfig(
        depth=args.depth,
        hidden_size=args.width,
        intermediate_size=args.width * 4,
        num_heads=args.width // 64,
        out_hidden_size=args.width * 2,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[],
    )
    config._attn_implementation = "sdpa"
    tower = Qwen3VLVisionModel(config).float()
    spread = Qwen3VLVisionModel(config).float()
    spread.load_state_dict(tower.state_dict())
    spread.__class__ = type("SpreadQwen3VLVisionModel", (SpreadVision, Qwen3VLVisionModel), {})
    spread._sp_group = new_group(dist.get_world_size())
    grid = torch.tensor([[args.frames, args.side, args.side]])
    width = 3 * 2 * 16 * 16
    pixels = torch.randn(
        args.frames * args.side * args.side, width, generator=torch.Generator().manual_seed(1)
    )

    def run(model, backward: bool) -> float:
        times = []
        for _ in range(args.repeats):
            dist.barrier()
            start = time.perf_counter()
            with torch.set_grad_enabled(backward):
                out = model(pixels, grid_thw=grid).pooler_output
                if backward:
                    out.float().pow(2).mean().backward()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        return sorted(times)[len(times) // 2]

    with torch.no_grad():
        diff = (
            (tower(pixels, grid_thw=grid).pooler_output - spread(pixels, grid_thw=grid).pooler_output)
            .abs()
            .max()
        )
    sides = {}
    for mode, backward in (("forward (frozen tower)", False), ("forward + backward (trained tower)", True)):
        replicated, spread_s = run(tower, backward), run(spread, backward)
        sides[mode] = {
            "replicated_s": round(replicated, 4),
            "spread_s": round(spread_s, 4),
            "ratio_spread_over_replicated": round(spread_s / replicated, 3),
        }
    _write(
        {
            "what": "Qwen3-VL vision tower per rank: every rank encodes all frames vs each its share (SpreadVision)",
            "ranks": dist.get_world_size(),
            "torch_threads": torch.get_num_threads(),
            "tower": {"depth": args.depth, "width": args.width},
            "video": {"temporal_patches": args.frames, "patches_per_frame": args.side**2},
            "max_abs_diff_spread_vs_replicated": float(diff),
            "median_of": args.repeats,
            **sides,
        },
        args.out,
        "sequence_parallel_vision_cpu.json",
    )


# -- step: memory and throughput against the planner ------------------------------------------


def _model(spec: str, device: str):
    """(family, model, origin): a published config random-initialised in bf16 on `device`, or a
    checkpoint directory as it is (the CPU dry run)."""
    import tempfile

    from transformers import AutoConfig

    from qwenvl_ft.models import FAMILIES, resolve_family

    published = REPO / "qwenvl_ft/models/published" / f"{spec}.json"
    if not published.exists():
        family = resolve_family(spec, None)
        return family, family.load_model(spec, attn_implementation="sdpa").to(device), spec
    model_type = json.loads(published.read_text())["model_type"]
    family = next(f for f in FAMILIES.values() if model_type in f.model_types)
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "config.json").write_text(published.read_text())
        config = AutoConfig.from_pretrained(root)
    torch.manual_seed(0)
    attn = "sdpa"  # whole samples without a mask: causal sdpa (flash / memory-efficient kernels on GPU)
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            pass
    with torch.device(device):
        model = family.model_class()._from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    return family, model, spec


def step(args) -> None:
    from qwenvl_ft.models.ulysses import install, new_group
    from qwenvl_ft.training.loss import loss_in_head
    from qwenvl_ft.training.sequence_parallel import shard_labels

    device = args.device
    world = dist.get_world_size()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rows = []
    for n in args.sp:
        if world % n:
            continue
        family, model, origin = _model(args.model, device)
        model.requires_grad_(False)
        model.gradient_checkpointing_enable({"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
        sp = new_group(n) if n > 1 else None
        if sp is not None:
            install(model, family, sp)
        vocab = model.config.get_text_config().vocab_size
        head = model.get_output_embeddings()
        group = dist.get_rank() // n
        for length in args.lengths:
            gen = torch.Generator().manual_seed(group)  # each group its own sample, its ranks the same
            ids = torch.randint(1000, min(vocab, 100000), (1, length), generator=gen).to(device)
            labels = ids.clone()
            times = []
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                for _ in range(args.repeats):
                    dist.barrier()
                    start = time.perf_counter()
                    if sp is None:
                        count = (labels[:, 1:] != -100).sum()
                        with loss_in_head(head, labels, count):
                            loss = model(input_ids=ids, use_cache=False).logits.reshape(())
                    else:
                        targets, count = shard_labels(labels, sp)
                        with loss_in_head(head, targets, count, shifted=True):
                            loss = model(input_ids=ids, use_cache=False).logits.reshape(()) * n
                    loss.backward()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
                error = None
            except torch.OutOfMemoryError as e:
                peak, error = None, f"out of memory: {str(e).splitlines()[0]}"
            peaks = [None] * world
            dist.all_gather_object(peaks, peak)
            seconds = sorted(times)[len(times) // 2] if times and error is None else None
            rows.append(
                {
                    "tokens": length,
                    "sp": n,
                    "groups": world // n,
                    "step_s": None if seconds is None else round(seconds, 3),
                    "tokens_per_s": None if seconds is None else round(length * (world // n) / seconds, 1),
                    "peak_gib_max_rank": max((p for p in peaks if p is not None), default=None),
                    "error": error,
                    "planned": _planned(args.recipe, origin, length, n, world),
                }
            )
            if _rank0():
                print(json.dumps(rows[-1]), flush=True)
        del model
    _write(
        {
            "what": "decoder forward+backward per rank, frozen weights with input gradients (LoRA-like), "
            "gradient checkpointing, chunked loss; planned = qwenvl-ft plan for the recipe at that length and N",
            "model": args.model,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "world": world,
            "rows": rows,
        },
        args.out,
        f"sequence_parallel_step_{device}.json",
    )


def _planned(recipe: str, model: str, length: int, n: int, world: int) -> dict | None:
    """The planner's per-rank estimate for the recipe with this model, length and N (None: no plan)."""
    from qwenvl_ft.config import load_recipe
    from qwenvl_ft.plan import plan_recipe

    path = model if Path(model).exists() else f"/models/{model}"
    try:
        cfg = load_recipe(
            recipe,
            [f"model.path={path}", f"data.max_length={length}", f"train.sequence_parallel={n}"],
        )
        config = None if Path(model).exists() else model
        plan = plan_recipe(cfg, nproc=world, config=config).plan
    except Exception as e:  # the planner cannot describe this model: say so beside the measurement
        return {"error": f"{type(e).__name__}: {e}"}
    fwd = sum(t.gib for t in plan.terms if t.phase == "fwd")
    return {"total_gib": round(plan.total_gib, 2), "activations_loss_buffers_gib": round(fwd, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    v = sub.add_parser("vision", help="the vision tower spread by frame vs replicated (CPU)")
    v.add_argument("--frames", type=int, default=32, help="temporal patches of the video (2 frames each)")
    v.add_argument("--side", type=int, default=16, help="patches per frame side")
    v.add_argument("--depth", type=int, default=4)
    v.add_argument("--width", type=int, default=512)
    v.add_argument("--repeats", type=int, default=5)
    v.add_argument("--out")
    s = sub.add_parser("step", help="decoder memory and tokens/s at long lengths (GPUs)")
    s.add_argument("--model", default="qwen3_vl-8b", help="a published config name or a checkpoint directory")
    s.add_argument("--recipe", default=str(REPO / "recipes/qwen3_vl/8b_long_video_sp.yaml"))
    s.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    s.add_argument("--sp", type=int, nargs="+", default=[1, 2, 4])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--out")
    args = parser.parse_args()
    dist.init_process_group("nccl" if getattr(args, "device", "cpu") == "cuda" else "gloo")
    try:
        vision(args) if args.what == "vision" else step(args)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
