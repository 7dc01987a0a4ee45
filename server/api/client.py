"""A typed Python client for ``portrait.v1.ProfileService``.

Retries UNAVAILABLE and RESOURCE_EXHAUSTED with exponential backoff through
gRPC's own retry policy (service config), and sets a deadline on every call.

    with PortraitClient("127.0.0.1:50051") as c:
        c.track(Event("e1", "u1", EventType.VIEW, time.time(), item_id="sku-1"))
        print(c.get_profile("u1").features["views_1h"])

Against a server with TLS and API keys (docs/security.md):

    PortraitClient("portrait.example:50051", api_key=key, tls=True,
                   root_certificates=open("ca.pem", "rb").read())   # omit for the system CAs
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api import convert
from server.domain.events import Event

_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "portrait.v1.ProfileService"}],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "2s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
        },
    }]
})


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer KEY`` to every call (also on plaintext loopback channels,
    where gRPC's call credentials are not sent)."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details, [*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class _Retrying:
    """A stub whose unary calls are tried again on UNAVAILABLE until ``retry_s`` has passed (backoff 0.1 s
    doubling to 2 s): a worker restarting (``PORTRAIT_WORKERS>1``) refuses its users' events for seconds, longer
    than gRPC's own retry policy waits (5 attempts, well under a second of backoff). Safe for writes: an event
    the server acknowledged is deduplicated by ``event_id``. ``TrackStream`` is not retried (its events are
    consumed)."""

    def __init__(self, stub: Any, retry_s: float) -> None:
        self._stub = stub
        self.retry_s = retry_s
        self.retried = 0  # calls tried again

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if name == "TrackStream" or self.retry_s <= 0:
            return method

        def call(request: Any, **kw: Any) -> Any:
            deadline = time.monotonic() + self.retry_s
            pause = 0.1
            while True:
                try:
                    return method(request, **kw)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + pause > deadline:
                        raise
                self.retried += 1
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

        return call


class PortraitClient:
    """Blocking client; ``timeout_s`` is the deadline of each call.

    ``retry_unavailable_s``: unary calls refused with UNAVAILABLE are tried again for this long (0: only gRPC's
    own quick retries) — e.g. while a partition worker restarts; ``retried`` counts them.

    ``api_key``: sent as ``authorization: Bearer KEY``. TLS when ``tls`` is true or any
    certificate is given: ``root_certificates`` (PEM bytes; default: the system CAs),
    ``client_certificate`` + ``client_key`` for mutual TLS, ``server_name`` to verify the
    server's certificate against a name other than the target's host.
    """

    def __init__(self, target: str = "127.0.0.1:50051", timeout_s: float = 10.0,
                 max_message_bytes: int = 16 * 1024 * 1024, *, api_key: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, client_certificate: bytes | None = None,
                 client_key: bytes | None = None, server_name: str | None = None,
                 retry_unavailable_s: float = 0.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if (client_certificate is None) != (client_key is None):
            raise ValueError("client_certificate and client_key go together")
        if tls or root_certificates or client_certificate or server_name:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            creds = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        channel = grpc.intercept_channel(self._channel, _ApiKey(api_key)) if api_key else self._channel
        self._retrying = _Retrying(pb_grpc.ProfileServiceStub(channel), retry_unavailable_s)
        self.stub: Any = self._retrying

    @property
    def retried(self) -> int:
        """Calls tried again after UNAVAILABLE (``retry_unavailable_s``)."""
        return self._retrying.retried

    def __enter__(self) -> PortraitClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def track(self, event: Event, wait_visible: bool = False) -> pb.TrackResponse:
        """Send one event."""
        return self.stub.Track(pb.TrackRequest(event=convert.event_to_proto(event), wait_visible=wait_visible),
                               timeout=self.timeout_s)

    def track_batch(self, events: Iterable[Event], wait_visible: bool = False) -> pb.TrackBatchResponse:
        """Send up to 10,000 events in one call."""
        return self.stub.TrackBatch(
            pb.TrackBatchRequest(events=[convert.event_to_proto(e) for e in events], wait_visible=wait_visible),
            timeout=self.timeout_s)

    def track_encoded(self, events: Sequence[pb.Event], wait_visible: bool = False,
                      timeout_s: float | None = None) -> pb.TrackBatchResponse:
        """``track_batch`` for events already in their wire form (``portrait replay`` reads them so)."""
        return self.stub.TrackBatch(pb.TrackBatchRequest(events=events, wait_visible=wait_visible),
                                    timeout=self.timeout_s if timeout_s is None else timeout_s)

    def track_stream(self, events: Iterable[Event], timeout_s: float | None = None) -> pb.TrackBatchResponse:
        """Stream events (bulk); one summary at the end."""
        return self.stub.TrackStream((convert.event_to_proto(e) for e in events), timeout=timeout_s)

    def score(self, user_id: str, candidates: Iterable[tuple[str, str, float]]) -> list[tuple[str, float]]:
        """Rank ``(item_id, category, price)`` candidates for a user: (item_id, probability), best first."""
        r = self.stub.Score(pb.ScoreRequest(user_id=user_id, candidates=[
            pb.Candidate(item_id=i, category=c, price=p) for i, c, p in candidates]), timeout=self.timeout_s)
        return [(s.item_id, s.probability) for s in r.items]

    def recommend(self, user_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The top ``k`` items for a user: (item_id, probability), best first."""
        r = self.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=k), timeout=self.timeout_s)
        return [(s.item_id, s.probability) for s in r.items]

    def get_profile(self, user_id: str) -> pb.Profile:
        """The user's profile as served by the online store (NOT_FOUND if unknown)."""
        return self.stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=self.timeout_s)

    def update_attributes(self, user_id: str, age: int = 0, gender: str = "", region: str = "") -> int:
        """Set a user's attributes; returns the new profile version."""
        r = self.stub.UpdateAttributes(pb.UpdateAttributesRequest(
            user_id=user_id, attributes=pb.UserAttributes(age=age, gender=gender, region=region)),
            timeout=self.timeout_s)
        return int(r.profile_version)

    def delete_user(self, user_id: str) -> bool:
        """Erase a user (admin key); True if the server held data for them."""
        return bool(self.stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id), timeout=self.timeout_s).existed)

    def unsuppress_user(self, user_id: str) -> bool:
        """Accept an erased user's events again (admin key); True if they were suppressed."""
        r = self.stub.UnsuppressUser(pb.UnsuppressUserRequest(user_id=user_id), timeout=self.timeout_s)
        return bool(r.was_suppressed)

    def compact(self, timeout_s: float | None = None) -> pb.CompactResponse:
        """Rewrite stored files without erased users now (admin key; may take minutes on big data dirs)."""
        return self.stub.Compact(pb.CompactRequest(), timeout=timeout_s)

    def workers(self) -> pb.WorkersResponse:
        """Every process of the deployment: role, pid, host, partitions with applied offset and lag, model
        versions (admin key)."""
        return self.stub.Workers(pb.WorkersRequest(), timeout=self.timeout_s)
