"""One line that matters must not drown: Oríon 0.2.7 prints an 8-line RuntimeWarning (its
``profet`` benchmark extras are not installed: torch, GPy) at the start of every ``orion``
command, whatever the command. Only benchmarks' Profet tasks need those extras, and using one
still fails with Oríon's ImportError. So that one warning is ignored in the ``orion`` command
only; every other warning, and every other program, is untouched. Installed at interpreter
start-up (startup.py, through ``orion_track_redis_redact.pth``): stdlib only.
"""

from __future__ import annotations

import os
import sys
import warnings


def install() -> None:
    argv = getattr(sys, "argv", None) or [""]
    if os.path.basename(argv[0]) == "orion":
        warnings.filterwarnings(
            "ignore",
            message=r"The `profet` extras needs to be installed",
            category=RuntimeWarning,
        )
