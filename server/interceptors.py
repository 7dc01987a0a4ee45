"""Server interceptors: map domain errors to gRPC statuses, and count/time every RPC.

One interceptor does both, so every RPC — including ones that fail — is
counted in ``grpc_server_handled_total`` with its final code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.errors import PortraitError, ResourceExhausted
from server.metrics import Metrics

log = logging.getLogger(__name__)


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _status(err: PortraitError) -> grpc.Status:
    st = status_pb2.Status(code=getattr(code_pb2, err.code.name), message=err.message)
    if err.field and err.code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)]))
        st.details.append(detail)
    return rpc_status.to_status(st)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Maps ``PortraitError`` to its status (+ google.rpc.BadRequest) and records gRPC metrics."""

    def __init__(self, metrics: Metrics, max_inflight: int = 256) -> None:
        self._metrics = metrics
        self.max_inflight = max_inflight
        self._inflight = 0

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
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, "client_stream", service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # streaming responses (health Watch, reflection): not wrapped

    def _wrap(self, behavior: Callable[..., Any], kind: str, service: str, method: str) -> Callable[..., Any]:
        handled = self._metrics.grpc_handled
        seconds = self._metrics.grpc_handling.labels(grpc_type=kind, grpc_service=service, grpc_method=method)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            self._inflight += 1
            try:
                if self._inflight > self.max_inflight:  # backpressure: clients retry with backoff
                    self._metrics.rejected.labels(reason="inflight").inc()
                    raise ResourceExhausted(f"more than {self.max_inflight} RPCs in flight; retry with backoff")
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except PortraitError as err:
                code = err.code
                st = _status(err)
                await context.abort(st.code, st.details, st.trailing_metadata)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s/%s", service, method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                self._inflight -= 1
                if isinstance(code, int):
                    code = grpc.StatusCode(code)
                seconds.observe(time.perf_counter() - t0)
                handled.labels(grpc_type=kind, grpc_service=service, grpc_method=method,
                               grpc_code=code.name).inc()

        return wrapper
