"""Server interceptors: map domain errors to gRPC statuses, count/time every RPC, limit its time and
admission, and turn undecodable requests into INVALID_ARGUMENT.

One interceptor does all of it, so every RPC — including ones that fail — is
counted in ``grpc_server_handled_total`` with its final code. It is the outermost
interceptor: refusals by inner ones (``security.AuthInterceptor``) are counted too.

Admission is fair between kinds: unary calls and client streams have separate in-flight budgets
(``max_inflight`` and ``max_inflight_streams``), so streams that hold their slot — even idle ones, until
``stream_idle_s`` ends them — never take a unary call's place.

Unexpected exceptions are logged with their type and stack only: exception messages
can carry data (redis-py puts Redis keys, i.e. user ids, into its error strings).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.api.decode import decode_problem
from server.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PortraitError,
    ResourceExhausted,
    Unavailable,
)
from server.logs import OncePerCause
from server.metrics import Metrics

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


#: The one place domain errors become gRPC status codes (a subclass takes its nearest base's code).
STATUS: dict[type[PortraitError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(err: PortraitError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (INTERNAL for one without a mapping).

    >>> status_code(StreamIdle("silent")).name, status_code(PortraitError("?")).name
    ('DEADLINE_EXCEEDED', 'INTERNAL')
    """
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def _status(err: PortraitError) -> grpc.Status:
    code = status_code(err)
    st = status_pb2.Status(code=getattr(code_pb2, code.name), message=err.message)
    if err.field and code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)]))
        st.details.append(detail)
    return rpc_status.to_status(st)


class TimeLimitExceeded(DeadlineExceeded):
    """The server-side time limit of the RPC ran out."""


class StreamIdle(DeadlineExceeded):
    """A client stream sent nothing for the idle limit; what it sent before was processed."""


class Undecodable:
    """Stands for request bytes protobuf could not decode (gRPC would answer UNKNOWN and log a traceback)."""

    __slots__ = ("field", "message")

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message


def _decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns an ``Undecodable`` instead of raising."""
    if deserializer is None:
        return None
    desc = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            if desc is None:
                return Undecodable("", "the request could not be decoded")
            return Undecodable(*decode_problem(desc, data))

    return decode


def redacted_traceback(exc: BaseException) -> str:
    """The exception's type and stack (with its causes), without any exception message.

    >>> user = "user-42"
    >>> try:
    ...     raise KeyError(f"no row for {user}")
    ... except KeyError as e:
    ...     text = redacted_traceback(e)
    >>> "KeyError" in text, user in text
    (True, False)
    """
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = f"{type(cur).__module__}.{type(cur).__qualname__}"
        parts.append("".join(traceback.format_tb(cur.__traceback__)) + f"{name} (message withheld)")
        cur = cur.__cause__ or cur.__context__
    return "\n  caused by:\n".join(parts)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Maps ``PortraitError`` to its status (+ google.rpc.BadRequest), records gRPC metrics and
    applies the server-side time limits (``rpc_timeout_s`` for unary RPCs, ``stream_timeout_s``
    for client streams; None or 0 = none)."""

    def __init__(self, metrics: Metrics, max_inflight: int = 256, rpc_timeout_s: float | None = None,
                 stream_timeout_s: float | None = None, max_inflight_streams: int = 64,
                 stream_idle_s: float | None = None) -> None:
        self._metrics = metrics
        self.max_inflight = max_inflight
        self.max_inflight_streams = max_inflight_streams
        self.rpc_timeout_s = rpc_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.stream_idle_s = stream_idle_s
        self._inflight = {"unary": 0, "client_stream": 0}
        self._decode_warnings = OncePerCause(log, every_s=10.0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, method = _split(details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(handler.unary_unary, "unary", service, method),
                request_deserializer=_decoding(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, "client_stream", service, method),
                request_deserializer=_decoding(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler  # streaming responses (health Watch, reflection): not wrapped

    def _wrap(self, behavior: Callable[..., Any], kind: str, service: str, method: str) -> Callable[..., Any]:
        handled = self._metrics.grpc_handled
        seconds = self._metrics.grpc_handling.labels(grpc_type=kind, grpc_service=service, grpc_method=method)
        limit = (self.rpc_timeout_s if kind == "unary" else self.stream_timeout_s) or None
        counted = 0 if service == HEALTH_SERVICE else 1  # probes must answer under load: not capped
        budget = self.max_inflight if kind == "unary" else self.max_inflight_streams
        what = "RPCs" if kind == "unary" else "streams"
        inflight = self._inflight

        def undecodable(request: Undecodable, index: int | None = None) -> InvalidArgument:
            self._metrics.rejected.labels(reason="decode").inc()
            where = "" if index is None else f"message {index} of the stream: "
            # one cause for all: the messages name fields and indices, which would make the causes unbounded
            self._decode_warnings.failed("decode", "undecodable request to %s/%s: %s%s", service, method,
                                         where, request.message)
            done = "" if index is None else f" (the {index} messages before it were processed)"
            return InvalidArgument(f"{where}{request.message}{done}", field=request.field or None)

        async def checked(requests: Any) -> Any:
            """The stream's messages: undecodable ones end it with INVALID_ARGUMENT, silence with StreamIdle."""
            it = requests.__aiter__()
            idle = self.stream_idle_s or None
            index = 0
            while True:
                try:
                    async with asyncio.timeout(idle):
                        m = await it.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    self._metrics.rejected.labels(reason="stream_idle").inc()
                    raise StreamIdle(f"the stream sent nothing for {idle:g} s and was ended; the {index} messages "
                                     "before were processed (resending them is safe: duplicates are dropped)") from None
                if isinstance(m, Undecodable):
                    raise undecodable(m, index)
                index += 1
                yield m

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if kind == "unary" and isinstance(request, Undecodable):
                raise undecodable(request)
            if kind == "client_stream":
                request = checked(request)
            if limit is None:
                return await behavior(request, context)
            timer = asyncio.timeout(limit)
            try:
                async with timer:
                    return await behavior(request, context)
            except TimeoutError:
                if not timer.expired():
                    raise
                self._metrics.rejected.labels(reason="time_limit").inc()
                raise TimeLimitExceeded(f"the server's time limit of {limit:g} s for this call ran out") from None

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            inflight[kind] += counted
            try:
                if counted and inflight[kind] > budget:  # backpressure: clients retry with backoff
                    self._metrics.rejected.labels(reason="inflight").inc()
                    raise ResourceExhausted(f"more than {budget} {what} in flight; retry with backoff")
                response = await limited(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except PortraitError as err:
                st = _status(err)
                code = st.code
                await context.abort(st.code, st.details, st.trailing_metadata)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.error("unhandled error in %s/%s: %s", service, method, redacted_traceback(exc))
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                inflight[kind] -= counted
                if isinstance(code, int):
                    code = grpc.StatusCode(code)
                seconds.observe(time.perf_counter() - t0)
                handled.labels(grpc_type=kind, grpc_service=service, grpc_method=method,
                               grpc_code=code.name).inc()

        return wrapper
