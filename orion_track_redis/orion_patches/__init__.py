"""What this backend changes in Oríon 0.2.7, for its own experiments only, each switchable off
and active only on the Oríon version it was verified on (an other version runs Oríon's code).

:func:`apply` is the one place the patches are installed, once per process, by the first
``Redis`` storage built in it (an unpickled copy installs nothing: where a storage is only
unpickled, in an executor's worker process, no hold runs):

- ``hold.py``: the copy-free algorithm-lock hold and batched observation
  (``accelerate=false`` or ORION_REDIS_ACCELERATE=0; ORION_REDIS_BATCH_OBSERVE=0), with
  ``stepreads.py`` (``Experiment.is_done`` from the status indexes) and ``algocounts.py`` (the
  algorithm's ``is_done`` counts kept as its registries change);
- ``runner.py``: ``Runner.run`` on this backend, with ``shutdown.py``'s clean stop on SIGTERM
  (``trap_signals=false`` or ORION_REDIS_TRAP_SIGNALS=0) and ``daskfix.py``'s Dask executor
  that keeps its results (ORION_REDIS_DASK_FIX=0);
- in the ``orion`` program only, ``errors.install_cli_excepthook``: one line instead of a
  traceback for an error of ours (ORION_REDIS_TRACEBACK=1 keeps the traceback).

Two changes happen elsewhere, because they must act before any storage of ours exists:
``config/misdirect.py``'s guard of Oríon's Legacy storage (installed when Oríon imports
``storage.py``: a Redis URI given to PickledDB is refused), and the redaction of every log record
and Oríon's profet warning (``startup.py``, run by ``orion_track_redis_redact.pth``: Oríon logs
the storage configuration before it imports this backend).
"""

from __future__ import annotations


def apply() -> bool:
    """Install the patches of this process (idempotent); True if the hold patches are on."""
    from orion_track_redis import redaction
    from orion_track_redis.errors import install_cli_excepthook
    from orion_track_redis.orion_patches import hold, runner

    redaction.install()  # already done at start-up, unless ORION_REDIS_STARTUP=0
    install_cli_excepthook()
    runner.install()
    return hold.install()
