"""Algorithm-state codec: signed pickles, allow-listed unsigned pickles, refusal of the rest.

Real ``state_dict``s come from Oríon 0.2.7 experiments (Legacy storage over EphemeralDB) after a
few suggest/observe rounds, i.e. what ``Experiment.acquire_algorithm_lock`` stores.

Covered through the allow-list (unsigned) and signed: random, gridsearch, asha, hyperband,
tpe, EvolutionES, pbt.

Covered signed only: mofa. Its state holds ``roi_space`` with scipy distribution priors, and
scipy's ``rv_generic.__setstate__`` exec()s a template from the pickled instance dict, so those
classes can never be allow-listed; the test checks the unsigned state is refused. (MOFA with
pandas 3 crashes when its first iteration completes, so the state is taken before that, and a
categorical dimension makes its state unpicklable even for Legacy.)

Skipped (their optional dependencies are not installed here; each test skips with the
ImportError): pb2 (GPy), bohb (hpbandster, ConfigSpace, sspace), dehb (dehb, sspace),
nevergrad (nevergrad), ax (ax-platform), hebo (HEBO). Should they get installed, the same
round-trip tests run for them and show whether the allow-list covers their state.
"""

from __future__ import annotations

import base64
import builtins
import collections
import copy
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import pickle
import shlex
import warnings
from pathlib import Path

import numpy as np
import orion.algo.hebo  # noqa: F401 - registers HEBO in the algorithm factory
import orion.algo.pbt.pbt  # noqa: F401 - registers PBT in the algorithm factory
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from orion.algo.hyperband.hyperband import BudgetTuple
from orion.client import build_experiment
from orion.core.utils.exceptions import CompletedExperiment, WaitingForTrials
from orion.core.worker.trial import Trial

from helpers import FIDELITY_SPACE, FLAT_SPACE, REAL_SPACE
from orion_track_redis import datapickle
from orion_track_redis.errors import ConfigurationError, UnsafeStateError
from orion_track_redis.state import codec as statecodec
from orion_track_redis.state.codec import (
    MAGIC,
    MAX_INFLATED,
    SAFE_GLOBALS,
    SECRET_ENV,
    ZMAGIC,
    _SafeUnpickler,
    dump_state,
    load_state,
)

SECRET = b"shared-secret"

ALLOW_LISTED = {
    "random": ({"random": {"seed": 1}}, FIDELITY_SPACE),
    "gridsearch": ({"gridsearch": {"n_values": 3}}, FIDELITY_SPACE),
    "asha": ({"asha": {"seed": 1, "num_brackets": 2}}, FIDELITY_SPACE),
    "hyperband": ({"hyperband": {"seed": 1}}, FIDELITY_SPACE),
    "tpe": ({"tpe": {"seed": 1, "n_initial_points": 4}}, FIDELITY_SPACE),
    "EvolutionES": ({"EvolutionES": {"seed": 1}}, FIDELITY_SPACE),
    "pbt": ({"pbt": {"seed": 1, "population_size": 5, "generations": 4}}, FIDELITY_SPACE),
}
SIGNED_ONLY = {"mofa": ({"mofa": {"seed": 1, "n_levels": 2, "strength": 1}}, REAL_SPACE)}
OPTIONAL = {
    "pb2": ({"pb2": {"seed": 1, "population_size": 5, "generations": 4}}, FIDELITY_SPACE),
    "bohb": ({"bohb": {"seed": 1}}, FIDELITY_SPACE),
    "dehb": ({"dehb": {"seed": 1}}, FIDELITY_SPACE),
    "nevergrad": ({"nevergradoptimizer": {"seed": 1}}, FLAT_SPACE),
    "ax": ({"axoptimizer": {"seed": 1}}, REAL_SPACE),
    "hebo": ({"hebo": {"seed": 1}}, FLAT_SPACE),
}
ROUNDS = 12


def _run(name, algorithm, space, rounds):
    """An experiment's wrapped algorithm and its state_dict after ``rounds`` trials."""
    try:
        client = build_experiment(
            f"codec-{name}",
            space=space,
            algorithm=algorithm,
            max_trials=1000,
            storage={"type": "legacy", "database": {"type": "EphemeralDB"}},
        )
    except ImportError as exc:
        pytest.skip(f"{name}: optional dependency missing ({exc})")
    for _ in range(rounds):
        try:
            trial = client.suggest()
        except (WaitingForTrials, CompletedExperiment):
            break
        client.observe(
            trial,
            [
                {
                    "name": "obj",
                    "type": "objective",
                    "value": trial.params["x"] + trial.params.get("y", 0),
                }
            ],
        )
    algo = client._experiment.algorithm
    return algo, algo.state_dict


_CACHE: dict = {}


def real_state(name):
    """Built once per session: running experiments is the slow part of this module."""
    if name not in _CACHE:
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # Oríon is chatty about duplicates and fidelity
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if name in SIGNED_ONLY:
                    # MOFA + pandas 3 crashes when its first iteration (2 trials) completes
                    _CACHE[name] = _run(name, *SIGNED_ONLY[name], rounds=1)
                else:
                    _CACHE[name] = _run(name, *{**ALLOW_LISTED, **OPTIONAL}[name], ROUNDS)
        finally:
            logging.disable(previous)
    return _CACHE[name]


def next_params(algo, state, n=2):
    """Parameters of the next ``n`` suggestions after restoring ``state``."""
    algo.set_state(state)
    return [trial.params for trial in algo.suggest(n)]


def same_graph(loaded, reference_bytes):
    """``loaded`` pickles exactly like plain ``pickle.loads`` of the same bytes would."""
    return pickle.dumps(loaded, 5) == pickle.dumps(pickle.loads(reference_bytes), 5)


def stored_pickle(data: bytes) -> bytes:
    """The pickle inside a framed state, decompressed here with zstandard itself."""
    body = data[6 + (32 if data[5] == 1 else 0) :]
    return zstandard.ZstdDecompressor().decompress(body) if data[:5] == ZMAGIC else body


# -- real algorithm states ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALLOW_LISTED) + sorted(OPTIONAL))
@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
def test_real_state_round_trip(name, secret):
    algo, state = real_state(name)
    data = dump_state(state, secret)
    plain = pickle.dumps(state, 5) if secret else datapickle.dumps(state)
    assert data[:5] == ZMAGIC and len(data) < len(plain) / 1.5  # even a 12-trial state gains
    loaded = load_state(data, secret)
    assert same_graph(loaded, pickle.dumps(state, 5))
    assert next_params(algo, loaded) == next_params(algo, copy.deepcopy(state))


@pytest.mark.parametrize("name", sorted(ALLOW_LISTED))
def test_real_state_signed_loads_through_allow_list_without_secret(name):
    _, state = real_state(name)
    loaded = load_state(dump_state(state, SECRET), None)  # reader has no secret: allow-list
    assert same_graph(loaded, pickle.dumps(state, 5))


@pytest.mark.parametrize("name", sorted(ALLOW_LISTED))
@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret", "secret"])
def test_legacy_raw_pickle_of_real_state_loads(name, secret):
    _, state = real_state(name)
    raw = pickle.dumps(state)  # exactly what orion.storage.legacy stores
    assert same_graph(load_state(raw, secret), raw)


def test_mofa_state_needs_the_secret():
    algo, state = real_state("mofa")
    signed = dump_state(state, SECRET)
    loaded = load_state(signed, SECRET)
    assert same_graph(loaded, pickle.dumps(state, 5))
    assert next_params(algo, loaded, 1) == next_params(algo, copy.deepcopy(state), 1)
    for data, secret in ((signed, None), (dump_state(state, None), SECRET)):
        with pytest.raises(UnsafeStateError, match="not on the allow-list") as err:
            load_state(data, secret)
        # the message names the refused class and the exact way to allow it
        assert SECRET_ENV in str(err.value) and "To allow it" in str(err.value)
        assert "references the global '" in str(err.value) and "MOFA" in str(err.value)


# -- protocols and data types ------------------------------------------------------------------
SAMPLE = {
    "arr": np.arange(6.0).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
    "u32": np.array([1, 2], dtype=np.uint32),
    "obj": np.array(["x", None, 3], dtype=object),
    "str": np.array(["ab", "c"]),
    "dt64": np.array(["2024-01-01"], dtype="M8[D]"),
    "scalars": [np.float64(0.5), np.int64(3), np.bool_(True), np.float32(1.5)],
    "rng": np.random.RandomState(1).get_state(),
    "set": {1, 2},
    "frozenset": frozenset({"a"}),
    "complex": 1 + 2j,
    "od": collections.OrderedDict(a=1),
    "dd": collections.defaultdict(set, {"k": {1}}),
    "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
    "aware": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
    "delta": datetime.timedelta(days=3),
    "budget": BudgetTuple(1, 2),
    "bytes": b"\x00\xff",
    "slice": slice(1, 2),
    "range": range(3),
    "tuple": (1, "a"),
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_raw_pickles_of_every_protocol_load(protocol):
    raw = pickle.dumps(SAMPLE, protocol=protocol)
    assert same_graph(load_state(raw, None), raw)


def test_header_and_signature_layout():
    unsigned, signed = dump_state(SAMPLE, None), dump_state(SAMPLE, SECRET)
    assert unsigned[:6] == ZMAGIC + b"\x00" and signed[:6] == ZMAGIC + b"\x01"
    assert len(signed) == len(unsigned) + 32
    assert signed[6 + 32 :] == unsigned[6:]  # the same frame: compression is deterministic
    mac = hmac.new(SECRET, signed[:6] + signed[38:], hashlib.sha256).digest()
    assert signed[6:38] == mac  # header and compressed body as stored
    assert load_state(signed, SECRET.decode()) is not None  # str secrets work like bytes
    assert same_graph(load_state(bytearray(signed), SECRET), stored_pickle(signed))
    assert same_graph(load_state(memoryview(unsigned), None), stored_pickle(unsigned))


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
def test_small_or_incompressible_states_stay_uncompressed(secret):
    for value in ({"n": 1}, {"noise": os.urandom(4 * statecodec.COMPRESS_MIN)}):
        data = dump_state(value, secret)
        assert data[:5] == MAGIC, value.keys()
        assert load_state(data, secret) == value


def grown_state(n):
    """A random search's state after ``n`` trials (driven in one lock hold: fast)."""
    client = build_experiment(
        f"grown-{n}",
        space=REAL_SPACE,
        algorithm={"random": {"seed": 1}},
        max_trials=10 * n,
        storage={"type": "legacy", "database": {"type": "EphemeralDB"}},
    )
    with client._experiment.acquire_algorithm_lock() as algo:
        for _ in range(n):
            trials = algo.suggest(1)
            for trial in trials:
                trial.status = "completed"
                trial.results = [Trial.Result(name="obj", type="objective", value=1.0)]
            algo.observe(trials)
        return algo.state_dict


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
def test_a_grown_state_is_stored_several_times_smaller(secret):
    state = grown_state(300)
    data = dump_state(state, secret)
    plain = pickle.dumps(state, 5) if secret else datapickle.dumps(state)
    assert len(plain) > 100_000 and data[:5] == ZMAGIC
    assert len(data) * 5 < len(plain), (len(data), len(plain))  # measured: ~8x
    assert same_graph(load_state(data, secret), pickle.dumps(state, 5))


# -- states written before compression (uncompressed OTRS1, tests/data/make_states_otrs1.py) --
OLD = json.loads((Path(__file__).parents[1] / "data" / "states_otrs1.json").read_text())


@pytest.mark.parametrize("name", sorted(OLD["states"]))
@pytest.mark.parametrize(
    "form, secret", [("unsigned", None), ("unsigned", SECRET), ("signed", SECRET), ("signed", None)]
)
def test_states_written_before_compression_load(name, form, secret):
    assert OLD["secret"].encode() == SECRET
    entry = {k: base64.b64decode(v) for k, v in OLD["states"][name].items()}
    old = entry[form]
    assert old[:5] == MAGIC and old[5] in (0, 1, 2)
    loaded = load_state(old, secret)
    if old[5] == 2:  # data-only: numpy dtypes are not shared as in a plain pickle, compare data
        assert datapickle.dumps(loaded) == datapickle.dumps(pickle.loads(entry["reference"]))
    else:
        assert same_graph(loaded, entry["reference"])
    if form == "signed" and secret:  # the old MAC still verifies: a flipped byte is refused
        with pytest.raises(UnsafeStateError, match="signature does not match"):
            load_state(old[:-1] + bytes([old[-1] ^ 1]), secret)


def test_old_real_state_resumes_the_algorithm():
    algo, _ = real_state("random")
    entry = {k: base64.b64decode(v) for k, v in OLD["states"]["random-12"].items()}
    expected = next_params(algo, pickle.loads(entry["reference"]))
    for form, secret in (("unsigned", None), ("signed", SECRET)):
        assert next_params(algo, load_state(entry[form], secret)) == expected


def test_empty_secret_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        dump_state({}, b"")
    with pytest.raises(ConfigurationError):
        load_state(dump_state({}, None), b"")


_json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=4)
        | st.lists(st.floats(allow_nan=False), max_size=4).map(np.array)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(_json_like, st.sampled_from([None, SECRET]), st.booleans())
def test_arbitrary_plain_data_round_trips(value, secret, padded):
    state = [value, "trial " * 150] if padded else value  # padded: large enough to compress
    data = dump_state(state, secret)
    if padded:
        assert data[:5] == ZMAGIC
    assert same_graph(load_state(data, secret), stored_pickle(data))
    assert same_graph(load_state(data, None), stored_pickle(data))


# -- malicious payloads ---------------------------------------------------------------------
class _System:
    """Unpickling this runs a shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.path)}",)


class _Exec:
    """Unpickling this runs Python code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.exec, (f"open({self.path!r}, 'w').close()",)


def test_the_payloads_really_are_malicious(tmp_path):
    for cls in (_System, _Exec):
        target = tmp_path / cls.__name__
        pickle.loads(pickle.dumps(cls(target)))
        assert target.exists()


def _forgeries(payload, attacker_secret=b"attacker"):
    """(description, bytes, reader secret) for every way to smuggle ``payload`` in."""
    raw = pickle.dumps(payload)
    unsigned = dump_state(payload, None)
    wrong_sig = dump_state(payload, attacker_secret)
    zero_mac = MAGIC + b"\x01" + b"\x00" * 32 + unsigned[6:]
    frame = zstandard.ZstdCompressor().compress(raw)
    attacker_mac = hmac.new(attacker_secret, ZMAGIC + b"\x01" + frame, hashlib.sha256).digest()
    return [
        ("zstd-unsigned/no-secret", ZMAGIC + b"\x00" + frame, None),
        ("zstd-data/no-secret", ZMAGIC + b"\x02" + frame, None),
        ("zstd-signed-by-attacker/no-secret", ZMAGIC + b"\x01" + attacker_mac + frame, None),
        ("zstd-unsigned/secret", ZMAGIC + b"\x00" + frame, SECRET),
        ("zstd-data/secret", ZMAGIC + b"\x02" + frame, SECRET),
        ("zstd-signed-by-attacker/secret", ZMAGIC + b"\x01" + attacker_mac + frame, SECRET),
        ("zstd-zero-mac/secret", ZMAGIC + b"\x01" + b"\x00" * 32 + frame, SECRET),
        ("legacy-raw/no-secret", raw, None),
        ("unsigned/no-secret", unsigned, None),
        ("signed-by-attacker/no-secret", wrong_sig, None),
        ("legacy-raw/secret", raw, SECRET),
        ("unsigned/secret", unsigned, SECRET),
        ("signed-by-attacker/secret", wrong_sig, SECRET),
        ("zero-mac/secret", zero_mac, SECRET),
    ]


@pytest.mark.parametrize(
    "cls, refused_global", [(_System, f"{os.system.__module__}.system"), (_Exec, "builtins.exec")]
)
def test_malicious_payload_is_refused_and_never_runs(tmp_path, cls, refused_global):
    target = tmp_path / "pwned"
    for what, data, secret in _forgeries(cls(target)):
        with pytest.raises(UnsafeStateError) as err:
            load_state(data, secret)
        message = str(err.value)
        if "signed-by-attacker/secret" in what or "zero-mac" in what:
            assert "signature does not match" in message, what
        else:
            assert refused_global in message, what
            assert "state_secret" in message and SECRET_ENV in message, what
        assert not target.exists(), what


@dataclasses.dataclass
class Point:
    """Harmless, but not allow-listed."""

    x: int
    y: int


def test_signed_non_allow_listed_class_needs_the_right_secret():
    point = Point(1, 2)
    assert load_state(dump_state(point, SECRET), SECRET) == point
    for what, data, secret in _forgeries(point):
        with pytest.raises(UnsafeStateError) as err:
            load_state(data, secret)
        assert "Point" in str(err.value) or "signature" in str(err.value), what
    with pytest.raises(UnsafeStateError, match="Point"):
        load_state(dump_state(point, SECRET), None)


def test_protocol_2_getattr_of_nested_class_is_refused():
    param = Trial.Param(name="x", type="real", value=1.0)
    assert load_state(pickle.dumps(param, protocol=4), None) == param
    with pytest.raises(UnsafeStateError, match="builtins.getattr"):
        load_state(pickle.dumps(param, protocol=2), None)


# Payloads that use only allow-listed globals but would corrupt memory or patch classes.
_reconstruct = np.array(0).__reduce__()[0]  # numpy's own array-unpickling helper


class _NdarrayCall:
    """``ndarray(shape, object, buffer)`` reads raw bytes as PyObject pointers."""

    def __reduce__(self):
        return np.ndarray, ((1,), np.dtype(object), b"\x41" * 8)


class _OutOfBoundsDtype:
    """A structured dtype whose object field lies 100 kB past the end of an 8-byte item."""

    def __reduce__(self):
        fields = {"a": (np.dtype(object), 100_000)}
        return np.dtype, ("V8", False, True), (3, "|", None, ("a",), fields, 8, 1, 63)


class _StatelessDtype:
    """A dtype that never receives its state (BUILD) before an array uses it."""

    def __reduce__(self):
        return np.dtype, ("f8", False, True)


class _ArrayOf:
    def __init__(self, dtype, data):
        self.dtype, self.data = dtype, data

    def __reduce__(self):
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), self.dtype, False, self.data)


@pytest.mark.parametrize(
    "payload, match",
    [
        (_NdarrayCall(), "numpy.ndarray directly"),
        (_ArrayOf(_OutOfBoundsDtype(), [(1,)]), "not a plain dtype"),
        (_ArrayOf(_StatelessDtype(), b"\x00" * 8), "not been validated"),
    ],
    ids=["ndarray-call", "out-of-bounds-dtype", "stateless-dtype"],
)
def test_memory_unsafe_numpy_payloads_are_refused(payload, match):
    # Never loaded unrestricted: the out-of-bounds dtype segfaults the interpreter.
    with pytest.raises(UnsafeStateError, match=match):
        load_state(pickle.dumps(payload, protocol=4), None)


def test_setting_attributes_on_an_allow_listed_class_is_refused():
    # GLOBAL Trial, then BUILD (None, {"pwned": 1}): setattr(Trial, "pwned", 1)
    data = b"\x80\x02corion.core.worker.trial\nTrial\nN}X\x05\x00\x00\x00pwnedK\x01s\x86b."
    with pytest.raises(UnsafeStateError, match="sets the state of a 'type'"):
        load_state(data, None)
    assert not hasattr(Trial, "pwned")


def test_copyreg_extension_codes_are_refused():
    with pytest.raises(UnsafeStateError, match="extension codes"):
        load_state(b"\x80\x02\x82\x01.", None)  # EXT1 code 1


# -- compressed states: tampering and decompression bombs ---------------------------------------
def test_tampered_compressed_state_is_refused():
    _, state = real_state("random")
    signed, unsigned = dump_state(state, SECRET), dump_state(state, None)
    assert signed[:5] == unsigned[:5] == ZMAGIC
    for at in (38, 45, len(signed) // 2, len(signed) - 1):  # frame header, blocks, the end
        forged = signed[:at] + bytes([signed[at] ^ 0x20]) + signed[at + 1 :]
        with pytest.raises(UnsafeStateError, match="signature does not match"):
            load_state(forged, SECRET)
    for at in (6, 13, len(unsigned) // 2, len(unsigned) - 1):
        forged = unsigned[:at] + bytes([unsigned[at] ^ 0x20]) + unsigned[at + 1 :]
        with pytest.raises(UnsafeStateError):
            load_state(forged, None)


def test_the_signature_covers_the_format_version():
    """A signed state re-labelled as the other version keeps a valid MAC over its body only."""
    big, small = dump_state(SAMPLE, SECRET), dump_state({"n": 1}, SECRET)
    assert big[:5] == ZMAGIC and small[:5] == MAGIC
    for data, other in ((big, MAGIC), (small, ZMAGIC)):
        with pytest.raises(UnsafeStateError, match="signature does not match"):
            load_state(other + data[5:], SECRET)


def _frame_declaring(size: int) -> bytes:
    """A zstd frame whose header declares ``size`` bytes and that holds one raw byte."""
    descriptor = 0b1110_0000  # 8-byte content size field, single segment
    block = (1 | 0 << 1 | 1 << 3).to_bytes(3, "little") + b"."  # last block, raw, 1 byte
    return b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + size.to_bytes(8, "little") + block


@pytest.mark.parametrize("flag", [0, 2], ids=["unsigned", "data"])
def test_a_decompression_bomb_is_refused_before_any_allocation(flag):
    bomb = ZMAGIC + bytes([flag]) + _frame_declaring(1 << 40)  # 1 TiB
    assert zstandard.frame_content_size(bomb[6:]) == 1 << 40
    with pytest.raises(UnsafeStateError, match="declares 1099511627776 bytes.*decompression bomb"):
        load_state(bomb, None)
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x80\x05N." * 100)
    with pytest.raises(UnsafeStateError, match="does not declare its size"):
        load_state(ZMAGIC + bytes([flag]) + frame, None)


def test_the_decompressed_size_limit_is_enforced(monkeypatch):
    data = dump_state({"pad": "x" * 5000}, None)
    monkeypatch.setattr(statecodec, "MAX_INFLATED", len(stored_pickle(data)))
    assert load_state(data, None) == {"pad": "x" * 5000}  # exactly at the limit
    monkeypatch.setattr(statecodec, "MAX_INFLATED", len(stored_pickle(data)) - 1)
    with pytest.raises(UnsafeStateError, match="decompression bomb"):
        load_state(data, None)
    assert MAX_INFLATED >= 1 << 30  # the real limit is generous


@pytest.mark.parametrize(
    "data, match",
    [
        (ZMAGIC + b"\x02" + b"not a zstd frame", "compressed data is corrupt"),
        (
            ZMAGIC + b"\x02" + zstandard.ZstdCompressor().compress(pickle.dumps({})) + b"tail",
            "unused data",
        ),
        (ZMAGIC + b"\x00" + _frame_declaring(1), "not a valid allow-listed pickle"),  # "."
        (ZMAGIC, "truncated"),
    ],
)
def test_corrupt_compressed_state_is_refused(data, match):
    with pytest.raises(UnsafeStateError, match=match):
        load_state(data, None)


# -- truncated, garbage, wrong types ----------------------------------------------------------
@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
def test_truncated_state_is_refused(secret):
    data = dump_state(SAMPLE, secret)
    for cut in (0, 3, 5, 6, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(UnsafeStateError):
            load_state(data[:cut], secret)
        with pytest.raises(UnsafeStateError):
            load_state(data[:cut], None)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"not a pickle at all", "not a valid allow-listed pickle"),
        (b"\x80\x05garbage", "not a valid allow-listed pickle"),
        (bytes(range(256)), "not a valid allow-listed pickle"),
        (MAGIC, "truncated"),
        (MAGIC + b"\x07" + b"x" * 40, "unknown header flag"),
        (b"OTRS9\x00" + pickle.dumps({}), "unknown version"),
        (MAGIC + b"\x01" + b"x" * 32, "truncated"),
    ],
)
def test_garbage_is_refused(data, match):
    with pytest.raises(UnsafeStateError, match=match):
        load_state(data, None)


@pytest.mark.parametrize("data", [None, "text", 42, [b"x"]])
def test_non_bytes_is_refused(data):
    with pytest.raises(UnsafeStateError, match="must be bytes"):
        load_state(data, SECRET)


def test_signed_state_that_cannot_be_rebuilt_is_reported():
    body = b"\x80\x02cno_such_module\nThing\n."  # GLOBAL of a module this worker lacks
    mac = hmac.new(SECRET, MAGIC + b"\x01" + body, hashlib.sha256).digest()  # as dump_state
    with pytest.raises(UnsafeStateError, match="could not be unpickled"):
        load_state(MAGIC + b"\x01" + mac + body, SECRET)


# -- the allow-list itself ----------------------------------------------------------------------
def test_allow_list_has_nothing_that_runs_code():
    forbidden_modules = {
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "importlib",
        "functools",
        "operator",
        "pickle",
        "shutil",
        "socket",
        "runpy",
        "code",
        "types",
        "io",
        "ctypes",
        "marshal",
        "scipy.stats._continuous_distns",
    }
    safe_builtins = {
        "set",
        "frozenset",
        "complex",
        "slice",
        "range",
        "object",
        "tuple",
        "list",
        "dict",
    }
    for module, name in SAFE_GLOBALS:
        assert module not in forbidden_modules and not module.startswith("numpy.random")
        if module == "builtins":
            assert name in safe_builtins


def test_every_allow_listed_global_resolves():
    unpickler = _SafeUnpickler(b"")
    for module, name in sorted(SAFE_GLOBALS):
        assert unpickler.find_class(module, name) is not None
