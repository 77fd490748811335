"""Oríon's Dask executor, made to keep the results it is given (runs on this backend only).

Oríon 0.2.7's ``dask_backend._Future`` polls a trial's future with ``future.result(0.01)`` and
keeps *any* exception of that poll as the trial's outcome. distributed's ``sync()`` sometimes
fails a call whose timeout races the reply (``UnboundLocalError: cannot access local variable
'result'``, seen on every distributed from 2022.12 to 2026.8, more often on a loaded node), so a
finished trial is marked broken and a fleet can stop with ``BrokenExperiment``. A poll's own
failure says nothing about the trial: here ``wait`` only waits, and ``get`` reads a finished
future's outcome from its status (``exception()`` for an error) and retries the read when
``sync()`` fails that way. tests/faults/test_daskfix.py shows unmodified Oríon losing the result.

Active inside a ``Runner.run`` on this backend (orion_patches/runner.py);
``ORION_REDIS_DASK_FIX=0`` turns it
off; without dask, nothing is patched.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

log = logging.getLogger(__name__)

ENV = "ORION_REDIS_DASK_FIX"
READ_TRIES = 5  # a failed sync() is rare: a few tries read the result for certain in practice

_ACTIVE = contextvars.ContextVar("orion_redis_dask_fix", default=False)


@contextlib.contextmanager
def active():
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def install() -> bool:
    """Patch Oríon's Dask future once; False where dask (or Oríon's backend for it) is absent."""
    try:
        from orion.executor import dask_backend
    except ImportError:
        return False
    if not getattr(dask_backend, "HAS_DASK", False):
        return False
    future_class = dask_backend._Future
    if getattr(future_class, "__patched_by_orion_track_redis__", False):
        return True
    oriones_get, oriones_wait = future_class.get, future_class.wait

    def get(self, timeout=None):
        if not _ACTIVE.get() or not self.future.done():
            return oriones_get(self, timeout)
        return _read(self.future)

    def wait(self, timeout=None):
        if not _ACTIVE.get():
            return oriones_wait(self, timeout)
        with contextlib.suppress(Exception):  # the outcome is read by get(), not by a poll
            self.future.result(timeout)

    future_class.get, future_class.wait = get, wait
    future_class.__patched_by_orion_track_redis__ = True
    return True


def _read(future):
    """A finished future's result, or its exception raised, without trusting one sync()."""
    if future.status == "error":
        raise future.exception()
    for attempt in range(READ_TRIES):
        try:
            return future.result()
        except UnboundLocalError:  # distributed's sync() lost the reply: read it again
            log.debug("orion-track-redis: dask result read failed (%d), retrying", attempt + 1)
    return future.result()
