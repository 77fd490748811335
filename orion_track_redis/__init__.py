"""orion-track-redis: a Redis storage backend for Oríon (``storage: {type: redis}``).

Names are imported on first use: ``orion_track_redis_redact.pth`` imports
``orion_track_redis.redaction`` in every Python process of the environment (see that module),
which must not pull in Oríon or redis-py. Importing the package does nothing else.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = [
    "Redis",
    "RedisStorageError",
    "ConfigurationError",
    "ConnectionFailed",
    "CorruptData",
    "EmbeddedServerError",
    "UnsafeStateError",
    "__version__",
]
_HOMES = {"Redis": ".storage", **{name: ".errors" for name in __all__[1:-1]}}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
