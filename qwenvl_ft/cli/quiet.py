"""Keep the `qwenvl-ft` output to what qwenvl-ft says, without hiding a real warning.

The noise had two sources, and each has its own remedy:

1. Libraries a command does not use. transformers, peft and accelerate import deepspeed,
   bitsandbytes, gptqmodel and torchao whenever they are installed, whatever the run does: peft
   imports bitsandbytes at `import peft` and gptqmodel when it wraps a layer in LoRA, accelerate
   imports deepspeed to unwrap a model, transformers imports torchao with its quantizers. Each one
   prints at import (torchao's failed `.so` loads and torch `_pytree` deprecations, bitsandbytes'
   `kernels` notice, DeepSpeed's "Setting accelerator to CPU", GPT-QModel's banner and "GIL is
   enabled"), and gptqmodel also sets PYTORCH_ALLOC_CONF and CUDA_DEVICE_ORDER for the process.
   `keep_out` makes the libraries a command does not need look absent (`sys.modules[name] = None`:
   `import` raises ModuleNotFoundError, and `importlib.util.find_spec`, which every availability
   check above calls, returns None), so nobody imports them. `needed_libraries` decides from what
   the command is given, before anything has been imported: a recipe's Q-LoRA mode or DeepSpeed
   config, a quantized checkpoint named on the command line or recorded as a run's base, ZeRO shards
   to gather, `make-tiny --int4`.

2. Known-harmless messages from what is imported: `silence_known_noise` drops exactly the warnings
   and log records listed below (by category or logger, and message). Anything else, every warning
   of our own included, still prints. gptqmodel prints past `logging`, so a command that needs it
   imports it first with its output sent to a file (`import_gptqmodel_quietly`).

`qwenvl-ft --verbose ...` (or QWENVL_FT_VERBOSE=1) turns 2 off. 1 stays on either way, so a
verbose run imports the same libraries as a quiet one. Only the process's own command line is
quieted (`cli.main()` without arguments: the `qwenvl-ft` script, `python -m qwenvl_ft`, each
torchrun rank); `main([...])` called from Python leaves the caller's process alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from ..noise import OPTIONAL, keep_out, silence_known_noise  # the means; this module decides

VERBOSE_ENV = "QWENVL_FT_VERBOSE"

GPTQ = {"gptqmodel", "torchao"}  # transformers loads GPTQ through gptqmodel, which uses torchao
QUANT_LIBRARIES = {"gptq": GPTQ, "awq": GPTQ, "bitsandbytes": {"bitsandbytes"}, "torchao": {"torchao"}}


def is_verbose(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "verbose", False)) or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_process(args: argparse.Namespace) -> None:
    """Everything this module does, for the command in `args`."""
    needed = needed_libraries(args)
    keep_out(set(OPTIONAL) - needed)
    if not is_verbose(args):
        silence_known_noise()
        if "gptqmodel" in needed:
            import_gptqmodel_quietly()


# -- 1. libraries a command does not use -------------------------------------------------------------
def needed_libraries(args: argparse.Namespace) -> set[str]:
    """The optional libraries the command in `args` may use."""
    needed: set[str] = set()
    # Every existing directory named on the command line: a model, a run, a base, an output.
    dirs = [Path(v) for v in vars(args).values() if isinstance(v, str) and v and Path(v).is_dir()]
    if args.command == "train":
        from ..config import load_recipe

        try:
            cfg = load_recipe(args.recipe, args.overrides)
        except Exception:  # the command stops on the same recipe, with its error, before any model
            return set()
        dirs.append(Path(cfg.model.path))
        if cfg.train.mode == "qlora":
            needed.add("bitsandbytes")
        if cfg.train.deepspeed:
            needed.add("deepspeed")
    if getattr(args, "int4", False):  # make-tiny --int4 writes a GPTQ checkpoint and loads it back
        needed |= GPTQ
    for d in dirs:
        needed |= checkpoint_libraries(d)
    return needed


def checkpoint_libraries(path: Path, follow_base: bool = True) -> set[str]:
    """What loading the checkpoint or run at `path` may need: its quantization library, those of the
    base a run records, DeepSpeed for ZeRO shards (merge gathers them)."""
    needed: set[str] = set()
    config = _read_json(path / "config.json")
    if "quantization_config" in config:
        method = str(config["quantization_config"].get("quant_method", "")).lower()
        needed |= QUANT_LIBRARIES.get(method, set(OPTIONAL))  # an unknown method: keep all
    meta = _read_json(path / "qwenvl_ft.json")
    if meta.get("mode") == "qlora":
        needed.add("bitsandbytes")
    if next(path.glob("global_step*"), None) is not None:
        needed.add("deepspeed")
    if follow_base and meta.get("base_model"):
        needed |= checkpoint_libraries(Path(meta["base_model"]), follow_base=False)
    return needed


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- 2. known-harmless messages ----------------------------------------------------------------------
def import_gptqmodel_quietly() -> None:
    """Import gptqmodel without its banner, then keep its INFO lines out (its warnings still print).

    Its logger prints straight to stdout, past `logging` filters, so the import runs with the
    process's stdout and stderr pointed at a file. It has to be imported anyway: transformers
    loads GPTQ checkpoints through it. It sets PYTORCH_ALLOC_CONF and CUDA_DEVICE_ORDER when they
    are unset (what its banner says); that still happens."""
    if importlib.util.find_spec("gptqmodel") is None:
        return  # the command says how to install it
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with _output_to_a_file():
            importlib.import_module("gptqmodel")
    except Exception:
        return  # a broken install: the command imports it again and shows the error itself
    finally:
        # Its dependency tokenicer calls logging.basicConfig(level=INFO) at import, which would
        # leave the commands' own basicConfig without effect: the root logger is put back.
        root.handlers[:], root.level = handlers, level
    logging.getLogger("logbar").setLevel(logging.WARNING)  # gptqmodel's logger; INFO on creation


@contextlib.contextmanager
def _output_to_a_file():
    """Send everything written to file descriptors 1 and 2 (C code and cached Python streams too)
    to a temporary file, dropped afterwards."""
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
