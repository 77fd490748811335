"""The data-only state format: what it writes, that it round-trips, and that it runs no code.

Unsigned states are written in this form whenever they hold only plain data, numeric numpy
arrays/scalars and Oríon's trial-like classes, and loaded by the C unpickler with a tiny set of
globals (see orion_track_redis/datapickle.py for the argument). Everything else falls back to
the general allow-listed format of test_statecodec.py.
"""

from __future__ import annotations

import collections
import copy
import copyreg
import dataclasses
import datetime
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from orion.algo.hyperband.hyperband import BudgetTuple
from orion.core.worker.trial import Trial

from orion_track_redis import datapickle
from orion_track_redis.errors import UnsafeStateError
from orion_track_redis.state.codec import MAGIC, dump_state, load_state
from test_statecodec import ALLOW_LISTED, SECRET, next_params, real_state

DATA, UNSIGNED = 2, 0


def same_data(a, b, seen=None) -> bool:
    """Same types, values and array layouts, recursively through attributes and slots (numpy
    dtype identity aside: a plain pickle round trip does not keep it either)."""
    seen = set() if seen is None else seen
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (a.dtype.str, a.shape, a.flags.f_contiguous, a.tobytes("A")) == (
            b.dtype.str,
            b.shape,
            b.flags.f_contiguous,
            b.tobytes("A"),
        )
    if isinstance(a, np.generic):
        return (a.dtype.str, a.tobytes()) == (b.dtype.str, b.tobytes())
    if isinstance(a, float) and a != a:
        return b != b
    if isinstance(
        a,
        (
            str,
            bytes,
            int,
            float,
            complex,
            type(None),
            datetime.date,
            datetime.timedelta,
            datetime.time,
            set,
            frozenset,
            range,
            slice,
        ),
    ):
        return a == b
    if (id(a), id(b)) in seen:  # a cycle: compared where it started
        return True
    seen.add((id(a), id(b)))
    if isinstance(a, dict):
        return (
            list(a) == list(b)
            and all(same_data(a[k], b[k], seen) for k in a)
            and (
                not isinstance(a, collections.defaultdict) or a.default_factory is b.default_factory
            )
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_data(x, y, seen) for x, y in zip(a, b))
    slots = [n for c in type(a).__mro__ for n in getattr(c, "__slots__", ()) if hasattr(a, n)]
    return same_data(getattr(a, "__dict__", {}), getattr(b, "__dict__", {}), seen) and all(
        same_data(getattr(a, n), getattr(b, n, None), seen) for n in slots
    )


def framed(body: bytes) -> bytes:
    return MAGIC + bytes([DATA]) + body


def flag(data: bytes) -> int:
    return data[len(MAGIC)]


# -- what is written in the data-only form -------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALLOW_LISTED))
def test_every_allow_listed_algorithm_state_uses_the_data_form(name):
    algo, state = real_state(name)
    data = dump_state(state, None)
    assert flag(data) == DATA
    loaded = load_state(data, None)
    assert same_data(loaded, state)
    assert next_params(algo, loaded) == next_params(algo, copy.deepcopy(state))


def test_mofa_state_falls_back_to_the_general_form():
    _, state = real_state("mofa")  # scipy priors: not data
    assert flag(dump_state(state, None)) == UNSIGNED


def test_a_secret_keeps_the_signed_form():
    _, state = real_state("random")
    assert flag(dump_state(state, SECRET)) == 1


DATA_SAMPLE = {
    "arr": np.arange(6.0).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
    "big-endian": np.array([1.5, 2.5], dtype=">f8"),
    "zero-d": np.array(3.25),
    "empty": np.zeros((0, 4), dtype=np.int16),
    "u32": np.array([1, 2], dtype=np.uint32),
    "bools": np.array([True, False]),
    "complex-arr": np.array([1 + 2j]),
    "scalars": [
        np.float64(0.5),
        np.int64(3),
        np.bool_(True),
        np.float32(1.5),
        np.uint8(7),
        np.complex64(1j),
    ],
    "rng": np.random.RandomState(1).get_state(),
    "set": {1, 2},
    "frozenset": frozenset({"a"}),
    "complex": 1 + 2j,
    "bytearray": bytearray(b"ab"),
    "od": collections.OrderedDict(a=1),
    "dd": collections.defaultdict(set, {"k": {1}}),
    "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
    "aware": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
    "date": datetime.date(2024, 1, 2),
    "time": datetime.time(1, 2),
    "delta": datetime.timedelta(days=3),
    "budget": BudgetTuple(1, 2),
    "bytes": b"\x00\xff",
    "tuple": (1, "a"),
    "none": None,
    "nan": float("nan"),
    "trial": Trial(
        params=[{"name": "x", "type": "real", "value": 1.0}],
        status="completed",
        results=[{"name": "o", "type": "objective", "value": 2.0}],
    ),
}


def test_data_sample_round_trips_with_types_values_and_layout():
    data = dump_state(DATA_SAMPLE, None)
    assert flag(data) == DATA
    loaded = load_state(data, None)
    assert same_data(loaded, DATA_SAMPLE)
    assert not same_data(loaded, {**DATA_SAMPLE, "u32": DATA_SAMPLE["u32"].astype(np.int32)})
    assert loaded["fortran"].flags.f_contiguous and not loaded["fortran"].flags.c_contiguous
    assert loaded["big-endian"].dtype.str == ">f8"
    assert all(a.flags.writeable for a in (loaded["arr"], loaded["rng"][1], loaded["zero-d"]))
    assert [type(x) for x in loaded["scalars"]] == [type(x) for x in DATA_SAMPLE["scalars"]]
    assert loaded["trial"].id == DATA_SAMPLE["trial"].id
    assert loaded["dd"]["new"] == set()  # the factory survived


def test_shared_references_and_cycles_are_kept():
    trial = DATA_SAMPLE["trial"]
    cyclic = [1]
    cyclic.append(cyclic)
    state = {"a": trial, "b": [trial], "cyclic": cyclic}
    loaded = load_state(dump_state(state, None), None)
    assert loaded["a"] is loaded["b"][0]
    assert loaded["cyclic"][1] is loaded["cyclic"]


def _local_function():
    return 1


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        Trial,
        len,
        _local_function,
        Point(1),
        np.array(["x", None], dtype=object),
        np.array(["2024-01-01"], dtype="M8[D]"),
        np.datetime64("2024-01-01"),
        np.zeros(2, dtype=[("a", "i4")]),
        np.dtype("f8"),
        type(None),
        range(3),
        slice(1),
    ],
    ids=[
        "class",
        "builtin-function",
        "function",
        "dataclass",
        "object-array",
        "datetime64-array",
        "datetime64-scalar",
        "structured-array",
        "dtype",
        "NoneType",
        "range",
        "slice",
    ],
)
def test_anything_else_falls_back_to_the_general_form(value):
    assert flag(dump_state({"x": [value]}, None)) == UNSIGNED
    with pytest.raises(datapickle.Unsupported):
        datapickle.dumps(value)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text()
        | st.binary()
        | st.datetimes()
        | st.floats(allow_nan=False).map(np.float64)
        | st.integers(-(2**31), 2**31 - 1).map(np.int32),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(st.text(max_size=5), inner, max_size=4)
            | st.frozensets(st.integers(), max_size=4)
            | st.lists(st.floats(allow_nan=False), max_size=4).map(np.array)
        ),
        max_leaves=20,
    )
)
def test_arbitrary_data_round_trips_in_the_data_form(value):
    data = dump_state(value, None)
    assert flag(data) == DATA
    assert same_data(load_state(data, None), value)


# -- nothing runs, nothing is patched --------------------------------------------------------------
class _Call:
    """Pickles as ``fn(*args)`` (plus BUILD ``state`` if given): a hand-made payload."""

    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


class _System:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_a_foreign_global_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeStateError, match="'posix.system' is not admitted"):
        load_state(framed(pickle.dumps(_System(marker), 4)), None)
    assert not marker.exists()


@pytest.mark.parametrize("key", sorted(datapickle.GLOBALS))
@pytest.mark.parametrize(
    "state",
    [b"}X\x05\x00\x00\x00pwnedK\x01s", b"N}X\x05\x00\x00\x00pwnedK\x01s\x86"],
    ids=["dict-state", "slot-state"],
)
def test_build_cannot_set_attributes_on_an_admitted_global(key, state):
    module, name = key
    body = b"\x80\x02c" + f"{module}\n{name}\n".encode() + state + b"b."
    with pytest.raises(UnsafeStateError, match="not a valid data-only state"):
        load_state(framed(body), None)
    assert not hasattr(datapickle.GLOBALS[key], "pwned")


@pytest.mark.parametrize(
    "payload, match",
    [
        (_Call(datapickle.NEW, 99), "unknown class code"),
        (_Call(datapickle.NEW, True), "unknown class code"),
        (_Call(datapickle.ARRAY, "|O", (1,), "C", b"\x00" * 8), "not numeric"),
        (_Call(datapickle.ARRAY, "i4,O", (1,), "C", b"\x00" * 16), "not numeric"),
        (_Call(datapickle.ARRAY, "|V8", (1,), "C", b"\x00" * 8), "not numeric"),
        (_Call(datapickle.ARRAY, ("O", 1), (1,), "C", b"\x00" * 8), "given by name"),
        (_Call(datapickle.ARRAY, "<f8", (2,), "C", b"\x00" * 8), "cannot reshape"),
        (_Call(datapickle.ARRAY, "<f8", (1,), "K", b"\x00" * 8), "C or F order"),
        (
            _Call(
                datapickle.ARRAY,
                "<f8",
                (1,),
                "C",
                b"\x00" * 8,
                state=((1,), "|O", False, b"\x00" * 8),
            ),
            "must be numpy.dtype",
        ),
        (_Call(datapickle.SCALAR, "<f8", b"\x00" * 4), "wrong size"),
        (_Call(datapickle.SCALAR, "|O", b"\x00" * 8), "not numeric"),
    ],
    ids=[
        "class-code",
        "bool-code",
        "object-array",
        "structured-object",
        "void",
        "dtype-tuple",
        "short-buffer",
        "order",
        "array-setstate",
        "scalar-size",
        "object-scalar",
    ],
)
def test_rebuilders_refuse_unsafe_arguments(payload, match):
    with pytest.raises(UnsafeStateError, match=match):
        load_state(framed(pickle.dumps(payload, 4)), None)


def test_extension_codes_are_refused_even_when_registered():
    with pytest.raises(UnsafeStateError, match="not a valid data-only state"):
        load_state(framed(b"\x80\x02\x82\x01."), None)  # EXT1 1: unregistered
    copyreg.add_extension("datetime", "date", 0x7E)
    try:
        with pytest.raises(UnsafeStateError, match="extension codes are registered"):
            load_state(framed(pickle.dumps(datetime.date(2024, 1, 1), 2)), None)
    finally:
        copyreg.remove_extension("datetime", "date", 0x7E)


def test_truncated_data_state_is_refused():
    data = dump_state(DATA_SAMPLE, None)
    for cut in (6, 7, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(UnsafeStateError):
            load_state(data[:cut], None)


def test_admitted_globals_are_immutable_types_or_slotless_rebuilders():
    for obj in datapickle.GLOBALS.values():
        with pytest.raises((TypeError, AttributeError)):
            obj.pwned = 1
        assert not hasattr(obj, "__setstate__")
