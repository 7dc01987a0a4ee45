"""Transport security and access control of the gRPC port (see docs/security.md).

* **TLS** from PEM files (``PORTRAIT_TLS_CERT`` + ``PORTRAIT_TLS_KEY``), **mutual TLS** when
  ``PORTRAIT_TLS_CLIENT_CA`` is set. gRPC asks :class:`CertificateFiles` for the certificates at
  every new connection (``grpc.dynamic_ssl_server_credentials``); the files are re-read when they
  change, so a renewed certificate is served without a restart. A half-written or mismatched pair
  is not used: the previous one stays until the files are consistent again.
* **API keys with roles** (``PORTRAIT_API_KEYS``): a file of ``ROLE:SHA256_HEX_OF_KEY`` lines.
  Clients send ``authorization: Bearer KEY``; :class:`AuthInterceptor` hashes the key and compares
  it with every digest in constant time. Missing or unknown key -> UNAUTHENTICATED, a key whose
  roles do not allow the method -> PERMISSION_DENIED, a method no policy names -> denied. Health
  checks stay open. The file is re-read when it changes (key rotation without a restart).
* **Secure by default** (:func:`access_policy`): a non-loopback bind needs TLS, and API keys or
  mutual TLS, unless ``PORTRAIT_ALLOW_INSECURE=true``; without keys on loopback, auth is off and
  the log says so.

Roles and methods:

>>> sorted(allowed_roles("/portrait.v1.ProfileService/Track"))
['admin', 'ingest']
>>> sorted(allowed_roles("/portrait.v1.ProfileService/GetProfile"))
['admin', 'read']
>>> sorted(allowed_roles("/portrait.v1.ProfileService/DeleteUser"))  # any method without a policy: admin only
['admin']
>>> allowed_roles("/grpc.health.v1.Health/Check") is None  # open
True
>>> allowed_roles("/some.Other/Method")  # unknown service: nobody
frozenset()

Key files:

>>> key = "correct horse battery staple"
>>> ring = ApiKeys.from_text(f"# comment\\nread:{key_digest(key)}\\n")
>>> sorted(ring.roles(key)), sorted(ring.roles("wrong"))
(['read'], [])
>>> ApiKeys.from_text("reader:" + "0" * 64)
Traceback (most recent call last):
...
server.api.security.SecurityConfigError: API key file, line 1: unknown role 'reader' (roles: admin, ingest, read)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.config import Settings
from server.metrics import Metrics

log = logging.getLogger(__name__)

ROLES = frozenset({"ingest", "read", "admin"})
PROFILE_SERVICE = "portrait.v1.ProfileService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset({"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"})
#: ProfileService methods open to a role other than admin. Every other ProfileService method
#: (e.g. DeleteUser) is admin-only until it is listed here.
METHOD_ROLES: dict[str, frozenset[str]] = {
    "Track": frozenset({"ingest"}),
    "TrackBatch": frozenset({"ingest"}),
    "TrackStream": frozenset({"ingest"}),
    "UpdateAttributes": frozenset({"ingest"}),
    "GetProfile": frozenset({"read"}),
    "Score": frozenset({"read"}),
    "Recommend": frozenset({"read"}),
}
KEYS_RELOAD_CHECK_S = 1.0  # how often the key file's metadata is looked at (on requests)


class SecurityConfigError(ValueError):
    """The security settings are unusable or unsafe: the server refuses to start."""


def allowed_roles(method: str) -> frozenset[str] | None:
    """Roles that may call ``/service/Method``; None means open to everyone (health checks)."""
    service, _, name = method.lstrip("/").partition("/")
    if service == HEALTH_SERVICE:
        return None
    if service == PROFILE_SERVICE:
        return METHOD_ROLES.get(name, frozenset()) | {"admin"}
    if service in REFLECTION_SERVICES:  # only served when enabled; then any valid key may use it
        return ROLES
    return frozenset()


def key_digest(key: str) -> str:
    """The hex SHA-256 of an API key: what the key file holds (``ROLE:<this>``).

    >>> key_digest("abc")
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only reaches this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("[::1]"), is_loopback("0.0.0.0")
    (True, True, True, False)
    >>> is_loopback(""), is_loopback("::")
    (False, False)
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


# ---------------------------------------------------------------------------------------- API keys


def _parse_keys(text: str) -> tuple[tuple[bytes, str], ...]:
    """``(digest, role)`` pairs from the key file's text; errors name the line, never its content."""
    entries: list[tuple[bytes, str]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, digest = line.partition(":")
        role, digest = role.strip().lower(), digest.strip().lower()
        if not sep:
            raise SecurityConfigError(f"API key file, line {n}: expected ROLE:SHA256_HEX")
        if role not in ROLES:
            raise SecurityConfigError(f"API key file, line {n}: unknown role {role!r} (roles: "
                                      f"{', '.join(sorted(ROLES))})")
        try:
            value = bytes.fromhex(digest)
        except ValueError:
            value = b""
        if len(value) != 32:
            raise SecurityConfigError(f"API key file, line {n}: the digest must be 64 hex digits "
                                      "(the SHA-256 of the key, not the key itself)")
        entries.append((value, role))
    return tuple(entries)


class ApiKeys:
    """The API keys (as SHA-256 digests) and their roles; re-read from ``path`` when it changes."""

    def __init__(self, entries: Sequence[tuple[bytes, str]], path: Path | None = None) -> None:
        self._entries = tuple(entries)
        self.path = path
        self._signature = self._stat() if path else None
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def from_text(cls, text: str) -> ApiKeys:
        """Keys from the text of a key file (for tests and tools)."""
        return cls(_parse_keys(text))

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """Keys from a key file; ``SecurityConfigError`` if it cannot be read or parsed."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SecurityConfigError(f"cannot read the API key file {path}: {exc.strerror}") from None
        return cls(_parse_keys(text), Path(path))

    def __len__(self) -> int:
        return len(self._entries)

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def maybe_reload(self) -> None:
        """Re-read the file if it changed (looked at most every ``KEYS_RELOAD_CHECK_S``). A file
        that cannot be read or parsed is logged and the current keys stay."""
        if self.path is None or time.monotonic() - self._checked < KEYS_RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = time.monotonic()
            sig = self._stat()
            if sig == self._signature or sig is None:
                return
            self._signature = sig
            try:
                self._entries = _parse_keys(self.path.read_text())
            except (OSError, SecurityConfigError) as exc:
                log.error("API key file %s changed but is unusable, keeping the previous keys: %s", self.path, exc)
                return
            log.info("reloaded %d API keys from %s", len(self._entries), self.path)

    def roles(self, key: str) -> frozenset[str]:
        """The roles of ``key`` (empty: not a valid key). Compares the key's digest with every
        stored digest in constant time, without stopping at a match."""
        digest = hashlib.sha256(key.encode()).digest()
        roles: set[str] = set()
        for stored, role in self._entries:
            if hmac.compare_digest(digest, stored):
                roles.add(role)
        return frozenset(roles)


def bearer_key(metadata: Sequence[Any] | None) -> str | None:
    """The key of an ``authorization: Bearer KEY`` metadatum, or None.

    >>> bearer_key([("user-agent", "x"), ("authorization", "Bearer abc ")]), bearer_key([("authorization", "abc")])
    ('abc', None)
    """
    for item in metadata or ():
        k, v = item[0], item[1]
        if k.lower() != "authorization":
            continue
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        scheme, _, key = v.strip().partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
        return None
    return None


def _deny_behavior(code: grpc.StatusCode, message: str) -> Callable[..., Awaitable[None]]:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return deny


def _deny_handler(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode,
                  message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call (the request is never
    deserialized); unknown methods get a streaming one, which fits any kind of call."""
    deny = _deny_behavior(code, message)
    if handler is not None and handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, response_serializer=handler.response_serializer)
    if handler is not None and handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny, response_serializer=handler.response_serializer)
    if handler is not None and handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, response_serializer=handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(deny)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """API-key authentication and role checks (see the module docstring). Refusals are counted in
    ``portrait_rejected_total{reason=no_credentials|bad_credentials|permission_denied}``; neither
    the key nor its digest ever appears in a status message or a log line."""

    def __init__(self, keys: ApiKeys, metrics: Metrics) -> None:
        self.keys = keys
        self._rejected = metrics.rejected

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        need = allowed_roles(details.method)
        if need is None:
            return await continuation(details)
        self.keys.maybe_reload()
        key = bearer_key(details.invocation_metadata)
        if key is None:
            self._rejected.labels(reason="no_credentials").inc()
            return _deny_handler(await continuation(details), grpc.StatusCode.UNAUTHENTICATED,
                                 "missing API key: send the metadata 'authorization: Bearer <key>'")
        roles = self.keys.roles(key)
        if not roles:
            self._rejected.labels(reason="bad_credentials").inc()
            return _deny_handler(await continuation(details), grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
        if not roles & need:
            self._rejected.labels(reason="permission_denied").inc()
            return _deny_handler(await continuation(details), grpc.StatusCode.PERMISSION_DENIED,
                                 f"an API key with role {', '.join(sorted(roles))} may not call {details.method}")
        return await continuation(details)


# --------------------------------------------------------------------------------------------- TLS


class CertificateFiles:
    """The server's TLS certificate chain + key (and the client CA for mutual TLS) as PEM files.

    ``credentials()`` gives gRPC server credentials that ask :meth:`fetch` at every new
    connection; ``fetch`` re-reads the files when their metadata changed and hands gRPC the new
    certificates once they form a valid pair (a pair caught mid-replacement is skipped until the
    files are consistent; existing connections keep theirs).
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), Path(client_ca) if client_ca else None
        self._lock = threading.Lock()
        self._loaded: tuple[Any, ...] | None = None  # signature of the files last handed to gRPC
        self._failed: tuple[Any, ...] | None = None  # signature last found unusable (logged once)
        self.reloads = 0

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate from ``client_ca``."""
        return self.client_ca is not None

    def _paths(self) -> list[Path]:
        return [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])

    def _signature(self) -> tuple[Any, ...]:
        out = []
        for p in self._paths():
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _read(self) -> tuple[tuple[Any, ...], grpc.ServerCertificateConfiguration]:
        """Validate and read the files; raises ``SecurityConfigError`` (or OSError) if unusable."""
        before = self._signature()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.cert, self.key, password=lambda: b"")  # never prompts
        except ssl.SSLError as exc:
            raise SecurityConfigError(f"TLS certificate {self.cert} and key {self.key} are not a usable pair "
                                      f"(PEM, unencrypted key, matching certificate): {exc.reason}") from None
        cert, key = self.cert.read_bytes(), self.key.read_bytes()
        ca = None
        if self.client_ca:
            ca = self.client_ca.read_bytes()
            try:
                ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise SecurityConfigError(f"TLS client CA {self.client_ca} holds no usable PEM certificate: "
                                          f"{getattr(exc, 'reason', None) or exc}") from None
        after = self._signature()
        if before != after:
            raise SecurityConfigError("the TLS files changed while being read")
        return after, grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The certificates at start-up; ``SecurityConfigError`` if they are unusable."""
        try:
            sig, config = self._read()
        except OSError as exc:
            raise SecurityConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        self._loaded = sig
        return config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC (on one of its threads) before each TLS handshake: new certificates if
        the files changed and are valid, else None (keep the current ones). Never raises."""
        try:
            with self._lock:
                sig = self._signature()
                if sig == self._loaded or sig == self._failed:
                    return None
                try:
                    sig, config = self._read()
                except (OSError, SecurityConfigError) as exc:
                    self._failed = sig
                    log.warning("TLS files changed but are not usable (yet); serving the previous certificate: %s",
                                exc)
                    return None
                self._loaded, self._failed = sig, None
                self.reloads += 1
            log.info("reloaded the TLS certificate from %s", self.cert)
            return config
        except Exception:  # a missing file mid-replacement, ...: keep serving the current certificate
            log.warning("could not check the TLS files for changes; serving the previous certificate")
            return None

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that reload the files (mutual TLS when a client CA is configured)."""
        return grpc.dynamic_ssl_server_credentials(self.initial(), self.fetch,
                                                   require_client_authentication=self.mutual)


# ----------------------------------------------------------------------------------------- policy


@dataclass
class AccessPolicy:
    """What :func:`access_policy` decided from the settings."""

    certificates: CertificateFiles | None
    keys: ApiKeys | None
    reflection: bool
    loopback: bool

    def credentials(self) -> grpc.ServerCredentials | None:
        """gRPC server credentials, or None for plaintext."""
        return self.certificates.credentials() if self.certificates else None

    def describe(self) -> list[str]:
        """Log lines stating the transport and access settings in effect."""
        c, lines = self.certificates, []
        if c is None:
            lines.append("TLS is off: plaintext gRPC" + (" (loopback only)" if self.loopback else ""))
        elif c.mutual:
            lines.append(f"TLS is on with client certificates required from {c.client_ca} (mutual TLS)")
        else:
            lines.append(f"TLS is on ({c.cert})")
        if self.keys is not None:
            lines.append(f"API keys required: {len(self.keys)} keys from {self.keys.path}; health checks are open")
        elif c is not None and c.mutual:
            lines.append("auth: client certificates only (no PORTRAIT_API_KEYS: every authenticated client may call "
                         "every method)")
        else:
            lines.append("auth is OFF: no PORTRAIT_API_KEYS" + (" and the bind address is loopback" if self.loopback
                                                               else " (PORTRAIT_ALLOW_INSECURE=true)"))
        lines.append(f"server reflection is {'on' if self.reflection else 'off'}")
        return lines


def access_policy(s: Settings) -> AccessPolicy:
    """Validate the security settings and load keys and certificates; ``SecurityConfigError``
    with a message naming the settings to change when they are missing, unusable or unsafe."""
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SecurityConfigError("PORTRAIT_TLS_CERT and PORTRAIT_TLS_KEY must be set together")
    if s.tls_client_ca is not None and s.tls_cert is None:
        raise SecurityConfigError("PORTRAIT_TLS_CLIENT_CA (mutual TLS) needs PORTRAIT_TLS_CERT and PORTRAIT_TLS_KEY")
    certs = None
    if s.tls_cert is not None and s.tls_key is not None:
        certs = CertificateFiles(s.tls_cert, s.tls_key, s.tls_client_ca)
        certs.initial()  # fail now, with the reason, rather than at the first handshake
    keys = ApiKeys.load(s.api_keys) if s.api_keys is not None else None
    loopback = is_loopback(s.bind)
    if not loopback and not s.allow_insecure:
        if certs is None:
            raise SecurityConfigError(
                f"refusing to serve plaintext gRPC on the non-loopback address {s.bind!r}: set PORTRAIT_TLS_CERT and "
                "PORTRAIT_TLS_KEY (see docs/security.md), bind to 127.0.0.1, or set PORTRAIT_ALLOW_INSECURE=true "
                "if something else (a service mesh, a TLS proxy) secures the connection")
        if keys is None and not certs.mutual:
            raise SecurityConfigError(
                f"refusing to serve on the non-loopback address {s.bind!r} without authentication: set "
                "PORTRAIT_API_KEYS and/or PORTRAIT_TLS_CLIENT_CA (see docs/security.md), or set "
                "PORTRAIT_ALLOW_INSECURE=true")
    reflection = s.reflection if s.reflection is not None else keys is None
    return AccessPolicy(certificates=certs, keys=keys, reflection=reflection, loopback=loopback)
