"""The package's layers point one way, read from the real import statements (those inside functions
included, those under `if TYPE_CHECKING:` left out): no module imports one of a higher layer, no
import circle, and the training methods never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "qwenvl_ft"

# Lowest first. A module belongs to the layer of its top-level part (qwenvl_ft.<part>).
LAYERS = [
    {"config", "noise"},
    {"models", "runs"},  # the families' facts; the run-directory contract
    {"data", "eval"},  # reading and encoding samples; task metrics
    {"infer", "retrieval", "tiny"},  # batched generation; embedding and reranking; tiny models
    {"predict", "merge", "chat"},
    {"training"},
    {"train", "plan", "demo"},
    {"cli", "__main__"},
]
METHODS = {
    "qwenvl_ft.training.sft",
    "qwenvl_ft.training.dpo",
    "qwenvl_ft.training.grpo",
    "qwenvl_ft.training.embedding",
    "qwenvl_ft.training.reranker",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["qwenvl_ft", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports at run time."""
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body
            for n in ast.walk(child)
        }
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            found |= {c for c in candidates if c in mods and c != name and not name.startswith(c + ".")}
        graph[name] = found
    return graph


def layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package root (__version__) is below everything
    for k, members in enumerate(LAYERS):
        if parts[1] in members:
            return k
    raise AssertionError(f"{module}: qwenvl_ft.{parts[1]} is in no layer of tests/unit/test_layers.py")


GRAPH = imports(modules())


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    upward = []
    for module, targets in GRAPH.items():
        for target in targets:
            lo, hi = layer(module), layer(target)
            if lo is not None and hi is not None and hi > lo:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan: each strongly connected group of two or more is a circle
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_methods_never_import_each_other():
    for method in METHODS:
        assert not GRAPH[method] & (METHODS - {method}), method


def test_the_check_has_power():
    """The graph is the real one: known imports are in it (a parser that saw none would pass)."""
    assert "qwenvl_ft.training.lifecycle" in GRAPH["qwenvl_ft.training.sft"]
    assert "qwenvl_ft.models.base" in GRAPH["qwenvl_ft.tiny"]
    assert "qwenvl_ft.tiny" in GRAPH["qwenvl_ft.cli.make_tiny_cmd"]  # imported inside a function
    assert any(layer(t) == 2 for t in GRAPH["qwenvl_ft.training.grpo"])
