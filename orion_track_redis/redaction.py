"""No password or secret in any message or log line, at any verbosity.

:func:`redact` scrubs one text (our own messages use it). :func:`install` makes every log
record of the process pass through it. Oríon's own loggers print the storage configuration,
URI included, at ``-v``/``-vv`` (``Using for storage {...}``, ``Creating redis storage client
with args: {...}``, its config dumps) before this backend is even imported (Oríon loads
storage plugins when it creates the storage, after those lines; tests/tools/test_redaction.py
shows it). Nothing imported later can take those lines back, so the
package ships ``orion_track_redis_redact.pth``: Python runs it at start-up in the environment
where the package is installed, and it runs ``startup.py`` (which calls :func:`install`).
This module is plain standard library, so the start-up cost is a regex compile.
"""

from __future__ import annotations

import logging
import re

# The password runs up to the *last* "@" before the query (?), a fragment, white space or a quote:
# an unescaped "@" or "/" inside a password must not leave its tail visible. Multi-host URIs
# (redis+sentinel://u:pw@h1:1,h2:2/svc) have one userinfo too. Over-redacting is fine.
_PASSWORD_IN_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s'\"]*):(?P<pw>[^?#\s'\"]*)@", re.I
)
# password- and secret-like options (sentinel_password=..., state_secret=...) and their
# keyword, dict and JSON reprs (password='...', 'password': '...', "state_secret": "...")
_SECRET_OPTION = re.compile(
    r"(?P<name>\b[a-z_]*(?:password|secret))(?P<sep>=b?'|': b?'|\": \"|=)(?P<pw>[^&\s'\"]*)", re.I
)
_HINTS = ("://", "password", "secret", "PASSWORD", "SECRET", "Password", "Secret")


def redact(text: object) -> str:
    """Replace the password of every URL found in ``text`` by ``***``, and the value of every
    password or secret option."""
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _SECRET_OPTION.sub(lambda m: f"{m['name']}{m['sep']}***", text)


def _needs_care(text: str) -> bool:
    return any(hint in text for hint in _HINTS)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it itself
        return
    if _needs_care(message):
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        # tracebacks name URIs too; a formatter uses exc_text when it is set
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text) if _needs_care(text) else text


def install() -> None:
    """Redact every log record of this process from now on (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "orion_track_redis", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    factory.orion_track_redis = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
