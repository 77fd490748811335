"""Oríon's ``Runner.run`` (what ``orion hunt`` and ``workon`` run), wrapped for experiments on
this backend with what a cluster fleet needs and Oríon 0.2.7 lacks: the clean stop on SIGTERM
(orion_patches/shutdown.py) and the Dask executor that keeps its results
(orion_patches/daskfix.py). A run on any other
storage, and every run on an Oríon version these were not verified on, is Oríon's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from importlib import metadata

from orion_track_redis.orion_patches import daskfix, shutdown
from orion_track_redis.orion_patches.hold import VERIFIED_ORION, env_allows

log = logging.getLogger(__name__)

_installed: bool | None = None


def install() -> bool:
    """Wrap ``Runner.run`` once per process; False (one log line) on an unverified Oríon."""
    global _installed
    if _installed is None:
        version = metadata.version("orion")
        _installed = version in VERIFIED_ORION
        if _installed:
            _wrap_run()
            os.register_at_fork(after_in_child=shutdown.defaults_in_child)
            daskfix.install()
        else:
            log.warning(
                "orion-track-redis: clean stop on SIGTERM and Dask fix off: verified on Oríon "
                "%s, this is Oríon %s (Oríon's own code runs).",
                ", ".join(VERIFIED_ORION),
                version,
            )
    return _installed


def _wrap_run() -> None:
    from orion.client.runner import Runner

    oriones_run = Runner.run

    def run(self):
        storage = getattr(getattr(self.client, "_experiment", None), "_storage", None)
        opts = getattr(storage, "stop_options", None)
        if opts is None:  # another storage
            return oriones_run(self)
        with contextlib.ExitStack() as stack:
            if shutdown.allowed(opts):
                stack.enter_context(shutdown.trapped(opts.stop_grace))
            if env_allows(daskfix.ENV):
                stack.enter_context(daskfix.active())
            return oriones_run(self)

    run.__doc__ = oriones_run.__doc__
    run.__wrapped_by_orion_track_redis__ = oriones_run  # type: ignore[attr-defined]
    Runner.run = run
