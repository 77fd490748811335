"""The scripts' return codes, named once (each script's header, "Returns", says them), and
the one table of the codes that refuse a call, with the exception of Oríon's each becomes."""

from __future__ import annotations

from orion.core.io.database import DuplicateKeyError
from orion.storage.base import FailedUpdate

# the plain outcomes
DONE = 1  # created, registered, updated, released, acquired
WAIT = 0  # lock_acquire: another holds it (the reply says for how long and our place)
NO_LOCK = -1  # lock_acquire, lock_release: the experiment has no lock record
NOT_HOLDER = 0  # lock_release: our hold expired, another worker took over (nothing written)
STALE_BASE = 2  # lock_release: released, but the state our delta applies to was replaced

# (script, code) -> (exception, message: str.format of the refused call's facts)
REFUSALS: dict[tuple[str, int], tuple[type[Exception], str]] = {
    ("create_experiment", -1): (
        DuplicateKeyError,
        "Duplicate key error: index=name_1_version_1 value=({name!r}, {version!r})",
    ),
    ("create_experiment", -2): (DuplicateKeyError, "Duplicate key error: index=_id_ value={id!r}"),
    ("register_trial", -1): (
        DuplicateKeyError,
        "Duplicate key error: index=experiment_1_id_1 value=({experiment!r}, {id!r})",
    ),
    ("update_trial", 0): (FailedUpdate, "trial {id} is not {status} in storage{why}"),
    ("update_trial", -1): (FailedUpdate, "trial {id} does not exist in storage"),
}


def refusal(script: str, code: int, **facts) -> Exception | None:
    """The exception for ``code`` of ``script`` when it refuses the call, else None."""
    found = REFUSALS.get((script, code))
    if found is None:
        return None
    kind, message = found
    return kind(message.format(**facts))


def check(script: str, code: int, **facts) -> int:
    """``code``, unless it refuses the call: then its exception is raised."""
    error = refusal(script, code, **facts)
    if error is not None:
        raise error
    return code
