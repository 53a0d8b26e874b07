"""Dependencies point one way: no two package modules import each other (even inside functions), and
the modules that build or serve models without training never load fastai."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer_fastai"


def runtime_imports(path: Path) -> set[str]:
    """The fer_fastai modules `path` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for branch in ast.walk(tree)
               if isinstance(branch, ast.If) and getattr(branch.test, "id", None) == "TYPE_CHECKING"
               for statement in branch.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.add((node.module or "").split(".")[0] or None)
                if not node.module:
                    found.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("fer_fastai."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("fer_fastai."))
    return {name for name in found if name and (PACKAGE / f"{name}.py").is_file()}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: runtime_imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target] if target in trail else [module, target]
            if target not in state:
                cycle = visit(target, trail + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = import_graph()
    assert {"evaluate", "interpret", "scoring", "finish", "ensemble"} <= set(graph)
    assert "interpret" in graph["evaluate"]  # the graph is real: evaluate draws its plots with interpret
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("module", ["fer_fastai.ensemble", "fer_fastai.evaluate", "fer_fastai.interpret",
                                    "fer_fastai.calibrate", "fer_fastai.finish", "fer_fastai.predict",
                                    "fer_fastai.faces", "fer_fastai.card", "fer_fastai.explain",
                                    "fer_fastai.contract", "fer_fastai.conformance"])
def test_modules_that_train_nothing_do_not_load_fastai(module):
    code = f"import sys, {module}; assert 'fastai' not in sys.modules, sorted(m for m in sys.modules if m.startswith('fastai'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
