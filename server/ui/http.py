"""The explorer's web server: binding, TLS, sign-in and routes (docs/explorer.md).

A ``ThreadingHTTPServer`` on ``PORTRAIT_BIND:PORTRAIT_UI_PORT`` in threads of its own; each request
builds its data on the server's event loop (``asyncio.run_coroutine_threadsafe``: the worker's state
has one writer, the loop) and renders the HTML in its thread.

Who may look (``check_ui_policy``, after ``access_policy`` accepted the gRPC side):

* with API keys (``PORTRAIT_API_KEYS``) every page but the sign-in form and the stylesheet needs a key with
  the ``read`` or ``admin`` role, sent as ``Authorization: Bearer KEY`` or through the sign-in form, which
  keeps it in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` with TLS; never in a URL or a log);
* with TLS (``PORTRAIT_TLS_CERT``) pages are served over HTTPS with the same certificate (re-read for every
  new connection, so a renewed one is used at once); with ``PORTRAIT_TLS_CLIENT_CA`` browsers need a
  client certificate, as gRPC clients do;
* a non-loopback bind without keys or client certificates refuses to start, even with
  ``PORTRAIT_ALLOW_INSECURE`` (which speaks for gRPC behind a mesh, not for browsers): never an open page.

>>> from server.api.security import ApiKeys, key_digest
>>> keys = ApiKeys.from_text(f"read:{key_digest('r')}\\ningest:{key_digest('i')}")
>>> [decide(keys, h, c).status for h, c in [("Bearer r", ""), ("", "r"), ("Bearer i", ""), ("Bearer x", ""), ("", "")]]
[200, 200, 403, 401, 401]
>>> decide(None, "", "").status  # keys off (loopback, or client certificates)
200
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from server.api.security import AccessPolicy, ApiKeys, SecurityConfigError, bearer_key
from server.config import Settings
from server.domain.errors import InvalidArgument, NotFound, PortraitError, Unavailable
from server.ui import pages
from server.ui.data import Explorer

log = logging.getLogger("portrait.ui")

COOKIE = "portrait_key"
UI_ROLES = frozenset({"read", "admin"})
MAX_CONNECTIONS = 64
"""Connections served at once (a thread each); more are closed at once."""
IDLE_S = 30.0
"""A connection silent this long is closed (a request, or the next one on a kept-alive connection)."""
DATA_TIMEOUT_S = 30.0
"""Longest wait for a page's data from the event loop."""
MAX_FORM_BYTES = 4096
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),  # user ids are in the URLs
    ("Cache-Control", "no-store"),
)


def check_ui_policy(s: Settings, policy: AccessPolicy) -> None:
    """``SecurityConfigError`` when the explorer would be an open page on a non-loopback address."""
    if s.ui_port == 0 or policy.loopback:
        return
    mutual = policy.certificates is not None and policy.certificates.mutual
    if policy.keys is None and not mutual:
        raise SecurityConfigError(
            f"refusing to serve the explorer on the non-loopback address {s.bind!r} without authentication: set "
            "PORTRAIT_API_KEYS (sign in with a read key) and/or PORTRAIT_TLS_CLIENT_CA, or PORTRAIT_UI_PORT=0 to "
            "turn the explorer off (PORTRAIT_ALLOW_INSECURE does not open it)")


@dataclass(frozen=True)
class Decision:
    """What a request's credentials allow: ``status`` 200 (go on), 401 (no or unknown key), 403 (a key
    without the read role); ``via_cookie`` when the key came from the sign-in cookie."""

    status: int
    message: str = ""
    via_cookie: bool = False


def decide(keys: ApiKeys | None, authorization: str, cookie_key: str) -> Decision:
    """Check a request's key: the ``Authorization: Bearer`` header first, else the sign-in cookie."""
    if keys is None:
        return Decision(200)
    key = bearer_key([("authorization", authorization)]) if authorization else None
    via_cookie = key is None and bool(cookie_key)
    key = key or cookie_key or None
    if key is None:
        return Decision(401, "sign in with an API key that has the read role")
    roles = keys.roles(key)
    if not roles:
        return Decision(401, "invalid API key", via_cookie)
    if not roles & UI_ROLES:
        return Decision(403, f"an API key with role {', '.join(sorted(roles))} may not read profiles", via_cookie)
    return Decision(200, via_cookie=via_cookie)


def _cookie_key(header: str | None) -> str:
    if not header:
        return ""
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return unquote(morsel.value) if morsel is not None else ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2 * MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 tls: Callable[[], ssl.SSLContext] | None) -> None:
        self.tls = tls
        self.slots = threading.Semaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:  # the handshake happens in the connection's thread, at its first read
            try:
                sock = self.tls().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                sock.close()
                raise
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            request.settimeout(IDLE_S)
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("explorer connection from %s ended with an error", client_address[0], exc_info=True)


def _tls_context(policy: AccessPolicy) -> Callable[[], ssl.SSLContext] | None:
    certs = policy.certificates
    if certs is None:
        return None

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certs.cert, certs.key, password=lambda: b"")
        if certs.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(certs.client_ca))
        return ctx

    context()  # unusable files fail now (access_policy has checked them already)
    return context


class ExplorerServer:
    """The explorer's HTTP server; ``port`` once started, ``close()`` to stop."""

    def __init__(self, settings: Settings, policy: AccessPolicy, explorer: Explorer,
                 loop: asyncio.AbstractEventLoop) -> None:
        check_ui_policy(settings, policy)
        self.explorer = explorer
        self.loop = loop
        self.keys = policy.keys
        tls = _tls_context(policy)
        self.scheme = "https" if tls else "http"
        self.css = resources.files("server.ui").joinpath("static/style.css").read_bytes()
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = _Server((settings.bind, settings.ui_port), handler, tls)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="explorer", daemon=True)
        self._thread.start()

    def data(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the server's event loop and wait for its result (from an HTTP thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DATA_TIMEOUT_S)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    app: ExplorerServer
    protocol_version = "HTTP/1.1"
    server_version = "Portrait"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("explorer %s %s", self.address_string(), format % args)

    # -- responses ----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (*SECURITY_HEADERS, *headers):
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, html: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, html.encode(), headers=headers)

    def _redirect(self, location: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", (("Location", location), *headers))

    def _cookie(self, value: str, max_age: int | None = None) -> tuple[str, str]:
        secure = "; Secure" if self.app.scheme == "https" else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return ("Set-Cookie", f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}")

    # -- auth ---------------------------------------------------------------------------------------
    def _authorized(self) -> bool:
        keys = self.app.keys
        if keys is None:
            return True
        keys.maybe_reload()
        d = decide(keys, self.headers.get("Authorization", ""), _cookie_key(self.headers.get("Cookie")))
        if d.status == 200:
            return True
        headers: tuple[tuple[str, str], ...] = (("WWW-Authenticate", 'Bearer realm="portrait"'),)
        if d.via_cookie:  # a key that no longer works: forget it
            headers += (self._cookie("", 0),)
        if d.status == 401:
            self._html(401, pages.login_page("" if d.message.startswith("sign in") else d.message), headers)
        else:
            self._html(403, pages.error_page(403, "Not allowed", d.message), headers)
        return False

    # -- routes -------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/static/style.css":
            self._send(200, self.app.css, "text/css; charset=utf-8")
            return
        if path == "/login":
            if self.app.keys is None:
                self._redirect("/")
            else:
                self._html(200, pages.login_page())
            return
        if not self._authorized():
            return
        signed = self.app.keys is not None
        try:
            if path == "/":
                self._html(200, pages.home_page(self.app.data(self.app.explorer.population()), signed_in=signed))
            elif path == "/users":
                user = (parse_qs(url.query).get("user_id") or [""])[0].strip()
                self._redirect(pages.user_href(user) if user else "/")
            elif path.startswith("/users/"):
                self._user(unquote(path[len("/users/"):]), signed)
            elif path == "/models":
                self._html(200, pages.models_page(self.app.data(self.app.explorer.models()), signed_in=signed))
            elif path == "/system":
                self._html(200, pages.system_page(self.app.data(self.app.explorer.system()), signed_in=signed))
            else:
                self._html(404, pages.error_page(404, "Not found", "There is no such page.", signed_in=signed))
        except Unavailable as exc:
            self._html(503, pages.error_page(503, "Unavailable", str(exc), signed_in=signed))
        except PortraitError as exc:
            self._html(400, pages.error_page(400, "Bad request", str(exc), signed_in=signed))
        except TimeoutError:
            self._html(503, pages.error_page(503, "Busy", "The server did not answer in time; try again.",
                                             signed_in=signed))
        except Exception:
            log.exception("explorer page %s failed", path.split("/")[1] if "/" in path else path)
            self._html(500, pages.error_page(500, "Error", "The page could not be built (see the server log).",
                                             signed_in=signed))

    def _user(self, user_id: str, signed: bool) -> None:
        if not user_id:
            self._redirect("/")
            return
        try:
            view = self.app.data(self.app.explorer.user(user_id))
        except NotFound:
            self._html(404, pages.error_page(404, "Unknown user", f"No profile for the user id {user_id!r}: it never "
                                             "sent an event, or it was erased.", search=user_id, signed_in=signed))
            return
        except InvalidArgument as exc:
            self._html(400, pages.error_page(400, "Bad user id", str(exc), signed_in=signed))
            return
        self._html(200, pages.user_page(user_id, view, signed_in=signed))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/logout":
            self._redirect("/login" if self.app.keys is not None else "/", (self._cookie("", 0),))
            return
        if path != "/login" or self.app.keys is None:
            self._html(404, pages.error_page(404, "Not found", "There is no such page."))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self._html(413, pages.login_page("the form is too large"))
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        self.app.keys.maybe_reload()
        d = decide(self.app.keys, "", key)
        if d.status != 200:
            self._html(d.status, pages.login_page(d.message or "invalid API key"))
            return
        # the cookie value is the key itself, percent-encoded (keys are free text)
        self._redirect("/", (self._cookie(quote(key, safe="")),))
