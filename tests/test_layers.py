"""The package's plan, checked (issue 15): imports point down the layers (docs/architecture.md,
"Design": the same table), with no circle even through imports made inside functions; errors.py,
the ground floor, stands on nothing of the package but redaction.py (stdlib only)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orion_track_redis"

# A module may import from its own layer or below, never from above. A new module must be
# given its layer here (and in docs/architecture.md's table).
LAYERS = {
    "redaction": 0,
    "quiet": 0,
    "errors": 1,
    "gcpause": 1,
    "datapickle": 1,
    "statedelta": 1,
    "stepreads": 1,
    "algocounts": 1,
    "resident": 1,
    "query": 1,
    "trials": 1,
    "codec": 2,
    "statecodec": 2,
    "keys": 2,
    "options": 2,
    "uri": 2,
    "server": 2,
    "misdirect": 2,
    "embedded": 3,
    "connection": 3,
    "scripts": 3,
    "serverchecks": 3,
    "migrations": 3,
    "serve": 3,  # orion-redis serve: runs a redis-server, like embedded
    "lock": 4,
    "cache": 4,
    "writes": 4,
    "experiments": 4,
    "accel": 4,
    "lease": 4,
    "shutdown": 4,
    "daskfix": 4,
    "runner": 4,
    "develop": 4,  # Oríon develop's additions to the protocol: a base of storage.Redis
    "storage": 5,
    "admin": 6,
    "transfer": 6,
    "metrics": 6,
    "commands": 7,
    "cli": 7,
    "__main__": 7,
    "__init__": 7,
    "testing": 8,  # test and benchmark deployments: the runtime never imports them
}


def imports_of(path: Path, modules: set[str], level: int = 1) -> set[str]:
    """Package modules that ``path`` imports anywhere (top level or inside a function);
    ``level``: the relative-import level that reaches the package (2 inside testing/)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            found.update(n for n in names if n in modules)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith(PACKAGE.name + ".")
        ):
            found.add(node.module.split(".")[1])
    return found


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports; the testing/ subpackage counts as one."""
    files = {p.stem: p for p in PACKAGE.glob("*.py")}
    modules = set(files) | {"testing"}
    graph = {name: imports_of(path, modules) - {name} for name, path in files.items()}
    graph["testing"] = set().union(
        *(imports_of(p, modules, level=2) for p in (PACKAGE / "testing").glob("*.py"))
    )
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a path that comes back to its start), or None."""
    done: set[str] = set()

    def visit(node, path):
        if node in path:
            return path[path.index(node) :] + [node]
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


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted(
        f"{module} (layer {layers[module]}) imports {dep} (layer {layers[dep]})"
        for module, deps in graph.items()
        for dep in deps
        if layers[dep] > layers[module]
    )


def test_every_module_has_a_layer_and_imports_point_down():
    graph = package_graph()
    assert set(graph) - set(LAYERS) == set(), "give the new module a layer in LAYERS"
    assert upward_imports(graph, LAYERS) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"errors": {"redaction", "storage"}, "storage": {"errors"}, "redaction": set()}
    assert upward_imports(graph, LAYERS) == ["errors (layer 1) imports storage (layer 5)"]


def test_the_runtime_never_imports_the_testing_helpers():
    graph = package_graph()
    assert graph["testing"] >= {"errors", "server"}  # the check sees inside testing/
    assert [m for m, deps in graph.items() if "testing" in deps] == []


MAX_LINES = 450  # a module past this has grown two concerns: split it (issue 15)


def test_no_module_is_a_big_room():
    big = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}


def test_the_ground_floor_stands_on_nothing():
    graph = package_graph()
    assert graph["errors"] == {"redaction"}
    assert graph["redaction"] == set()
