"""Fixtures of the end-to-end tests that share one trained run and one demo server."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class DemoServer:
    url: str
    model: Path
    run: Path
    heldout: Path
    demo: object
    models: list


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def grounding_run(tmp_path_factory):
    """(base model, LoRA run, held-out file): the quickstart's recipe for 80 steps (tests/e2e/demo_run.py),
    trained once per session for the demo's tests and as one of GRPO's starting points."""
    from tests.e2e.demo_run import build_grounding_run

    return build_grounding_run(tmp_path_factory.mktemp("grounding-run"))


@pytest.fixture(scope="session")
def demo_server(grounding_run):
    """`qwenvl-ft demo RUN --compare BASE` on a tiny grounding run, served on a free local port."""
    pytest.importorskip("gradio", reason="the demo needs the `demo` extra (gradio)")
    from qwenvl_ft.demo.app import build, serve
    from qwenvl_ft.demo.core import load_models

    model, run, heldout = grounding_run
    models = load_models(str(run), str(model), dtype="fp32", device="cpu")
    demo = build(models, max_new_tokens=24, examples_from=str(run))
    url = serve(demo, "127.0.0.1", free_port(), block=False)
    yield DemoServer(url, model, run, heldout, demo, models)
    demo.close()
