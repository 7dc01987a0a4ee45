"""Domain errors: what went wrong, in the domain's words; no transport here.

The API edge maps each class to a gRPC status code in one place (``server.api.interceptors.STATUS``),
as MLServer does; the field an ``InvalidArgument`` names goes into a ``google.rpc.BadRequest`` detail.

>>> err = InvalidArgument("price must be >= 0", field="price")
>>> (err.message, err.field, isinstance(err, PortraitError))
('price must be >= 0', 'price', True)
"""

from __future__ import annotations


class PortraitError(Exception):
    """Base error: a message for the caller and, optionally, the request field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(PortraitError):
    """A request field is invalid; ``field`` names it."""


class NotFound(PortraitError):
    """The requested user has no profile."""


class Unavailable(PortraitError):
    """A dependency (the online store) is unreachable; the caller may retry."""


class ResourceExhausted(PortraitError):
    """The server is overloaded; the caller should back off and retry."""


class FailedPrecondition(PortraitError):
    """The request is valid but the user's state forbids it (e.g. an erased, suppressed user)."""


class DeadlineExceeded(PortraitError):
    """A time limit ran out (the server's own limit of a call, or a stream that went silent)."""
