"""Algorithm-state deltas: what one hold changed, as a small value, and how to apply it.

An Oríon algorithm state (``state_dict`` of ``InsistSuggest(SpaceTransform(<algorithm>))``) is
a tree of dicts: ``algorithm`` nests the wrapped algorithm's state, ``registry``/
``registry_mapping`` hold the registries (``{"_trials": {id: Trial}}``,
``{"_mapping": {id: set of ids}}``), and every other key is a *part* (RNG state, brackets,
population...). What grows with the experiment is the registries; a hold changes a few of
their entries and some parts. So a delta is:

* ``entries``: per registry, the entries added or changed (a registry replaces an entry on
  ``register`` and never changes a stored trial in place, so identity tells a changed entry;
  a mapping's sets grow in place, so their sizes are compared too);
* ``gone``: per registry, the entries removed;
* ``parts``: every other part, whole (they are small for the algorithms that grow large, and
  comparing them would cost what sending them does), and ``dropped``: parts that went away.

``capture`` records, cheaply (a shallow copy per registry), the state a hold starts from;
``diff`` gives the delta against it, or None when the tree's shape changed (then a whole
state is written). ``apply`` changes a state tree in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

REGISTRIES = {"registry": "_trials", "registry_mapping": "_mapping"}
NESTED = "algorithm"
SIZED = "_mapping"  # registries whose values are sets that grow in place

Path = tuple[str, ...]


def walk(state: dict, path: Path = ()) -> Iterator[tuple[str, Path, Any]]:
    """("entries", path to a registry's dict, the dict) and ("part", path, value) of ``state``."""
    for key, value in state.items():
        inner = REGISTRIES.get(key)
        if inner and isinstance(value, dict) and list(value) == [inner]:
            if isinstance(value[inner], dict):
                yield "entries", (*path, key, inner), value[inner]
                continue
        if key == NESTED and isinstance(value, dict):
            yield from walk(value, (*path, key))
        else:
            yield "part", (*path, key), value


class Base:
    """The state a hold started from: each registry's entries (a shallow copy) and the
    paths of its parts."""

    def __init__(self, state: dict):
        self.entries: dict[Path, tuple[dict, dict | None]] = {}
        self.parts: set[Path] = set()
        for kind, path, value in walk(state):
            if kind == "part":
                self.parts.add(path)
            else:
                sizes = {k: len(v) for k, v in value.items()} if path[-1] == SIZED else None
                self.entries[path] = (dict(value), sizes)


def capture(state: dict) -> Base:
    return Base(state)


def diff(base: Base, state: dict) -> dict | None:
    """The delta from ``base`` to ``state``; None when a registry appeared or went away."""
    delta: dict[str, list] = {"entries": [], "gone": [], "parts": [], "dropped": []}
    registries = set()
    for kind, path, value in walk(state):
        if kind == "part":
            delta["parts"].append((path, value))
            continue
        if path not in base.entries:
            return None
        registries.add(path)
        old, sizes = base.entries[path]
        changed = _changed(old, sizes, value)
        if changed:
            delta["entries"].append((path, changed))
        added = sum(1 for k in changed if k not in old)
        if len(value) - added != len(old):  # some entry went away
            delta["gone"].append((path, sorted(old.keys() - value.keys())))
    if registries != set(base.entries):
        return None
    seen = {path for path, _ in delta["parts"]}
    delta["dropped"] = sorted(base.parts - seen)
    return delta


def _changed(old: dict, sizes: dict[Any, int] | None, new: dict[Any, Any]) -> dict:
    get = old.get
    if sizes is None:
        return {k: v for k, v in new.items() if get(k) is not v}
    sized = sizes.get
    return {k: v for k, v in new.items() if get(k) is not v or sized(k) != _len(v)}


def _len(value: Any) -> int:
    return len(value)


def apply(state: dict, delta: dict) -> None:
    """Change ``state`` in place as the hold that made ``delta`` changed its own."""
    for path, value in delta["parts"]:
        _at(state, path[:-1])[path[-1]] = value
    for path in delta["dropped"]:
        _at(state, path[:-1]).pop(path[-1], None)
    for path, changed in delta["entries"]:
        _at(state, path).update(changed)
    for path, keys in delta["gone"]:
        entries = _at(state, path)
        for key in keys:
            entries.pop(key, None)


def _at(state: dict, path: Path) -> dict:
    for key in path:
        state = state[key]
    return state


def size(delta: dict) -> int:
    """How many entries and parts ``delta`` carries (for logs and metrics)."""
    return sum(len(c) for _, c in delta["entries"]) + len(delta["parts"])
