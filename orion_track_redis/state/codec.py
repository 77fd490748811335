"""Pickled algorithm state, signed with a shared secret or checked against an allow-list.

Oríon's algorithm lock stores ``algorithm.state_dict`` (trials, numpy RNG state, brackets...)
and the only generic encoding that keeps it intact is pickle. Anyone who can write to the Redis
database must not be able to run code in every worker through it, so bytes read back are
unpickled only when one of these holds:

* they carry a valid HMAC-SHA256 made with the ``state_secret`` every worker shares (option
  ``state_secret`` or env var ``ORION_REDIS_STATE_SECRET``): plain :func:`pickle.loads`;
* they were written in the data-only form of :mod:`.datapickle` (chosen when no secret is set
  and the state is plain data, numpy arrays and Oríon's trial-like classes: every built-in
  algorithm but MOFA), which the C unpickler loads safely and ~5x faster than the next;
* they unpickle with :class:`_SafeUnpickler`, which admits only the globals of
  :data:`SAFE_GLOBALS` and hardens the few numpy entry points (see below).

Anything else raises :class:`~orion_track_redis.errors.UnsafeStateError`: a present but wrong
signature is never retried through the allow-list (that would make forging free).

Format: a 6-byte header, ``b"OTRS"`` + version (``1``: the body is a pickle, ``2``: it is one
zstandard frame of the pickle) + flag byte (``0`` unsigned, ``1`` signed, ``2`` data-only), then a
32-byte MAC if signed, then the body. The pickle is protocol 5 (fixed, so workers on newer
Pythons stay readable by older ones). The MAC covers the header and the body as stored
(compressed or not), and is checked before anything is decompressed. Bytes without our header
(a raw ``pickle.dumps`` written by Oríon's Legacy storage, protocol 4) go through the allow-list.

Compression: Oríon rewrites the whole state at every release of the algorithm lock (twice per
trial), so its size is the storage's write volume: AOF and replication bytes grow with the
experiment (~480 B per trial in a random search's state). Bodies of :data:`COMPRESS_MIN` bytes
or more are written as version 2 when that is smaller: zstandard level 3, its window as large as
the state, since Oríon's state holds every trial twice (the wrappers' registries) half a state
apart, beyond zlib's 32 KiB window. Measured on real 500- and 2,000-trial random-search and TPE
states and a 400-trial ASHA state (benchmarks/studies/state_bytes.py): 7.0-8.9x smaller in
0.6-2.5 ms,
where zlib level 1 gives 3.6-4.4x in 2.2-10 ms; AOF bytes per trial fall to 0.14-0.15x. A frame
must declare its decompressed size, at most :data:`MAX_INFLATED` (a decompression bomb is
refused before any allocation), carry a checksum (corrupt data is an error, not another state)
and be followed by nothing. The decompressed body then goes through
exactly the loader it would have met uncompressed. Version 1 states, written before compression
existed or when too small to gain, read as they always did.

The allow-list was taken empirically: the globals of the pickled ``state_dict`` of every
built-in algorithm that runs with Oríon 0.2.7 here (random, gridsearch, asha, hyperband, tpe,
EvolutionES, pbt; see tests/unit/test_statecodec.py), plus a few data types of the same kind.
Why each group is safe to *call* with attacker-chosen arguments:

* ``builtins`` set/frozenset/complex/slice/range/tuple/list/dict/object, ``collections``
  OrderedDict/defaultdict, ``datetime`` types: value constructors implemented in C that
  validate their input. A defaultdict factory is itself a global, so only an admitted one.
* ``copyreg._reconstructor`` (protocols 0/1) only does ``base.__new__(cls)`` (+``__init__``);
  both ``cls`` and ``base`` are globals, so they went through this allow-list too: it creates
  nothing that NEWOBJ on an admitted class could not. ``_codecs.encode`` is how protocols 0-2
  spell bytes; codecs are pure text/bytes transforms.
* Oríon's ``Trial``/``Trial.Param``/``Trial.Result``, hyperband's ``BudgetTuple`` (a
  NamedTuple), PBT's ``Lineages``/``LineageNode`` and ``TreeNode``: pure-Python containers with
  no ``__setstate__``/``__reduce__`` logic; restoring them only assigns attributes.
* numpy arrays, dtypes and scalars -- the only memory-unsafe group, so find_class never hands
  out the real callables: ``numpy.ndarray`` resolves to a token whose call is refused
  (``ndarray(shape, object, buffer)`` turns bytes into PyObject pointers), ``_reconstruct``
  only builds empty arrays, ``numpy.dtype`` always returns a private copy that must receive its
  state (BUILD) exactly once, before any array uses it, and must then be a plain dtype identical
  to ``numpy.dtype(dtype.str)`` (a structured dtype's state can place an object field outside
  the item: a heap write). ``_frombuffer``/``scalar`` refuse object dtypes themselves.

BUILD (``__setstate__``/attribute assignment) is allowed only on instances of admitted classes,
never on classes, functions or modules (``setattr(Trial, ...)`` would patch the process), and
copyreg extension codes (EXT1/2/4, resolved from a process-wide cache) are refused.

The guard is against code execution and memory corruption, not resource exhaustion: whoever
can write to Redis can already deny service (``set(range(10**12))`` is admitted data).

Deliberately *not* admitted: anything that runs code or reaches the system (``builtins`` eval/
exec/getattr/__import__/open, ``os``/``posix``/``subprocess``, ``functools.partial``,
``operator.attrgetter``/``methodcaller``...); ``numpy.random`` pickling helpers (their Cython
``__setstate__`` trusts sizes; Oríon stores ``rng.get_state()`` tuples instead); scipy
distributions (``rv_generic.__setstate__`` exec()s a template held in the instance dict). MOFA
keeps scipy priors in its ``roi_space``, so its state loads only when signed.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import hmac
import importlib
import io
import pickle

import numpy as np
import zstandard

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.multiarray import scalar as _scalar
    from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _scalar  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

from orion_track_redis import datapickle
from orion_track_redis.errors import ConfigurationError, UnsafeStateError

MAGIC = b"OTRS1"  # version 1: plain pickle body
ZMAGIC = b"OTRS2"  # version 2: zstandard frame of the pickle body
_HEADER_LEN = len(MAGIC) + 1
_UNSIGNED, _SIGNED, _DATA = 0, 1, 2
_MAC_LEN = hashlib.sha256().digest_size
PROTOCOL = 5
SECRET_ENV = "ORION_REDIS_STATE_SECRET"
COMPRESS_MIN = 512  # smaller bodies (a fresh algorithm's state) gain a few bytes at most
MAX_INFLATED = 1 << 30  # 1 GiB: a 2,000-trial state is ~1 MB, a 100,000-trial one ~50 MB
_ZSTD_LEVEL = 3
_ZSTD_WINDOW_LOG = 27  # zstd shrinks it to the state's size; 27 is what any decoder accepts

_FIX = (
    f"To allow it, set the same secret on every worker (environment variable {SECRET_ENV}, or "
    "`state_secret` in the storage config): states are then signed and may hold any class. "
    "MOFA and plugin algorithms (skopt, nevergrad, Ax, HEBO, DEHB, BOHB, PB2) need it; if a "
    "built-in Oríon algorithm wrote this state, report the missing global to orion-track-redis."
)

# numpy entry points that find_class replaces by a guarded method of the unpickler.
_NUMPY_HOOKS = {
    ("numpy", "ndarray"): "_np_ndarray_token",
    ("numpy", "dtype"): "_np_dtype",
    ("numpy._core.multiarray", "_reconstruct"): "_np_reconstruct",
    ("numpy._core.multiarray", "scalar"): "_np_scalar",
    ("numpy._core.numeric", "_frombuffer"): "_np_frombuffer",
    # numpy 1.x spelling, found in states written before numpy 2
    ("numpy.core.multiarray", "_reconstruct"): "_np_reconstruct",
    ("numpy.core.multiarray", "scalar"): "_np_scalar",
    ("numpy.core.numeric", "_frombuffer"): "_np_frombuffer",
}

SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("builtins", "range"),
        ("builtins", "object"),
        ("builtins", "tuple"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),
        ("orion.core.worker.trial", "Trial"),
        ("orion.core.worker.trial", "Trial.Param"),
        ("orion.core.worker.trial", "Trial.Result"),
        ("orion.algo.hyperband.hyperband", "BudgetTuple"),
        ("orion.algo.pbt.pbt", "Lineages"),
        ("orion.algo.pbt.pbt", "LineageNode"),
        ("orion.core.utils.tree", "TreeNode"),
        *_NUMPY_HOOKS,
    }
)


# -- public API ---------------------------------------------------------------------------------
def dump_state(state: object, secret: bytes | None) -> bytes:
    """Pickle ``state``; sign it when a secret is configured, else prefer the data-only form."""
    key = _key(secret)
    if key is not None:
        flag, body = _SIGNED, pickle.dumps(state, protocol=PROTOCOL)
    else:
        try:
            flag, body = _DATA, datapickle.dumps(state)
        except datapickle.Unsupported:
            flag, body = _UNSIGNED, pickle.dumps(state, protocol=PROTOCOL)
    magic, body = _compress(body)
    header = magic + bytes([flag])
    return header + body if key is None else header + _mac(key, header, body) + body


def load_state(data: bytes, secret: bytes | None) -> object:
    """Unpickle ``data`` if its signature is valid, else only through the allow-list."""
    key = _key(secret)
    header, mac, stored = _split(data)
    flag = header[-1]
    if mac is not None and key is not None:
        if not hmac.compare_digest(mac, _mac(key, header, stored)):
            raise UnsafeStateError(
                "refused the algorithm state: its signature does not match the configured "
                "state_secret (tampered or truncated data, or written by a worker with another "
                f"secret). Use the same `state_secret` / {SECRET_ENV} on every worker."
            )
        return _loads_trusted(_inflate(header, stored))
    body = _inflate(header, stored)
    return _loads_data(body) if flag == _DATA else _loads_restricted(body)


# -- framing ------------------------------------------------------------------------------------
def _key(secret) -> bytes | None:
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        # an empty key would make every signature forgeable
        raise ConfigurationError("state_secret must be a non-empty bytes or str value")
    return bytes(secret)


def _mac(key: bytes, header: bytes, body: bytes) -> bytes:
    # the header is covered so a signed body cannot be re-framed as another version or form
    return hmac.new(key, header + body, hashlib.sha256).digest()


def _split(data) -> tuple[bytes, bytes | None, bytes]:
    """Return ``(header, mac or None, stored body)``; raw pickles (Legacy's) are unsigned."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeStateError(f"algorithm state must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC[:4]):
        if not data:
            raise UnsafeStateError("algorithm state is empty")
        return MAGIC + bytes([_UNSIGNED]), None, data
    if data[: len(MAGIC)] not in (MAGIC, ZMAGIC) or len(data) < _HEADER_LEN:
        raise UnsafeStateError(
            f"algorithm state header {data[:6]!r} is truncated or of an unknown version "
            f"(expected {MAGIC!r} or {ZMAGIC!r}); was it written by a newer orion-track-redis?"
        )
    header, rest = data[:_HEADER_LEN], data[_HEADER_LEN:]
    flag = header[-1]
    if flag in (_UNSIGNED, _DATA):
        return header, None, rest
    if flag == _SIGNED:
        if len(rest) <= _MAC_LEN:
            raise UnsafeStateError("signed algorithm state is truncated (no room for its data)")
        return header, rest[:_MAC_LEN], rest[_MAC_LEN:]
    raise UnsafeStateError(
        f"algorithm state has an unknown header flag {flag:#04x}: it was probably written by a "
        "newer orion-track-redis; run the same version on every worker"
    )


# -- compression --------------------------------------------------------------------------------
def _compress(body: bytes) -> tuple[bytes, bytes]:
    """``(magic, stored body)``: the zstd frame of ``body`` when that is worth it."""
    if COMPRESS_MIN <= len(body) <= MAX_INFLATED:
        # The checksum (4 bytes) makes a corrupt unsigned state an error, not another state.
        params = zstandard.ZstdCompressionParameters.from_level(
            _ZSTD_LEVEL, window_log=_ZSTD_WINDOW_LOG, write_checksum=True
        )
        # a compressor per call: they are not thread-safe, and one costs ~10 us
        frame = zstandard.ZstdCompressor(compression_params=params).compress(body)
        if len(frame) < len(body):
            return ZMAGIC, frame
    return MAGIC, body


def _inflate(header: bytes, stored: bytes) -> bytes:
    """The pickle bytes of a stored body; a version-2 frame is bounded before it is expanded."""
    if header[: len(MAGIC)] == MAGIC:
        return stored
    try:
        size = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as exc:
        raise UnsafeStateError(
            f"refused the algorithm state: its compressed data is corrupt ({exc})"
        ) from exc
    if not 0 < size <= MAX_INFLATED:  # -1: the frame does not declare its size
        raise UnsafeStateError(
            "refused the algorithm state: its compressed data "
            + ("does not declare its size" if size < 0 else f"declares {size} bytes")
            + f" (at most {MAX_INFLATED} are accepted): a decompression bomb or corrupt data"
        )
    try:  # the declared size is checked against the output, and nothing may follow the frame
        return zstandard.ZstdDecompressor().decompress(stored, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise UnsafeStateError(
            f"refused the algorithm state: its compressed data is corrupt or truncated ({exc})"
        ) from exc


def _loads_trusted(body: bytes):
    try:
        return pickle.loads(body)
    except Exception as exc:  # signed, so not an attack: the environment cannot rebuild it
        raise UnsafeStateError(f"signed algorithm state could not be unpickled: {exc!r}") from exc


def _loads_data(body: bytes):
    try:
        return datapickle.loads(body)
    except Exception as exc:
        raise UnsafeStateError(
            f"refused the algorithm state: it is not a valid data-only state ({exc!r}); it may "
            f"be truncated or corrupt, or written by a newer orion-track-redis. {_FIX}"
        ) from exc


def _loads_restricted(body: bytes):
    try:
        return _SafeUnpickler(body).load()
    except UnsafeStateError:
        raise
    except Exception as exc:
        raise UnsafeStateError(
            f"refused the algorithm state: it is not a valid allow-listed pickle ({exc!r}); "
            f"it may be truncated or corrupt. {_FIX}"
        ) from exc


# -- restricted unpickler -----------------------------------------------------------------------
def _resolve(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names (protocols 0-2 write ``__builtin__``, ``copy_reg``) like pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` as the subtype argument of ``_reconstruct`` only."""

    def __call__(self, *args, **kwargs):
        raise UnsafeStateError(
            "refused the algorithm state: it calls numpy.ndarray directly, which can turn raw "
            f"bytes into object pointers. {_FIX}"
        )


_NDARRAY = _NdarrayToken()


class _SafeUnpickler(pickle._Unpickler):
    """Pure-Python unpickler (its BUILD opcode can be overridden) with an allow-list."""

    dispatch = dict(pickle._Unpickler.dispatch)
    stack: list  # pickle._Unpickler's (not in typeshed)

    def __init__(self, body: bytes):
        super().__init__(io.BytesIO(body))
        self._pending: dict[int, np.dtype] = {}  # dtypes waiting for their state
        self._sealed: dict[int, np.dtype] = {}  # dtypes validated and frozen

    def find_class(self, module, name):
        pair = (module, name) if (module, name) in SAFE_GLOBALS else _py3_name(module, name)
        if pair not in SAFE_GLOBALS:
            raise UnsafeStateError(
                f"refused the algorithm state: it is not signed and references the global "
                f"'{pair[0]}.{pair[1]}', which is not on the allow-list. {_FIX}"
            )
        hook = _NUMPY_HOOKS.get(pair)
        return getattr(self, hook) if hook else _resolve(*pair)

    # BUILD: the only opcode that mutates an existing object (``__setstate__``/setattr)
    def _load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        kind = type(inst)
        if isinstance(inst, np.dtype):  # numpy 2: instances of per-type subclasses
            self._build_dtype(inst, state)
            return
        if kind is np.ndarray:
            self._check_array_state(state)
        elif (kind.__module__, kind.__qualname__) not in SAFE_GLOBALS or _resolve(
            kind.__module__, kind.__qualname__
        ) is not kind:
            raise UnsafeStateError(
                f"refused the algorithm state: it sets the state of a {kind.__name__!r} object, "
                f"which only instances of allow-listed classes may receive. {_FIX}"
            )
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]  # not in typeshed

    dispatch[pickle.BUILD[0]] = _load_build  # type: ignore[assignment]

    def _refuse_extension(self):
        # copyreg extension codes resolve through a process-wide cache, not find_class
        raise UnsafeStateError("refused the algorithm state: it uses copyreg extension codes")

    for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _refuse_extension  # type: ignore[assignment]
    del _opcode

    # -- numpy hooks ----------------------------------------------------------------------------
    _np_ndarray_token = _NDARRAY

    def _np_dtype(self, obj, align=False, copy=False):  # noqa: ARG002 - we always copy
        if not isinstance(obj, str) or not isinstance(align, bool):
            raise UnsafeStateError(f"refused numpy.dtype({obj!r:.60}, {align!r:.20}) in state")
        dtype = np.dtype(obj, align, True)  # a private copy, never numpy's shared singleton
        self._pending[id(dtype)] = dtype
        return dtype

    def _build_dtype(self, dtype: np.dtype, state):
        if self._pending.pop(id(dtype), None) is not dtype:
            raise UnsafeStateError("refused the algorithm state: it re-sets a numpy dtype's state")
        dtype.__setstate__(state)  # type: ignore[attr-defined]  # safe: nothing else holds it yet
        plain = dtype.fields is None and dtype.subdtype is None
        if not plain or np.dtype(dtype.str).__reduce__() != dtype.__reduce__():
            raise UnsafeStateError(
                f"refused the algorithm state: numpy dtype state {state!r:.120} is not a plain "
                f"dtype (structured dtypes need a signature). {_FIX}"
            )
        self._sealed[id(dtype)] = dtype
        self.stack.pop()

    def _sealed_dtype(self, dtype) -> np.dtype:
        if not isinstance(dtype, np.dtype) or self._sealed.get(id(dtype)) is not dtype:
            raise UnsafeStateError(
                "refused the algorithm state: a numpy array uses a dtype that has not been "
                "validated (missing or late dtype state)"
            )
        return dtype

    def _check_array_state(self, state):
        if not isinstance(state, tuple) or not any(isinstance(x, np.dtype) for x in state):
            raise UnsafeStateError(f"refused numpy array state {state!r:.80}")
        for item in state:
            if isinstance(item, np.dtype):
                self._sealed_dtype(item)

    def _np_reconstruct(self, subtype, shape, typecode):
        # numpy pickles always start from an empty ndarray; anything else is hand-made
        if subtype is not _NDARRAY or shape != (0,) or typecode != b"b":
            raise UnsafeStateError("refused the algorithm state: unusual numpy _reconstruct call")
        return _reconstruct(np.ndarray, (0,), b"b")

    def _np_frombuffer(self, buf, dtype, shape, order):
        raw = buf.obj if isinstance(buf, memoryview) else buf
        if type(raw) not in (bytes, bytearray):
            raise UnsafeStateError("refused the algorithm state: numpy buffer is not bytes")
        return _frombuffer(buf, self._sealed_dtype(dtype), shape, order)

    def _np_scalar(self, dtype, *args):
        return _scalar(self._sealed_dtype(dtype), *args)
