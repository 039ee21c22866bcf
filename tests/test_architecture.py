"""The package layout: layers as declared in pyproject.toml, no import cycles, one docstring per module."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dp_tangent", "privacy_accounting")


def _import_graph() -> dict[str, set[str]]:
    """Module -> modules it imports (at module level or inside functions; not under TYPE_CHECKING)."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def test_no_module_imports_itself_through_others() -> None:
    graph = _import_graph()
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert set(order) >= {"dp_tangent.cli.app", "dp_tangent.workspace.store", "privacy_accounting.report_models"}


def test_a_cycle_would_be_found() -> None:
    """The check above can fail: a two-module cycle is reported."""
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


def test_layers_declared_in_pyproject_hold() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", "pyproject.toml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_opens_with_a_docstring(package: str) -> None:
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / package).rglob("*.py"))
               if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert not missing, f"modules without an opening docstring: {missing}"
