"""The package's plan, checked (issue 15): imports point down the layers, with no circle even
through imports made inside functions; errors.py, the ground floor, stands on nothing of the
package but redaction.py (stdlib only)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orion_track_redis"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            found.update(n for n in names if n in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith(PACKAGE.name + "."):
            found.add(node.module.split(".")[1])
    return found


def package_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in PACKAGE.glob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a path that comes back to its start), or None."""
    done: set[str] = set()

    def visit(node, path):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            found = visit(dep, path + [node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_no_import_circle():
    assert cycle_in(package_graph()) is None


def test_the_circle_check_finds_a_circle():
    graph = {"errors": {"redaction"}, "scripts": {"errors"}, "redaction": set()}
    assert cycle_in(graph) is None
    graph["errors"].add("scripts")  # what errors.py did before issue 15
    assert cycle_in(graph) == ["errors", "scripts", "errors"]


def test_the_ground_floor_stands_on_nothing():
    graph = package_graph()
    assert graph["errors"] == {"redaction"}
    assert graph["redaction"] == set()
