"""The only code of ours that runs at interpreter start: ``orion_track_redis_redact.pth`` calls
:func:`run` in every Python process of the environment where the package is installed.

Why at start-up: Oríon logs the storage configuration, URI and password included, at
``-v``/``-vv`` before it imports this backend (it loads storage plugins when it creates the
storage), and prints its profet warning when it is imported; nothing imported later can take
those lines back (tests/tools/test_redaction.py shows the first). Standard library only: a regex
compile and a warnings filter. ``ORION_REDIS_STARTUP=0`` turns it off; the first storage of
ours built in a process redacts its log records from then on (orion_patches.apply).
"""

from __future__ import annotations

import os

from orion_track_redis import quiet, redaction

ENV = "ORION_REDIS_STARTUP"


def run() -> None:
    """Redact every log record from now on; in an ``orion`` command, ignore Oríon's profet
    warning. Nothing when ``ORION_REDIS_STARTUP`` says off (0/false/no/off)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    redaction.install()
    quiet.install()
