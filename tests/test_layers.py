"""The package's structure: layers respected (import-linter), no import cycle, a cheap `import splitldm`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("diffusers", "lightning", "sionna", "transformers", "torchmetrics", "datasets", "matplotlib")


def test_import_linter_contracts_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every elementary cycle's entry point found by DFS over direct imports (module level and function level)."""
    modules = sorted(graph.modules)
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.find_modules_directly_imported_by(m)):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m)
    return found


def test_no_import_cycles():
    # Imports under `if TYPE_CHECKING:` (annotations only) never run, so they cannot form a cycle.
    graph = grimp.build_graph("splitldm", exclude_type_checking_imports=True)
    # A package's __init__ re-exporting its children is not a cycle of code: leave package modules out.
    packages = [m for m in graph.modules if graph.find_children(m)]
    for m in packages:
        for n in sorted(graph.find_modules_directly_imported_by(m)):
            graph.remove_import(importer=m, imported=n)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "b", "c"):
        graph.add_module(m)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("module", ["splitldm", "splitldm.cli"])
def test_import_is_light(module):
    code = (f"import sys, {module}; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": ""}, check=True).stdout.strip()
    assert out == "", f"import {module} pulled in {out}"


def test_public_api_resolves_lazily():
    import splitldm

    for name in splitldm.__all__:
        assert getattr(splitldm, name) is not None, name
    assert len(splitldm.__all__) <= 30
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        splitldm.nope  # noqa: B018
