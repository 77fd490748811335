"""orion-track-redis: a Redis storage backend for Oríon (``storage: {type: redis}``)."""
from .errors import (
    ConfigurationError,
    ConnectionFailed,
    CorruptData,
    EmbeddedServerError,
    RedisStorageError,
    UnsafeStateError,
)
from .storage import Redis

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
