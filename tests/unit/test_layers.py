"""The package's plan, checked: its folders and root modules are layers (the table in
docs/architecture.md, read here: the one place the plan is written), imports point down the
layers, and no import goes round in a circle, imports made inside functions included."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "orion_track_redis"
PLAN = ROOT / "docs" / "architecture.md"


def layers_of_the_plan() -> dict[str, int]:
    """Unit (a root module's stem, or a folder's name) -> its layer, from the plan's table:
    rows ``| N name | `unit.py`, `folder/` | ... |``."""
    layers = {}
    for line in PLAN.read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| (\d+) [^|]*\| ([^|]+) \|", line)
        if row:
            for unit in re.findall(r"`([\w]+)(?:\.py|/)`", row.group(2)):
                assert unit not in layers, f"{unit} is in two layers of {PLAN.name}"
                layers[unit] = int(row.group(1))
    return layers


def module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE.name, *parts])


MODULES = {module_of(p) for p in PACKAGE.rglob("*.py")}


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path) -> set[str]:
    """Package modules ``path`` imports anywhere (top level or inside a function), as dotted
    names; ``from package import module`` counts as that module."""
    here = module_of(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE.name:
                continue
            names = {f"{base}.{a.name}" for a in node.names}
            # `from package import module` runs the package's __init__ too, but depends on
            # the module: the __init__ counts only when a name of its own is imported
            found.update(names if names & MODULES else {base})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE.name + "."))
    return found


def module_graph() -> dict[str, set[str]]:
    """Each package module -> the package modules it imports (names that are not modules, such
    as ``from orion_track_redis.keys import escape``, are dropped)."""
    files = {module_of(p): p for p in PACKAGE.rglob("*.py")}
    return {name: (imports_of(path) & set(files)) - {name} for name, path in files.items()}


def unit_graph() -> dict[str, set[str]]:
    units = {}
    for name, deps in module_graph().items():
        unit = name.split(".")[1] if name.count(".") else "__init__"
        units.setdefault(unit, set()).update(d.split(".")[1] for d in deps if d.count("."))
        units[unit].discard(unit)
    return units


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


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted(
        f"{unit} (layer {layers[unit]}) imports {dep} (layer {layers[dep]})"
        for unit, deps in graph.items()
        for dep in deps
        if layers[dep] > layers[unit]
    )


def test_every_folder_and_root_module_is_in_the_plan():
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")}
    layers = layers_of_the_plan()
    assert units - set(layers) == set(), f"give the new module or folder a layer in {PLAN}"
    assert set(layers) - units == set(), f"{PLAN} names a module or folder that is gone"


def test_imports_point_down_the_layers():
    assert upward_imports(unit_graph(), layers_of_the_plan()) == []


def test_no_import_circle_between_modules():
    assert cycle_in(module_graph()) is None


def test_the_checks_see_what_they_guard():
    graph = module_graph()
    # the graph is real: storage reaches the lock through a folder, testing through '..'
    assert "orion_track_redis.store.lock" in graph["orion_track_redis.storage"]
    assert "orion_track_redis.server.binaries" in graph["orion_track_redis.testing.servers"]
    assert "orion_track_redis.testing.ports" in graph["orion_track_redis.testing.servers"]
    layers = layers_of_the_plan()
    upward = {"errors": {"redaction", "storage"}, "storage": {"errors"}, "redaction": set()}
    assert upward_imports(upward, layers) == [
        f"errors (layer {layers['errors']}) imports storage (layer {layers['storage']})"
    ]
    circle = {"errors": {"redaction"}, "store": {"errors"}, "redaction": set()}
    assert cycle_in(circle) is None
    circle["errors"].add("store")
    assert cycle_in(circle) == ["errors", "store", "errors"]


def test_the_runtime_never_imports_the_testing_helpers():
    units = unit_graph()
    assert units["testing"] >= {"errors", "server"}  # the check sees inside testing/
    assert [unit for unit, deps in units.items() if "testing" in deps] == []


def test_the_ground_floor_stands_on_nothing():
    units = unit_graph()
    assert units["errors"] == {"redaction"}
    assert units["redaction"] == set()
    assert units["datapickle"] == set()  # its path is in stored states: it must not move


MAX_LINES = 450  # a module past this has grown two concerns: split it


def test_no_module_is_a_big_room():
    big = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}
