"""Child processes of the benchmark: started in their own session, always stopped.

Every child is registered in ``CHILDREN`` and dies with the benchmark: ``stop_all`` runs
from a ``finally`` (also on Ctrl-C; SIGTERM is turned into KeyboardInterrupt by
``install_signal_handlers``), and each child gets ``PR_SET_PDEATHSIG`` so it is ended
by the kernel even if the benchmark itself is SIGKILLed. Children are stopped by their
own pid: SIGTERM (the Portrait server drains and stops its embedded Redis), then,
after a grace period, SIGKILL to the child's process group (its own session).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from server.store.embedded_redis import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

CHILDREN: list[subprocess.Popen[bytes]] = []


def install_signal_handlers() -> None:
    """SIGINT/SIGTERM/SIGHUP -> KeyboardInterrupt, so the ``finally`` that stops the children runs
    (SIGINT explicitly too: a shell starts background jobs with SIGINT ignored)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = ROOT,
          stdout_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a registered child (own session, dies with us); stderr (and stdout unless
    ``stdout_path``) go to ``log_path``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log = open(log_path, "ab")  # noqa: SIM115 (owned by the child's lifetime)
    out = open(stdout_path, "wb") if stdout_path else log  # noqa: SIM115
    try:
        p = subprocess.Popen(args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                             start_new_session=True, preexec_fn=die_with_parent)
    finally:
        log.close()
        if stdout_path:
            out.close()
    CHILDREN.append(p)
    return p


def stop(p: subprocess.Popen[bytes], grace_s: float = 15.0) -> int | None:
    """SIGTERM the child, wait ``grace_s``, then SIGKILL its process group; return its exit code."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    # anything the child left in its own session (e.g. an embedded redis-server whose owner was killed)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    if p in CHILDREN:
        CHILDREN.remove(p)
    return p.returncode


def stop_all() -> None:
    """Stop every child still registered (newest first)."""
    for p in list(reversed(CHILDREN)):
        stop(p, grace_s=10.0)


def run_json(args: list[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None,
             cwd: Path = ROOT) -> dict[str, Any]:
    """Run a child to completion and return the JSON object on the last line of its stdout."""
    out_path = log_path.with_suffix(".out")
    p = spawn(args, log_path, env=env, cwd=cwd, stdout_path=out_path)
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(p, grace_s=2.0)
        raise RuntimeError(f"{args[2:4]} did not finish within {timeout_s:.0f} s; see {log_path}") from None
    finally:
        if p in CHILDREN:
            CHILDREN.remove(p)
    lines = [ln for ln in out_path.read_text().splitlines() if ln.strip()]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {p.returncode}; see {log_path}:\n"
                           + tail(log_path))
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def tail(path: Path, n: int = 15) -> str:
    """The last ``n`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process and its waited-for children (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks


def fetch(url: str, timeout_s: float = 5.0) -> str:
    """GET ``url`` (the server's /metrics)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return str(r.read().decode())


def wait_serving(target: str, p: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 120.0) -> None:
    """Wait until gRPC health reports SERVING on ``target`` (or the child dies)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"server exited with {p.returncode} before serving; see {log_path}:\n"
                                   + tail(log_path))
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not SERVING within {timeout_s:.0f} s; see {log_path}")
            time.sleep(0.2)
