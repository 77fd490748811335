"""Data-only pickles: algorithm states that the C unpickler can load without running code.

Why: an unsigned state must not run code when loaded, and the general guard
(:class:`statecodec._SafeUnpickler`) needs the pure-Python unpickler, because it must inspect
every BUILD opcode. That costs ~10x the C unpickler (60-110 ms for a 500-trial random-search
state, paid by every worker at every algorithm-lock acquire: most of the storage's CPU share in
a fleet). Most states are plain data plus a few known classes, so we write those in a form
where BUILD can do no harm, and then the C unpickler is safe:

* the writer (:func:`dumps`) turns every object of a non-builtin type, through
  ``reducer_override``, into a call of one of our *rebuilders* (instances of a class with
  ``__slots__ = ()``: no attribute can be set on them) or into the type's own reduce when that
  only names *immutable* built-in types (datetime, defaultdict, OrderedDict, set...). Anything
  else, classes and functions included, raises :class:`Unsupported`; the caller then falls
  back to the general format.
* the reader (:func:`loads`) is the C unpickler whose ``find_class`` hands out only
  :data:`GLOBALS`: immutable types (``setattr`` on them fails, so BUILD cannot patch the
  process; their constructors validate their input) and the rebuilders, which validate their
  arguments: :data:`CLASSES` get ``cls.__new__(cls, *args)`` (pure-Python containers whose
  instances may receive any attributes, as before), numpy arrays and scalars are rebuilt from
  bytes with a numeric dtype only. No numpy dtype object is ever handed out, so
  ``ndarray.__setstate__`` (which needs one) cannot be reached; numpy scalars' ``__setstate__``
  is a no-op. Extension codes resolve through copyreg's process-wide cache without
  ``find_class``, so they are refused up front.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import io
import pickle

import numpy as np
from orion.core.worker.trial import Trial

PROTOCOL = 5


class Unsupported(Exception):
    """The state holds an object this format cannot express (use the general format)."""


def _classes() -> list[type]:
    # the order is the wire format: append only
    from orion.algo.hyperband.hyperband import BudgetTuple
    from orion.algo.pbt.pbt import LineageNode, Lineages
    from orion.core.utils.tree import TreeNode

    return [Trial, Trial.Param, Trial.Result, BudgetTuple, Lineages, LineageNode, TreeNode]


CLASSES: list[type] = _classes()
_CODES = {cls: code for code, cls in enumerate(CLASSES)}
# numeric dtype kinds: bool, signed, unsigned, float, complex (never objects or structures)
_KINDS = frozenset("biufc")
_IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE


class _Rebuilder:
    """Base of the callables the reader admits; nothing can be set on their instances."""

    __slots__ = ()
    __module__ = __name__
    NAME: str  # set by each subclass

    def __reduce__(self):
        return self.NAME  # pickled by name: ``orion_track_redis.datapickle.<NAME>``


class _New(_Rebuilder):
    __slots__ = ()
    NAME = "NEW"

    def __call__(self, code, *args):
        if type(code) is not int or not 0 <= code < len(CLASSES):
            raise pickle.UnpicklingError(f"unknown class code {code!r:.20}")
        cls = CLASSES[code]
        return cls.__new__(cls, *args)


def _numeric_dtype(name) -> np.dtype:
    if type(name) is not str:
        raise pickle.UnpicklingError("numpy dtype must be given by name")
    dtype = np.dtype(name)
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {name!r:.20} is not numeric")
    return dtype


class _Array(_Rebuilder):
    __slots__ = ()
    NAME = "ARRAY"

    def __call__(self, dtype, shape, order, raw):
        if type(raw) is not bytes or order not in ("C", "F"):
            raise pickle.UnpicklingError("numpy array data must be bytes in C or F order")
        flat = np.frombuffer(raw, _numeric_dtype(dtype))
        return flat.reshape(shape, order=order).copy(order=order)  # writable, like pickle's


class _Scalar(_Rebuilder):
    __slots__ = ()
    NAME = "SCALAR"

    def __call__(self, dtype, raw):
        dtype = _numeric_dtype(dtype)
        if type(raw) is not bytes or len(raw) != dtype.itemsize:
            raise pickle.UnpicklingError("numpy scalar data has the wrong size")
        return np.frombuffer(raw, dtype)[0]


NEW, ARRAY, SCALAR = _New(), _Array(), _Scalar()

# types whose own reduce names only themselves and other entries of this table
_PASS_THROUGH = (
    set,
    frozenset,
    list,
    dict,
    tuple,
    complex,
    bytearray,
    collections.defaultdict,
    collections.OrderedDict,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
)
GLOBALS: dict[tuple[str, str], object] = {
    **{(t.__module__, t.__qualname__): t for t in _PASS_THROUGH},
    **{(__name__, r.NAME): r for r in (NEW, ARRAY, SCALAR)},
}
_ADMITTED_IDS = frozenset(id(obj) for obj in GLOBALS.values())
assert all(t.__flags__ & _IMMUTABLE for t in _PASS_THROUGH), "BUILD could patch a type"


class _Pickler(pickle.Pickler):
    # Called for every object except None, bools and exact int, float, bytes, str, dict, set,
    # frozenset, list and tuple (the documented exceptions): classes and functions included.
    def reducer_override(self, obj):
        cls = type(obj)
        code = _CODES.get(cls)
        if code is not None:
            return _reduce_instance(obj, cls, code)
        if cls in _PASS_THROUGH or id(obj) in _ADMITTED_IDS:  # admitted types, rebuilders
            return NotImplemented
        if cls is np.ndarray:
            return _reduce_array(obj)
        if isinstance(obj, np.generic) and obj.dtype.kind in _KINDS:
            return SCALAR, (obj.dtype.str, obj.tobytes())
        raise Unsupported(f"{cls.__module__}.{cls.__qualname__}")


def _reduce_instance(obj, cls, code):
    reduced = obj.__reduce_ex__(PROTOCOL)
    if (
        not isinstance(reduced, tuple)
        or reduced[0] is not copyreg.__newobj__  # type: ignore[attr-defined]  # not in typeshed
        or reduced[1][0] is not cls
    ):
        raise Unsupported(f"{cls.__qualname__} with a custom reduce")
    return (NEW, (code, *reduced[1][1:]), *reduced[2:])


def _reduce_array(arr):
    if arr.dtype.kind not in _KINDS or arr.dtype.fields is not None:
        raise Unsupported(f"numpy array of dtype {arr.dtype}")
    order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    return ARRAY, (arr.dtype.str, arr.shape, order, arr.tobytes(order))


def dumps(state) -> bytes:
    """Pickle ``state`` in the data-only form, or raise :class:`Unsupported`."""
    out = io.BytesIO()
    pickler = _Pickler(out, PROTOCOL)
    try:
        pickler.dump(state)
    except RecursionError as exc:
        raise Unsupported("a structure nested too deeply") from exc
    return out.getvalue()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not admitted") from None


def loads(body: bytes):
    """Load what :func:`dumps` wrote; any other global or an extension code is refused."""
    # copyreg extension codes bypass find_class
    if copyreg._extension_registry or copyreg._extension_cache:  # type: ignore[attr-defined]
        raise pickle.UnpicklingError("copyreg extension codes are registered in this process")
    return _Unpickler(io.BytesIO(body)).load()
