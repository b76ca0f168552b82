"""Every method runs through the one lifecycle (qwenvl_ft/training/lifecycle.py):

- a fourth objective, registered from this test, trains end to end with no edit to SFT, DPO or GRPO:
  a supervised loss weighted per sample (each answer's mean token NLL, averaged over samples) where
  SFT weighs every answer token alike; its first logged loss equals that loss computed by hand;
- SFT, DPO and GRPO report to TensorBoard and wandb (offline) from the same log lines: the wandb run
  file holds, at every logged step, the values of every TensorBoard scalar (loss, learning rate and
  the method's own: DPO rewards, GRPO rewards and KL).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch

from qwenvl_ft.cli import main
from qwenvl_ft.config import load_recipe
from qwenvl_ft.train import train

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, grounding data, pairs) shared by every run here."""
    root = tmp_path_factory.mktemp("lifecycle")
    model = root / "model"
    flags = ["--small-vocab", "--standin-vision", "--min-pixels", "9216", "--max-pixels", "9216"]
    assert main(["make-tiny", "qwen3_vl", str(model), *flags]) == 0
    assert main(["data", "synth", str(root / "sft"), "--count", "24", "--seed", "1"]) == 0
    assert main(["data", "synth", str(root / "pairs"), "--count", "16", "--seed", "3", "--pairs"]) == 0
    return model, root / "sft" / "data.jsonl", root / "pairs" / "data.jsonl"


# -- a fourth objective --------------------------------------------------------------------------------


def sample_mean_method():
    """The whole of a new method: its data (SFT's samples), its loss, and the lifecycle calls."""
    from qwenvl_ft.data.collate import PaddingCollator
    from qwenvl_ft.data.dataset import build_dataset
    from qwenvl_ft.training.lifecycle import build_policy, fit, trainer_kwargs
    from qwenvl_ft.training.logprobs import sequence_logps
    from qwenvl_ft.training.methods import Method
    from qwenvl_ft.training.trainer import VLTrainer

    class SampleMeanTrainer(VLTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logps, counts = sequence_logps(model, inputs)
            self.record({"answer_tokens": counts.float().mean()})
            loss = (-logps / counts.clamp(min=1)).mean()
            return (loss, None) if return_outputs else loss

    def run(run):
        cfg = run.cfg
        with run.args.main_process_first(local=True):
            dataset, report = build_dataset(cfg.data, run.processor, cfg.train.seed, progress=False)
        policy = build_policy(run, "per-sample mean NLL")
        trainer = SampleMeanTrainer(
            **trainer_kwargs(run, policy, report.plan.media_kinds()),
            train_dataset=dataset,
            data_collator=PaddingCollator(run.processor.tokenizer.pad_token_id),
        )
        trainer.model_accepts_loss_kwargs = False  # a mean over samples; the Trainer averages micro-batches
        return fit(run, policy, trainer, dataset)

    return Method("sample_mean", run, honours=("data.group_by_length",), summary="per-sample mean NLL")


def test_a_fourth_objective_registered_from_a_test_trains_through_the_lifecycle(tiny, tmp_path):
    from qwenvl_ft.data.collate import PaddingCollator
    from qwenvl_ft.models import get_family
    from qwenvl_ft.training.methods import register, unregister

    model_dir, sft_data, _ = tiny
    register(sample_mean_method())
    overrides = [
        f"model.path={model_dir}",
        f"data.train=[{{path: {sft_data}}}]",
        f"output.dir={tmp_path / 'run'}",
        "train.method=sample_mean",
        "train.max_steps=2",
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.logging_steps=1",
        "train.learning_rate=1e-2",
        "data.group_by_length=false",
        "data.num_workers=0",
    ]
    try:
        cfg = load_recipe(TINY / "qwen3_vl_lora.yaml", overrides)
        result = train(cfg)
        # A key the new method does not read is refused like any built-in method's.
        with pytest.raises(ValueError, match="'train.method: sample_mean' does not use 'data.packing'"):
            train(load_recipe(TINY / "qwen3_vl_lora.yaml", [*overrides, "data.packing=true"]))
    finally:
        unregister("sample_mean")
    out = tmp_path / "run"
    meta = json.loads((out / "qwenvl_ft.json").read_text())
    assert meta["method"] == "sample_mean" and (out / "adapter_model.safetensors").is_file()
    logged = [h for h in result.log_history if "loss" in h]
    assert len(logged) == 2 and all(h["answer_tokens"] > 0 for h in logged)

    # By hand: the first batch (the sampler's first two items) under the starting model.
    from qwenvl_ft.data.dataset import build_dataset
    from qwenvl_ft.training.samplers import EpochOrder

    family = get_family("qwen3_vl")
    processor = family.load_processor(str(model_dir), cfg.model.min_pixels, cfg.model.max_pixels)
    dataset, _ = build_dataset(cfg.data, processor, cfg.train.seed, cache_dir=None, progress=False)
    first = list(EpochOrder(len(dataset), cfg.train.seed))[:2]
    batch = PaddingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in first])
    start = family.load_model(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = start(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    keep = targets != -100
    want = ((nll * keep).sum(1) / keep.sum(1)).mean().item()
    assert logged[0]["loss"] == pytest.approx(want, rel=1e-3)


# -- reporting: TensorBoard and wandb from the same log lines ------------------------------------------


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline run's run-*.wandb transaction log (a 7-byte header, then 32 KiB
    blocks of records, each a 7-byte header and a piece of a protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, piece, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero-filled tail
            pos += left
            continue
        piece += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(out.rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


METHODS = {
    "sft": ("qwen3_vl_grounding.yaml", {"train/loss", "train/learning_rate", "train/tokens_per_s"}),
    "dpo": (
        "qwen3_vl_dpo.yaml",
        {"train/loss", "train/learning_rate", "train/rewards/chosen", "train/rewards/margins"},
    ),
    "grpo": ("qwen3_vl_grpo.yaml", {"train/loss", "train/learning_rate", "train/reward", "train/kl"}),
}


@pytest.fixture(scope="module")
def wandb_dir(tmp_path_factory):
    """Offline wandb for this module: wandb reads its environment once per process, so one folder."""
    pytest.importorskip("tensorboard", reason="needs tensorboard: pip install 'qwenvl-ft[tensorboard]'")
    pytest.importorskip("wandb", reason="needs wandb: pip install 'qwenvl-ft[wandb]'")
    folder = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(folder),
            "WANDB_SILENT": "true",
        }.items():
            mp.setenv(name, value)
        yield folder


@pytest.mark.parametrize("method", list(METHODS))
def test_wandb_offline_holds_what_tensorboard_holds(tiny, tmp_path, wandb_dir, method):
    model_dir, sft_data, pairs = tiny
    before = set(wandb_dir.rglob("run-*.wandb"))
    recipe, expected = METHODS[method]
    data = pairs if method == "dpo" else sft_data
    cfg = load_recipe(
        TINY / recipe,
        [
            f"model.path={model_dir}",
            f"data.train=[{{path: {data}}}]",
            "data.eval=[]",
            f"output.dir={tmp_path / 'run'}",
            "train.max_steps=3",
            "train.logging_steps=1",
            "train.per_device_batch_size=2",
            "train.gradient_accumulation_steps=1",
            "train.report_to=[tensorboard, wandb]",
            "data.num_workers=0",
            *(["grpo.num_generations=2", "grpo.max_new_tokens=8"] if method == "grpo" else []),
        ],
    )
    train(cfg)
    scalars = tensorboard_scalars(tmp_path / "run")
    assert expected <= set(scalars), sorted(scalars)
    new = set(wandb_dir.rglob("run-*.wandb")) - before
    assert len(new) == 1, new  # this run's, finished (complete on disk) when train() returned
    rows = {r["train/global_step"]: r for r in wandb_history(new.pop()) if "train/loss" in r}
    assert sorted(rows) == [1, 2, 3]
    for tag, points in scalars.items():
        if not tag.startswith("train/") or tag.startswith(
            ("train/train_", "train/total_flos")
        ):  # the run's summary
            continue
        for step, value in points:
            got = rows[step].get(tag)
            assert got is not None and math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-7), (
                tag,
                step,
                got,
                value,
            )
