"""One rank of the sequence-parallel equality check (run by test_sequence_parallel.py under torchrun).

    torchrun --nproc_per_node N sp_worker.py OUT.json WORK_DIR [--wrong=name] name=tiny_model_dir ...

For each family: a padded batch of an image sample, a video sample (where the generation takes
video) and a text-only sample, one padding column longer where N divides its length (so the model
pads it on), and one packed row of all of them. The reference is the plain model on this process alone, with transformers' own loss (and
the packing isolation one-process training installs); the sharded copy computes each rank's loss as
training does (N x the shard's summed token loss / the batch's count, plus the router balance), its
gradients averaged over the ranks as DDP averages them. Rank 0 writes the largest differences.
`--wrong=name`: also that family with each shard's embeddings taken from the next rank (features
shifted by one shard), as "name/wrong-padded" and "name/wrong-packed".
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from transformers import AutoConfig

from qwenvl_ft.data.collate import PaddingCollator
from qwenvl_ft.data.conversation import Conversation, Segment, Turn
from qwenvl_ft.data.encode import encode
from qwenvl_ft.data.packing import PackingCollator
from qwenvl_ft.models import get_family
from qwenvl_ft.models.ulysses import gather_rows, install, new_group
from qwenvl_ft.training.sequence_parallel import shard_labels, token_loss_sum


def samples(family, processor, work: Path):
    red = Image.new("RGB", (120, 90), (200, 30, 30))
    gen = torch.Generator().manual_seed(0)
    noise = Image.fromarray(torch.randint(0, 255, (70, 140, 3), generator=gen).to(torch.uint8).numpy())
    image = Conversation(
        "image",
        [
            Turn("user", [Segment("image", red), Segment("image", noise), Segment("text", "Compare them.")]),
            Turn("assistant", [Segment("text", "The first is red, the second is noise.")]),
        ],
    )
    text = Conversation(
        "text",
        [
            Turn("user", [Segment("text", "Say hello in French, twice.")]),
            Turn("assistant", [Segment("text", "Bonjour ! Bonjour !")]),
        ],
    )
    encs = [
        encode(image, processor, [red, noise], "all_assistant"),
        encode(text, processor, [], "all_assistant"),
    ]
    if family.video is not None:
        from qwenvl_ft.config import VideoConfig
        from qwenvl_ft.data.clips import load_clip, plan_clip
        from qwenvl_ft.data.synthetic import moving_square_video

        processor.video_config = VideoConfig(num_frames=6, min_pixels=3136, max_pixels=4096)
        path = str(work / f"{family.name}.mp4")
        if dist.get_rank() == 0:
            moving_square_video(path, frames=24, fps=4)
        dist.barrier()
        clip = load_clip(plan_clip(path, processor), processor)
        video = Conversation(
            "video",
            [
                Turn("user", [Segment("video", clip.path), Segment("text", "What moves?")]),
                Turn("assistant", [Segment("text", "A red square, left to right.")]),
            ],
        )
        encs.insert(1, encode(video, processor, [], "all_assistant", [clip]))
    return encs


def batches(family, config, encs, pad):
    padded = {**PaddingCollator(pad, pad_to_multiple_of=None)(encs), "use_cache": False}
    if (
        padded["input_ids"].shape[1] % dist.get_world_size() == 0
    ):  # one more padding column: N must not divide
        fill = {"input_ids": pad, "labels": -100, "attention_mask": 0, "mm_token_type_ids": 0}
        for key, value in fill.items():
            padded[key] = torch.nn.functional.pad(padded[key], (0, 1), value=value)
    rows = [
        (
            e,
            family.position_ids(
                config,
                torch.tensor(e.input_ids),
                torch.tensor(e.mm_token_type_ids),
                image_grid_thw=e.image_grid_thw,
                video_grid_thw=e.video_grid_thw,
                second_per_grid_ts=e.second_per_grid_ts,
            ),
        )
        for e in encs
    ]
    packed = PackingCollator(pad)([rows])
    return {"padded": padded, "packed": packed}


def compare(reference, model, batch, sp) -> dict:
    n = sp.size
    reference.zero_grad()
    out = reference(**batch)
    out.loss.backward()
    ref = {k: p.grad for k, p in reference.named_parameters() if p.grad is not None}

    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets, count = shard_labels(batch["labels"], sp)
    shard = model(**inputs)
    loss = n * token_loss_sum(shard.logits, targets) / count
    if getattr(shard, "aux_loss", None) is not None:
        loss = loss + model.config.get_text_config().router_aux_loss_coef * shard.aux_loss
    loss.backward()
    reported = loss.detach().clone()
    dist.all_reduce(reported)
    worst, worst_rel, name_worst = 0.0, 0.0, ""
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    missing = sorted(set(ref) ^ set(grads))
    for k, g in grads.items():
        g = g.clone()
        dist.all_reduce(g)
        g /= dist.get_world_size()  # DDP's average
        if k not in ref:
            continue
        diff = (g - ref[k]).abs().max().item()
        scale = ref[k].abs().max().item()
        if diff > worst:
            worst, name_worst = diff, k
        worst_rel = max(worst_rel, diff / max(scale, 1e-6))
    return {
        "loss": out.loss.item(),
        "loss_diff": abs(reported.item() / dist.get_world_size() - out.loss.item()),
        "grad_diff": worst,
        "grad_rel": worst_rel,
        "worst": name_worst,
        "params": len(grads),
        "missing": missing,
        "length": int(batch["input_ids"].shape[1]),
        "aux": float(out.aux_loss) if getattr(out, "aux_loss", None) is not None else None,
    }


def shift_embeddings_by_one_shard(language, sp):
    """A wrong sharding, for the test that must catch it: this rank gets the next rank's embeddings."""

    def hook(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        rows, local = embeds.shape[:2]
        flat = embeds.transpose(0, 1).reshape(local, -1)  # gather along the token axis
        every = gather_rows(flat, sp, [local] * sp.size)
        nxt = (sp.rank + 1) % sp.size
        kwargs["inputs_embeds"] = (
            every[nxt * local : (nxt + 1) * local].reshape(local, rows, -1).transpose(0, 1)
        )
        return args, kwargs

    language.register_forward_pre_hook(hook, with_kwargs=True)


def main() -> None:
    out_file, work = Path(sys.argv[1]), Path(sys.argv[2])
    wrong = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--wrong=")), None)
    specs = [a for a in sys.argv[3:] if "=" in a and not a.startswith("--")]
    dist.init_process_group("gloo")
    sp = new_group(dist.get_world_size())
    torch.manual_seed(0)
    results = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        family = get_family(name)
        processor = family.load_processor(path)
        reference = family.load_model(path, dtype=torch.float32, attn_implementation="sdpa").train()
        if hasattr(reference.config.get_text_config(), "num_experts"):  # the router balance joins the loss
            reference.config.get_text_config().output_router_logits = True
        if os.environ.get("SP_WORKER_CHECKPOINTING"):
            reference.gradient_checkpointing_enable({"use_reentrant": False})
        model = copy.deepcopy(reference)
        shifted = copy.deepcopy(reference) if wrong == name else None
        if family.packing_isolation != "positions":
            family.isolate_packed_samples(reference)
        install(model, family, sp)
        if shifted is not None:
            install(shifted, family, sp)
            shift_embeddings_by_one_shard(shifted.get_submodule(family.paths.after_vision), sp)
        encs = samples(family, processor, work)
        pad = processor.tokenizer.pad_token_id
        for kind, batch in batches(family, AutoConfig.from_pretrained(path), encs, pad).items():
            results[f"{name}/{kind}"] = compare(reference, model, batch, sp)
            if shifted is not None:
                results[f"{name}/wrong-{kind}"] = compare(reference, shifted, batch, sp)
    if dist.get_rank() == 0:
        out_file.write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
