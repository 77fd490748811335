"""Which stored algorithm state a worker's in-memory algorithm is at (versioned state).

A copy-free hold leaves the worker's algorithm resident (orion_patches/hold.py): after a release
that wrote
its state, the algorithm is exactly the stored state named ``<epoch>:<version>`` (store/lock.py),
and
its next hold asks only for what it lacks. The token lives on the algorithm object itself, so a
replaced algorithm has none (it reads the whole state), and a faithful copy carries a token
that is still true. A hold drops it first and sets it again only once its release succeeded: a
failed or lost hold leaves an algorithm that must read the stored state again.
"""

from __future__ import annotations

_TOKEN = "_orion_redis_state"  # attribute of a resident algorithm: the token of its state


def token_of(algorithm) -> str:
    """The state token ``algorithm`` is at; "" when it is not resident."""
    return vars(algorithm).get(_TOKEN) or ""


def remember(algorithm, token: str | None) -> None:
    if token:
        setattr(algorithm, _TOKEN, token)


def forget(algorithm) -> None:
    vars(algorithm).pop(_TOKEN, None)
