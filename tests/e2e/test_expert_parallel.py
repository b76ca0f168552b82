"""`train.expert_parallel` on transformers' FSDP2 + expert-parallel stack (gloo, CPU) against one process.

Each case trains through the real entry point (ep_worker.py) twice: N ranks with one sample each
and expert parallelism N, and one process with the same N samples in one batch (the same global
batch, in fp32). Compared over 10 optimizer steps:
- every loss and every trainable gradient (after clipping, before the update), within 1e-5;
- the router's load-balancing loss, logged as the whole batch's value;
- the saved weights (a consolidated checkpoint, or the LoRA adapter), which plain transformers loads
  in a fresh process.
The data mixes video, image+video, image and text samples, so ranks hold different media in one step
(the vision tower's FSDP2 gathers must stay in step); two cases pack rows (Qwen3.5's linear
attention restarts at each packed sample). A run resumed from its step-5 checkpoint must give the
same last five losses, and a dispatch that sends tokens to the wrong rank's experts must fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("av", reason="the mixed data has videos: PyAV (av)")

from test_train_video import VIDEO, mixed_data  # noqa: E402

from qwenvl_ft.models import get_family  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ep_worker.py")
STEPS = 10
PACKING = "data.packing=true"

# name: (family, mode, ranks = expert parallel size = rows per step, data file, extra overrides).
# Every epoch must split evenly over the ranks (else the last step's rows differ, accelerate
# repeating rows to fill it): 8 samples unpacked; packed, 2 and 4 rows (checked from the log).
# Qwen3.5-MoE trains with the router balance loss, which counts every token of a row, the padding
# of a shorter row in the one-process batch too: its packed rows are exactly full (the six mixed
# samples and three short ones, 26 + 134 + 68 + 68 + 35 + 93 + 26 + 27 + 31 = 2 x 254 tokens, which
# best-fit decreasing packs into two rows of 254), so that neither run pads.
CASES = {
    "qwen3_5_moe-full-packed-2": ("qwen3_5_moe", "full", 2, "full_rows", (PACKING, "data.pack_length=254")),
    "qwen3_5_moe-lora-4": ("qwen3_5_moe", "lora", 4, "eight", ()),
    "qwen3_vl_moe-full-2": ("qwen3_vl_moe", "full", 2, "eight", ("train.gradient_checkpointing=true",)),
    "qwen3_vl_moe-lora-packed-4": ("qwen3_vl_moe", "lora", 4, "eight", (PACKING, "data.pack_length=110")),
}
RESUMED = "qwen3_vl_moe-full-2"  # also saves at step 5, resumed from there


def launch(work: Path, tag: str, nproc: int, overrides: list[str], wrong: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [str(WORKER), str(work / f"{tag}.pt"), *(["--wrong"] if wrong else []), *overrides]
    log = open(work / f"{tag}.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    proc.tag = tag
    return proc


def finish(work: Path, proc: subprocess.Popen) -> None:
    assert proc.wait(timeout=1800) == 0, (work / f"{proc.tag}.log").read_text()[-6000:]


def overrides(
    work: Path, model: Path, family: str, mode: str, ranks: int, data: str, extra, ep: bool
) -> list[str]:
    packed = [f"data.max_length={e.split('=')[1]}" for e in extra if e.startswith("data.pack_length=")]
    return [
        str(REPO / f"recipes/tiny/{family}_lora.yaml"),
        f"model.path={model}",
        f"data.train=[{{path: {work / 'data' / data}.jsonl}}]",
        "data.num_workers=0",
        "data.group_by_length=false",  # it groups per device batch, which differs between the runs
        f"train.mode={mode}",
        f"train.max_steps={STEPS}",
        "train.save_steps=5",
        "train.logging_steps=1",
        "train.learning_rate=1e-3",
        "train.max_grad_norm=1.0",
        f"train.per_device_batch_size={1 if ep else ranks}",
        *([f"train.expert_parallel={ranks}"] if ep else []),
        *VIDEO,
        *extra,
        *packed,
    ]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> Path:
    """Every case's one-process and expert-parallel run, two at a time (two cores); then the resumed
    run and the wrong dispatch."""
    work = tmp_path_factory.mktemp("ep")
    six = mixed_data(work / "data").read_text()

    def text(q: str, a: str) -> str:
        return (
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            + "\n"
        )

    (work / "data/eight.jsonl").write_text(six + text("Red?", "Yes.") + text("Two plus two?", "Four."))
    extra = text("Hi?", "Hi.") + text("Red?", "Yes.") + text("Red or green?", "Green.")  # 26, 27, 31 tokens
    (work / "data/full_rows.jsonl").write_text(six + extra)
    jobs = []
    for name, (family, mode, ranks, data, extra) in CASES.items():
        for ep in (False, True):
            tag = f"{name}-{'ep' if ep else 'one'}"
            args = overrides(work, tiny_model(family), family, mode, ranks, data, extra, ep)
            jobs.append((tag, ranks if ep else 1, [*args, f"output.dir={work / tag}"]))
    family, mode, ranks, data, extra = CASES[RESUMED]
    resumed = work / f"{RESUMED}-resumed"
    resume_args = overrides(work, tiny_model(family), family, mode, ranks, data, extra, True)
    resumed.mkdir()
    jobs.append(("wrong", ranks, [*resume_args, "train.max_steps=1", f"output.dir={work / 'wrong'}"]))
    jobs.append(("resumed", ranks, [*resume_args, f"output.dir={resumed}", "train.resume=auto"]))
    while jobs:
        batch, jobs = jobs[:2], jobs[2:]
        if batch[-1][0] == "resumed":  # from the EP run's step-5 checkpoint, alone in its folder
            shutil.copytree(work / f"{RESUMED}-ep" / "checkpoint-5", resumed / "checkpoint-5")
        procs = [launch(work, tag, n, args, wrong=tag == "wrong") for tag, n, args in batch]
        for proc in procs:
            finish(work, proc)
    for name, (family, _, ranks, _, extra) in CASES.items():
        if PACKING in extra:  # the one-process batch and the N ranks' rows must be the same rows
            log = (work / f"{name}-ep.log").read_text()
            packed = re.search(
                r"packing: \d+ samples into (\d+) rows of \d+ tokens, ([\d.]+)% of each row", log
            )
            assert packed and int(packed[1]) % ranks == 0, (
                f"{name}: {packed and packed[0]}; choose a pack_length giving a multiple of {ranks} rows"
            )
            if get_family(family).router_aux_loss:
                assert packed[2] == "100.0", f"{name}: {packed[0]}: rows must be full (no padding)"
    return work


def history(out: Path, key: str) -> list[float]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in log if key in h and "train_runtime" not in h]


def gradient_gap(a: list[dict], b: list[dict]) -> tuple[float, str]:
    """The largest absolute difference of any trainable gradient at any step, and where."""
    assert len(a) == len(b) and a, (len(a), len(b))
    worst = (0.0, "")
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys() and len(x) > 3, set(x) ^ set(y)
        for name in x:
            gap = (x[name] - y[name]).abs().max().item()
            worst = max(worst, (gap, f"step {step + 1} {name}"))
    return worst


@pytest.mark.parametrize("name", list(CASES))
def test_losses_and_every_gradient_equal_one_process(runs, name):
    one, ep = runs / f"{name}-one", runs / f"{name}-ep"
    log = (runs / f"{name}-ep.log").read_text()
    assert f"expert parallel: {CASES[name][2]} ranks split" in log  # it ran sharded
    a, b = history(one, "loss"), history(ep, "loss")
    assert len(a) == len(b) == STEPS
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    assert a[-1] < a[0]  # it trained: the curves compared are not flat
    aux_one, aux_ep = history(one, "aux_loss"), history(ep, "aux_loss")
    if get_family(CASES[name][0]).router_aux_loss:  # trained with the balance loss: logged each step
        assert len(aux_one) == STEPS
    assert aux_ep == pytest.approx(aux_one, abs=1e-5)
    gap, where = gradient_gap(torch.load(runs / f"{name}-one.pt"), torch.load(runs / f"{name}-ep.pt"))
    assert gap < 1e-5, where


@pytest.mark.parametrize("name", list(CASES))
def test_saved_weights_equal_one_process_and_load_without_qwenvl_ft(runs, name):
    family, mode, *_ = CASES[name]
    one, ep = runs / f"{name}-one", runs / f"{name}-ep"
    file = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    saved, expected = load_file(str(ep / file)), load_file(str(one / file))
    assert saved.keys() == expected.keys() and len(saved) > 10
    # Adam divides by the root of the squared gradients: where a parameter's steps nearly cancel,
    # roundoff-level gradient differences grow (test_sequence_parallel.py measured 0.4% on one process
    # with 1 vs 2 threads). So: 1e-4 RMS, or within 5% of the tensor's norm.
    for key, tensor in expected.items():
        diff = (saved[key] - tensor).norm()
        assert diff <= 1e-4 * tensor.numel() ** 0.5 or diff <= 5e-2 * tensor.norm(), (key, diff)
    if mode == "full":  # a consolidated checkpoint: plain transformers, one process, no qwenvl_ft
        config = json.loads((ep / "config.json").read_text())
        assert "distributed_config" not in config
        code = (
            "import sys, torch; from transformers import AutoModelForImageTextToText as A; "
            f"m = A.from_pretrained({str(ep)!r}, dtype=torch.float32); "
            "assert 'qwenvl_ft' not in sys.modules; "
            "print(sum(p.double().sum().item() for p in m.parameters()))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        total = sum(t.double().sum().item() for t in saved.values())
        assert float(out.stdout.split()[-1]) == pytest.approx(total, rel=1e-6)


def test_resuming_the_step_5_checkpoint_gives_the_same_last_losses(runs):
    whole, resumed = runs / f"{RESUMED}-ep", runs / f"{RESUMED}-resumed"
    # It resumed (a run from scratch would log the same losses: the runs are deterministic).
    assert f"resuming from {resumed / 'checkpoint-5'}" in (runs / "resumed.log").read_text()
    a, b = history(whole, "loss"), history(resumed, "loss")  # b: steps 1-5 from the checkpoint's state
    assert len(a) == len(b) == STEPS and b[5:] == a[5:], (a, b)
    file = "adapter_model.safetensors" if CASES[RESUMED][1] == "lora" else "model.safetensors"
    a, b = load_file(str(whole / file)), load_file(str(resumed / file))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_a_wrong_dispatch_fails_the_equality(runs):
    one = torch.load(runs / f"{RESUMED}-one.pt")[:1]
    wrong = torch.load(runs / "wrong.pt")
    gap, where = gradient_gap(one, wrong)
    assert gap > 1e-4, (gap, where)  # ten times the tolerance the right dispatch keeps


def test_merge_verifies_an_expert_parallel_adapter(runs, tmp_path):
    """`merge` on an EP run's adapter (a plain PEFT adapter: the LoRA weights were replicated):
    merged and adapter logits compared before anything is written."""
    from qwenvl_ft.merge import merge

    out = tmp_path / "merged"
    result = merge(runs / "qwen3_5_moe-lora-4-ep", out, dtype="fp32", progress=False)
    assert result.kind == "lora" and result.max_logit_diff is not None
    assert result.max_logit_diff <= result.tolerance
    assert "distributed_config" not in json.loads((out / "config.json").read_text())
