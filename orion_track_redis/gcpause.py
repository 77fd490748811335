"""Pause Python's cyclic garbage collector around bulk decoding and encoding."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def no_gc():
    """Pause the cyclic GC while decoding/building thousands of acyclic objects: its
    generation sweeps otherwise triple the cost of a 10k-trial fetch, and make unpickling a
    2,000-trial algorithm state 5x slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
