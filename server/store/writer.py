"""The online writer: profile rows -> Feast's provider-level batch write, in a child process by default.

``FeastRowWriter`` turns rows into Feast's own protos (an ``EntityKey`` and one ``Value`` per
feature) and calls the provider's ``online_write_batch`` — the call Feast's
``write_to_online_store`` ends in, without the pandas and Arrow conversions before it (the same
bytes land in Redis; tests/integration/test_writer.py compares them).

``WriterProcess`` runs one in a child process (``python -m server.store.writer``), so the server's
event loop and GIL are left to ingest while the child uses another core. ``await write(rows)``
returns once the child has written every row, so a return means the rows are in Redis; a
failure comes back as ``WriteError``. A child that dies or hangs
past ``timeout_s`` is killed and started again on the next write; the materializer retries the
rows of the failed write, so nothing is lost.

Frames on the child's stdin/stdout: 4-byte big-endian length + pickle. Requests are lists of
row dicts (pickling dicts measured faster than first converting them to tuples); replies are
``None`` (written) or the error's type name (never its message: redis-py writes the keys, which
hold user ids, into its error strings).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from server.childproc import HEADER, close_child, frame, read_frame
from server.logs import exit_quietly
from server.store.feast import FEATURE_VIEW, open_store
from server.store.schema import FEATURES

log = logging.getLogger(__name__)

Row = dict[str, Any]
MEMO_SIZE = 8192  # distinct scalar values kept per kind


class WriteError(RuntimeError):
    """The online write failed (Redis error, or the writer process died or hung); retry the rows."""


class FeastRowWriter:
    """Writes rows through the Feast provider's ``online_write_batch`` (blocking)."""

    def __init__(self, store: Any) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import StringList, Value

        self._store = store
        self._provider = store._get_provider()
        self._view = store.get_feature_view(FEATURE_VIEW)
        self._entity_key, self._value, self._string_list = EntityKey, Value, StringList
        wanted = [f.name for f in self._view.features]
        kinds = {c.name: c.kind.value_field for c in FEATURES if c.kind.value_field}  # each feature's Value field
        missing = set(wanted) - set(kinds)
        if missing:
            raise ValueError(f"feature view {FEATURE_VIEW} has features rows do not carry: {sorted(missing)}")
        value, string_list = self._value, self._string_list
        make = {"double_val": lambda v: value(double_val=v), "int64_val": lambda v: value(int64_val=v),
                "string_val": lambda v: value(string_val=v),
                "string_list_val": lambda v: value() if v is None else value(string_list_val=string_list(val=v))}
        # Most values repeat (counts, zeros, flags): one Value per distinct scalar, shared by the rows
        # (Feast only serializes them). Halves the conversion time; -0.0 is stored as 0.0.
        memos: dict[str, dict[Any, Any]] = {"double_val": {}, "int64_val": {}, "string_val": {}}
        self._fields = [(name, memos.get(kinds[name]), make[kinds[name]]) for name in wanted]  # the view's order

    def _values(self, row: Row) -> dict[str, Any]:
        out = {}
        for name, memo, mk in self._fields:
            v = row[name]
            if memo is None:
                out[name] = mk(v)
                continue
            m = memo.get(v)
            if m is None:
                if len(memo) >= MEMO_SIZE:  # one-off values (timestamps) fill it: start over
                    memo.clear()
                m = memo[v] = mk(v)
            out[name] = m
        return out

    def write(self, rows: Sequence[Row]) -> None:
        """Write rows in one provider batch call; raises on Redis errors."""
        created = datetime.now(UTC)
        ek, value = self._entity_key, self._value
        data = [(ek(join_keys=["user_id"], entity_values=[value(string_val=r["user_id"])]), self._values(r),
                 datetime.fromtimestamp(r["event_timestamp_us"] / 1e6, tz=UTC), created) for r in rows]
        self._provider.online_write_batch(self._store.config, self._view, data, progress=None)


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (n,) = HEADER.unpack(head)
    body = stream.read(n)
    return body if len(body) == n else None


def _write_frame(stream: IO[bytes], obj: Any) -> None:
    stream.write(frame(obj))
    stream.flush()


class WriterProcess:
    """A ``FeastRowWriter`` in a child process, driven from the event loop (no thread, no GIL
    handoff): ``await write(rows)`` returns once the rows are in Redis."""

    def __init__(self, repo: Path, env: dict[str, str] | None = None, timeout_s: float = 60.0,
                 start_timeout_s: float = 120.0) -> None:
        self.repo = Path(repo).resolve()
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._env = {**os.environ, **(env or {})}
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self._lock = asyncio.Lock()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The child's pid (None before the first start)."""
        return self._proc.pid if self._proc else None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def spawn(self) -> None:
        """Start the child: it imports Feast (seconds) meanwhile, and opens the store on ``open``."""
        async with self._lock:
            await self._spawn(open_now=False)

    async def open(self) -> None:
        """Let the child open the store (the registry must exist by now); ``write`` waits for it."""
        async with self._lock:
            if self._alive():
                await self._send(str(self.repo))
            else:
                await self._spawn(open_now=True)

    async def _spawn(self, open_now: bool) -> None:
        if self._alive():
            return
        if self._proc is not None:
            self.restarts += 1
        self._ready = False
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.store.writer", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=self._env, cwd=os.getcwd())
        if open_now:
            await self._send(str(self.repo))

    async def _send(self, obj: Any) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(frame(obj))
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await self._kill()
            raise WriteError(f"the online writer process is gone: {type(exc).__name__}") from None

    async def _reply(self, timeout_s: float) -> Any:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await read_frame(proc.stdout)
        except TimeoutError:
            await self._kill()
            raise WriteError(f"the online writer process did not answer within {timeout_s:.0f} s "
                             "(killed; restarted on the next write)") from None
        except asyncio.IncompleteReadError:
            code = await proc.wait()
            raise WriteError(f"the online writer process exited (code {code}); "
                             "it is restarted on the next write") from None

    async def write(self, rows: Sequence[Row]) -> None:
        """Write rows (dicts) online; returns once they are in Redis, raises ``WriteError`` otherwise."""
        async with self._lock:
            await self._spawn(open_now=True)
            if not self._ready:
                err = await self._reply(self.start_timeout_s)
                if err is not None:
                    await self._kill()
                    raise WriteError(f"the online writer process could not start: {err}")
                self._ready = True
            await self._send(list(rows))
            err = await self._reply(self.timeout_s)
        if err is not None:
            raise WriteError(err)

    async def _kill(self) -> None:
        if self._alive():
            assert self._proc is not None
            self._proc.kill()
            await self._proc.wait()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child: close its input (it exits at end of input); kill it if it lingers."""
        async with self._lock:
            if self._proc is not None:
                await close_child(self._proc, timeout_s)


def main() -> int:
    """The child: import Feast, open the repo named by the first frame, then write what arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent shuts us down
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of libraries must not corrupt the frames
    inp = os.fdopen(0, "rb")
    logging.basicConfig(level=os.environ.get("PORTRAIT_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s portrait.writer %(message)s")
    logging.getLogger("feast.infra.registry").setLevel(logging.WARNING)  # see server.logs.configure_logging
    import feast  # noqa: F401  (the slow import, done while the parent applies the definitions)

    body = _read_frame(inp)
    if body is None:
        return 0
    try:
        writer = FeastRowWriter(open_store(Path(pickle.loads(body))))
    except Exception as exc:  # the parent raises this at its first write
        _write_frame(out, f"{type(exc).__name__}: {exc}")
        return 1
    gc.freeze()  # Feast's import leaves ~1M objects: keep the collector from walking them (2/3 of a write)
    _write_frame(out, None)
    while (body := _read_frame(inp)) is not None:
        rows = pickle.loads(body)
        t0 = time.perf_counter()
        try:
            writer.write(rows)
        except Exception as exc:  # the type only: redis-py puts the keys (user ids) into its messages
            _write_frame(out, type(exc).__name__)
            continue
        _write_frame(out, None)
        log.debug("wrote %d rows in %.1f ms", len(rows), 1000 * (time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    exit_quietly(main())
