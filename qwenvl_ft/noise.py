"""Third-party noise, kept out of a process: the pieces every process of a run applies alike.

`cli/quiet.py` decides, from a command line, which optional libraries a command needs and whether
to be verbose; these are the means: `keep_out` makes libraries look uninstalled, `silence_known_noise`
drops the listed harmless warnings and log records. A worker process that the run starts itself (the
data check's, data/checking.py) applies the same to itself before it imports anything
(`settings` / `apply`), so its start prints what the main process's does: nothing.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

OPTIONAL = ("deepspeed", "bitsandbytes", "gptqmodel", "torchao")
"""Libraries imported by others just because they are installed; kept out unless needed."""


# Set before the libraries import, which is when they read them.
ENVIRONMENT = {
    "GPTQMODEL_DISABLE_GIL_WARNING": "1",  # "Python GIL is enabled: ... multi-gpu quant acceleration"
}

# (category, message regex) of warnings known to be harmless here. Messages match from the start.
WARNINGS = [
    # peft 0.21 reads transformers 5.24's deprecated property when it wraps a model (PeftModel.__init__).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # ... and the deprecated `gradient_checkpointing_enable` in prepare_model_for_kbit_training (Q-LoRA).
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated"),
    # DeepSpeed ZeRO on torch 2.13 gathers through the deprecated collective, once per rank.
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
    # Expert parallelism (FSDP2): the MoE models return views from sharded modules and never modify
    # them in place; the gradients equal one process's (tests/e2e/test_expert_parallel.py).
    (UserWarning, r"FSDP2-wrapped module \(.*\) returned a view tensor"),
]

# logger name -> message regexes of records known to be harmless here.
LOG_RECORDS = {
    # torchao's wheel carries CUDA kernels built for another Python; it falls back to Python code.
    "torchao": [r"Failed to load .*\.so"],
    # torchao registers enums with torch.compile the way older torch releases wanted.
    "torch.utils._pytree": [r".* is an Enum subclass and is now natively supported by torch\.compile"],
    # Training never uses the KV cache; transformers turns it off under gradient checkpointing and
    # says so once (the config's use_cache is for generation and is saved as it is).
    "transformers.utils.generic": [r"`use_cache=True` is incompatible with gradient checkpointing"],
    "transformers.modeling_layers": [r"Caching is incompatible with gradient checkpointing in"],
    # Expected on a machine without a GPU (tests, CI); where torch sees a GPU it is kept (CPU_ONLY).
    "DeepSpeed": [r"Setting accelerator to CPU\. If you have GPU or other accelerator"],
    # Expert parallelism: transformers' own FSDP2 plan names the text model's paths, which match nothing
    # in the vision-language model (ours, one unit per decoder layer and vision block, is checked to
    # match: training/expert_parallel.py); and DTensor's note that its (efsdp, ep) mesh reduces in two
    # collectives, which is the layout transformers chose.
    "transformers.distributed.mixin": [r"`fsdp_plan` rules \[.*\] match nothing in Qwen3(_5Moe|VLMoe)For"],
    "torch.distributed.tensor._redistribute": [r"While redistributing from"],
    # bitsandbytes' optional CPU kernel from the `kernels` hub package; the built-in one is used.
    "bitsandbytes.backends.cpu.ops": [r"Failed to load CPU gemm_4bit_forward from kernels-community"],
}
CPU_ONLY = {"DeepSpeed"}  # loggers whose listed records are harmless only when torch sees no GPU


def keep_out(names: set[str]) -> None:
    """Make `names` look uninstalled to this process (those not imported yet)."""
    for name in sorted(names):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def kept_out(error: BaseException) -> str | None:
    """The library `keep_out` hid, if `error` is an import of it."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        root = error.name.split(".")[0]
        if root in OPTIONAL and sys.modules.get(root, 0) is None:
            return root
    return None


class _DropKnown(logging.Filter):
    def __init__(self, patterns: list[str], cpu_only: bool = False):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]
        self.cpu_only = cpu_only

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(p.match(message) for p in self.patterns):
            return True
        return self.cpu_only and _sees_a_gpu()


def _sees_a_gpu() -> bool:
    import torch  # imported already: the library logging here runs on it

    return torch.cuda.is_available()


def silence_known_noise() -> None:
    """Drop the listed warnings and log records; set the listed environment variables."""
    global _SILENCED
    _SILENCED = True
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, patterns in LOG_RECORDS.items():
        # A logger's filters see the records created on it; the library's own getLogger(name)
        # later returns this same object, so the filter holds before the library is imported.
        logging.getLogger(name).addFilter(_DropKnown(patterns, cpu_only=name in CPU_ONLY))


_SILENCED = False


def settings() -> tuple[list[str], bool]:
    """What this process keeps out and whether it drops the known noise, for a worker to apply."""
    kept = [name for name in OPTIONAL if name in sys.modules and sys.modules[name] is None]
    return kept, _SILENCED


def apply(kept: list[str], silence: bool) -> None:
    """`settings()` of another process, in this one (before it imports what they concern)."""
    keep_out(set(kept))
    if silence:
        silence_known_noise()
