"""qwenvl_ft/cli/quiet.py: which optional libraries a command keeps, what the filters drop, and
that a real warning still prints. Filters and import blocks are process-wide, so the checks that
install them run in a fresh interpreter."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qwenvl_ft import noise
from qwenvl_ft.cli import build_parser, main, quiet

REPO = Path(__file__).resolve().parents[3]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_real_warnings_and_log_records_still_print_after_the_filters():
    proc = python(
        """
        import logging, warnings
        from qwenvl_ft.cli import quiet
        quiet.silence_known_noise()
        logging.basicConfig(format="LOG %(name)s %(message)s")
        # the known ones
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logging.getLogger("torch.utils._pytree").warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type.", "<enum 'X'>")
        # real ones: same loggers or categories, other messages
        warnings.warn("something real")
        warnings.warn("`other_thing` is deprecated", FutureWarning)
        logging.getLogger("torchao").warning("torchao: a real problem")
        logging.getLogger("DeepSpeed").warning("DeepSpeed: a real problem")
        logging.getLogger("transformers.modeling_utils").warning("transformers: a real problem")
        """
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for real in (
        "UserWarning: something real",
        "FutureWarning: `other_thing` is deprecated",
        "LOG torchao torchao: a real problem",
        "LOG DeepSpeed DeepSpeed: a real problem",
        "LOG transformers.modeling_utils transformers: a real problem",
    ):
        assert real in err, err
    for known in ("is_gradient_checkpointing", "_C_mxfp8", "Enum subclass"):
        assert known not in err, err
    # DeepSpeed's line is harmless only where torch sees no GPU.
    assert ("Setting accelerator" in err) == torch.cuda.is_available(), err


def test_a_cpu_only_record_prints_where_a_gpu_is_seen(monkeypatch):
    drop = noise._DropKnown([r"Setting accelerator to CPU"], cpu_only=True)
    record = logging.LogRecord(
        "DeepSpeed", logging.WARNING, "x.py", 1, "Setting accelerator to CPU.", (), None
    )
    monkeypatch.setattr(noise, "_sees_a_gpu", lambda: False)
    assert drop.filter(record) is False
    monkeypatch.setattr(noise, "_sees_a_gpu", lambda: True)
    assert drop.filter(record) is True
    other = logging.LogRecord("DeepSpeed", logging.WARNING, "x.py", 1, "a real problem", (), None)
    assert noise._DropKnown([r"Setting accelerator to CPU"]).filter(other) is True


def test_kept_out_libraries_look_uninstalled_and_are_named_when_imported():
    proc = python(
        """
        import importlib.util
        from qwenvl_ft import noise
        noise.keep_out({"deepspeed"})
        assert importlib.util.find_spec("deepspeed") is None  # what availability checks call
        try:
            import deepspeed.comm
        except ModuleNotFoundError as e:
            print("kept out:", noise.kept_out(e))
        try:
            import no_such_module_here
        except ModuleNotFoundError as e:
            print("missing:", noise.kept_out(e))
        """
    )
    assert proc.stdout.splitlines() == ["kept out: deepspeed", "missing: None"], proc.stderr


def test_importing_the_cli_imports_no_optional_library_and_no_torch():
    proc = python(
        """
        import sys
        import qwenvl_ft.cli
        heavy = ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "gptqmodel", "torchao")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def write_checkpoint(path: Path, quant_method: str | None = None, **meta) -> Path:
    path.mkdir(parents=True)
    config = {"model_type": "qwen2_5_vl"}
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method, "bits": 4}
    (path / "config.json").write_text(json.dumps(config))
    if meta:
        (path / "qwenvl_ft.json").write_text(json.dumps(meta))
    return path


def test_needed_libraries_follow_checkpoints_runs_and_flags(tmp_path):
    plain = write_checkpoint(tmp_path / "plain")
    gptq = write_checkpoint(tmp_path / "gptq", "gptq")
    bnb = write_checkpoint(tmp_path / "bnb", "bitsandbytes")
    odd = write_checkpoint(tmp_path / "odd", "some_new_method")
    lora_on_gptq = write_checkpoint(tmp_path / "run-gptq", base_model=str(gptq), mode="lora")
    qlora_run = write_checkpoint(tmp_path / "run-qlora", base_model=str(plain), mode="qlora")
    zero_run = write_checkpoint(tmp_path / "run-zero", base_model=str(plain), mode="full")
    (zero_run / "global_step10").mkdir()

    def needed(command: str, **kw) -> set[str]:
        return quiet.needed_libraries(argparse.Namespace(command=command, **kw))

    assert needed("predict", model=str(plain), base=None) == set()
    assert needed("predict", model=str(gptq), base=None) == {"gptqmodel", "torchao"}
    assert needed("chat", model=str(lora_on_gptq), base=None) == {"gptqmodel", "torchao"}
    assert needed("merge", run_dir=str(lora_on_gptq), base=str(plain)) == {"gptqmodel", "torchao"}
    assert needed("predict", model=str(bnb), base=None) == {"bitsandbytes"}
    assert needed("predict", model=str(odd), base=None) == set(quiet.OPTIONAL)  # unknown: keep all
    assert needed("predict", model=str(qlora_run), base=None) == {"bitsandbytes"}
    assert needed("merge", run_dir=str(zero_run), base=None) == {"deepspeed"}
    assert needed("make-tiny", out_dir=str(tmp_path / "new"), int4=True) == {"gptqmodel", "torchao"}
    assert needed("data", data=["x.jsonl"], model=None) == set()


def test_needed_libraries_of_a_train_come_from_its_recipe(tmp_path):
    plain = write_checkpoint(tmp_path / "plain")
    gptq = write_checkpoint(tmp_path / "gptq", "gptq")
    recipe = REPO / "recipes/tiny/qwen2_5_vl_lora.yaml"

    def needed(*overrides: str) -> set[str]:
        args = argparse.Namespace(command="train", recipe=str(recipe), overrides=list(overrides))
        return quiet.needed_libraries(args)

    assert needed(f"model.path={plain}") == set()
    assert needed(f"model.path={gptq}") == {"gptqmodel", "torchao"}
    assert needed(f"model.path={plain}", "train.mode=qlora", "model.dtype=bf16") == {"bitsandbytes"}
    assert needed(f"model.path={plain}", "train.deepspeed=configs/deepspeed/zero2.json") == {"deepspeed"}
    # A recipe that does not load needs nothing: the command stops on it with its error.
    assert needed("train.no_such_key=1") == set()


@pytest.mark.parametrize(
    "argv, verbose",
    [
        (["train", "r.yaml"], False),
        (["--verbose", "train", "r.yaml"], True),
        (["train", "r.yaml", "train.max_steps=2", "--verbose"], True),
        (["data", "check", "x.jsonl", "--family", "qwen2_vl", "--verbose"], True),
        (["config", "show", "r.yaml"], False),
    ],
)
def test_verbose_before_or_after_the_command(argv, verbose, monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    assert quiet.is_verbose(build_parser().parse_args(argv)) is verbose


def test_verbose_from_the_environment(monkeypatch):
    args = build_parser().parse_args(["train", "r.yaml"])
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    assert quiet.is_verbose(args)
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    assert not quiet.is_verbose(args)


def test_main_called_with_arguments_leaves_the_process_alone(capsys):
    before = {name: sys.modules.get(name, "absent") for name in quiet.OPTIONAL}
    deepspeed_filters = list(logging.getLogger("DeepSpeed").filters)
    assert main(["config", "show", str(REPO / "recipes/tiny/qwen2_5_vl_lora.yaml")]) == 0
    assert {name: sys.modules.get(name, "absent") for name in quiet.OPTIONAL} == before
    assert logging.getLogger("DeepSpeed").filters == deepspeed_filters
