"""Domain errors that carry their gRPC status code (mapped by ``interceptors.ErrorInterceptor``)."""

from __future__ import annotations

import grpc


class PortraitError(Exception):
    """Base error: a message for the caller and the gRPC status code it maps to."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(PortraitError):
    """A request field is invalid; ``field`` names it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PortraitError):
    """The requested user has no profile."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(PortraitError):
    """A dependency (the online store) is unreachable; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(PortraitError):
    """The server is overloaded; the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(PortraitError):
    """The request is valid but the user's state forbids it (e.g. an erased, suppressed user)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
