"""Logging set-up: plain text (the default) or one JSON object per line (``PORTRAIT_LOG_JSON``).

``configure_logging(level, json)`` installs one handler on the root logger (stderr).
JSON lines carry ``ts`` (ISO-8601 UTC, milliseconds), ``level``, ``logger``,
``message``, ``exc_info`` (the formatted traceback, when there is one),
``stack_info`` (when asked for) and every field passed with ``extra=``; values
that are not JSON types are written as ``str(value)``.

>>> import logging
>>> record = logging.makeLogRecord({"name": "portrait", "levelname": "INFO", "msg": "served %d events",
...                                 "args": (3,), "created": 1767225600.5, "batch": 7})
>>> print(JsonFormatter().format(record))
{"ts": "2026-01-01T00:00:00.500Z", "level": "INFO", "logger": "portrait", "message": "served 3 events", "batch": 7}
"""

from __future__ import annotations

import errno as _errno
import json as _json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, NoReturn

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The plain-text format (what ``portrait serve`` has always printed)."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_RESERVED = ("ts", "level", "logger", "message", "exc_info", "stack_info")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            out[f"extra_{key}" if key in _RESERVED else key] = value
        return _json.dumps(out, default=str, ensure_ascii=False)


class _PortraitHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so reconfiguring replaces only it."""


def configure_logging(level: str, json: bool, *, stream: IO[str] | None = None) -> None:
    """Set the root logger's level and install one handler (stderr unless ``stream`` is given):
    JSON lines when ``json`` is true, else ``PLAIN_FORMAT``. Calling it again replaces that handler;
    handlers installed by others (pytest, an embedding application) are left alone."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _PortraitHandler):
            root.removeHandler(h)
            h.close()
    handler = _PortraitHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Feast logs "Registry cache expired, so refreshing" at INFO each time a store's registry cache
    # (cache_ttl_seconds) runs out — every minute per store, forever; it says nothing an operator acts on
    if logging.getLevelName(level.upper()) != logging.DEBUG:
        logging.getLogger("feast.infra.registry").setLevel(logging.WARNING)


def exit_quietly(code: int) -> NoReturn:
    """Leave without the interpreter's teardown once a process's work is done and durable (the server after a
    clean stop, the online-writer child). DuckDB (loaded by Feast) is built with nanobind, which prints ~100
    lines of "nanobind: leaked instance / leaked type" when the interpreter finalizes modules with its objects
    still referenced; nothing of Portrait's needs that teardown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class OncePerCause:
    """Logs a recurring problem once per cause, not once per retry.

    ``failed(cause, msg, ...)`` logs the first failure of a cause (e.g. ``"OSError/EMFILE"``), then at
    most one line per ``every_s`` seconds for it, carrying the count since the last line;
    ``recovered(msg)`` logs once that every cause has cleared (and forgets them).

    >>> import logging, io
    >>> out = io.StringIO(); lg = logging.getLogger("doctest.once"); lg.propagate = False
    >>> lg.addHandler(logging.StreamHandler(out)); lg.setLevel(logging.INFO)
    >>> once = OncePerCause(lg, every_s=3600)
    >>> for _ in range(500):
    ...     _ = once.failed("OSError/EMFILE", "offline append failed: %s", "OSError/EMFILE")
    >>> once.recovered("offline appends recovered")
    >>> print(out.getvalue().strip())
    offline append failed: OSError/EMFILE
    offline appends recovered (500 failures)
    """

    def __init__(self, logger: logging.Logger, every_s: float = 60.0, level: int = logging.WARNING) -> None:
        self.logger = logger
        self.every_s = every_s
        self.level = level
        self._causes: dict[str, list[float]] = {}  # cause -> [last logged (monotonic), count since, total]

    def failed(self, cause: str, msg: str, *args: Any) -> bool:
        """Record one failure; returns whether a line was logged."""
        now = time.monotonic()
        seen = self._causes.get(cause)
        if seen is None:
            self._causes[cause] = [now, 0, 1]
            self.logger.log(self.level, msg, *args)
            return True
        seen[1] += 1
        seen[2] += 1
        if now - seen[0] < self.every_s:
            return False
        self.logger.log(self.level, msg + " (%d more since the last report)", *args, int(seen[1]))
        seen[0], seen[1] = now, 0
        return True

    def recovered(self, msg: str, *args: Any) -> None:
        """Log ``msg`` once if any failure was recorded since the last recovery."""
        if self._causes:
            total = int(sum(c[2] for c in self._causes.values()))
            self._causes.clear()
            self.logger.info(msg + " (%d failures)", *args, total)


def cause_of(exc: BaseException) -> str:
    """A short, data-free name for an exception's cause: its type and, for OS errors, the errno name.

    >>> import errno
    >>> cause_of(OSError(errno.EMFILE, "Too many open files"))
    'OSError/EMFILE'
    """
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{name}/{_errno.errorcode.get(exc.errno, exc.errno)}"
    return name
