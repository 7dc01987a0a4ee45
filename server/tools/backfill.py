"""``portrait replay``: stream an event file into a running server with TrackBatch, resumably.

    portrait replay EVENTS_FILE [--target HOST:PORT] [--rate N] [--batch 500]
                    [--rejected-out FILE] [--state FILE] [--restart] [--wait-visible]

* **File**: CSV (``.csv``, ``.csv.gz``) or Parquet, read with :mod:`server.tools.eventfile`
  (streamed; columns ``event_id,user_id,event_type,event_time,...``).
* **Rows** are the file's 1-based data rows as :mod:`server.tools.eventfile` counts them (the
  header and blank CSV lines are not counted). Every row ends up *accepted*,
  *duplicate* or *rejected*.
* **Rejected rows** go to a CSV (``--rejected-out``, default ``EVENTS_FILE.rejected.csv``,
  created at the first rejection) with the columns ``row,event_id,field,message``:

  - rows the server refuses (validation): ``field`` is the server's field name
    (``price``, ``event_time``, ``type``, ...), as in ``TrackBatchResponse.rejected``;
  - rows the file reader cannot parse (an unknown ``event_type``, a time that is not a
    time, a non-numeric price, ...): they are **not sent**, and ``field`` is the file's
    *column* (``event_type``, ``event_time``, ``price``, ...); ``event_id`` is the raw cell.
    A parse error therefore never stops a replay. Problems of the whole file (unknown
    suffix, missing required column, unreadable file) do: exit code 2.
* **Resume**: after each acknowledged batch the number of rows done (every row up to the
  batch's last one, rejected rows included) is written atomically to the state file
  (``--state``, default ``EVENTS_FILE.replay-state``, JSON). A new run skips those rows,
  so an interrupted replay continues where it stopped (re-sent rows would be harmless
  anyway: the server drops duplicate event_ids). The state records the file's size; a
  different size means a different file, and replay refuses (exit 2) unless ``--restart``.
  The state file is kept after a complete run: running again sends nothing (``--restart``
  replays from row 1).
* **Visibility**: the last batch is sent with ``wait_visible``, so when replay exits 0
  every accepted event is readable from the online store (``--wait-visible`` waits for
  every batch, for read-your-writes per batch at some throughput cost).
* **Rate**: ``--rate N`` caps events/s with a token bucket (burst: one batch);
  batches then hold at most N events, so sending stays smooth.
* **Output**: on a terminal a tqdm progress bar (rows/s, ETA, accepted / duplicates /
  rejected); always one summary line at the end on stdout.
* **Exit codes**: 0 done (also with rejected rows), 1 the server could not be reached or
  failed after the client's retries (the state keeps what was acknowledged: rerun to
  resume), 2 file or state problem, 130 interrupted.

>>> bucket = TokenBucket(rate=100, clock=lambda: 0.0, sleep=lambda s: None)
>>> bucket.acquire(100), bucket.acquire(50)  # the first second's worth is free, then 50 events wait 0.5 s
(0.0, 0.5)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from server.domain.events import MAX_REJECTED_LISTED
from server.log.atomic import write_atomic

#: Largest --batch: the server lists at most this many rejected events per answer, so every rejected row
#: of a batch this size is named in the rejected-rows file.
MAX_REPLAY_BATCH = MAX_REJECTED_LISTED

HELP = "stream an event file (CSV/Parquet) into a running server, resumably"
REJECTED_COLUMNS = ("row", "event_id", "field", "message")
_INT32 = 2**31
_MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z, protobuf Timestamp's upper bound


class ReplayError(Exception):
    """A problem with the file or the state file (exit code 2)."""


# ------------------------------------------------------------------------------------ rate limit


class TokenBucket:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` saved up (default: one second's worth).

    ``acquire(n)`` takes ``n`` tokens, sleeping first if there are not enough; ``n`` may exceed
    the burst (the bucket goes into debt and the wait covers it), so the long-run rate is exact.
    Returns the time slept. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.capacity = float(burst) if burst is not None else max(1.0, self.rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock()

    def acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens; sleep as long as needed first. Returns the seconds slept."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        self._sleep(wait)  # the debt is repaid by the refill at the next call (measured from _last)
        return wait


# ------------------------------------------------------------------------------------ state


@dataclass
class ReplayState:
    """What the state file records (cumulative over runs)."""

    rows_done: int = 0
    """Data rows fully acknowledged: every row up to and including the last row of the last acked batch."""
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    file_size: int | None = None
    """Size of the events file when the replay started (None: not checked)."""

    @classmethod
    def load(cls, path: Path) -> ReplayState | None:
        """The state in ``path``, or None if there is no such file."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ReplayError(f"cannot read the state file {path}: {exc} (delete it or use --restart)") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or not isinstance(raw.get("rows_done"), int) or raw["rows_done"] < 0:
            raise ReplayError(f"state file {path} has no valid rows_done (delete it or use --restart)")
        return cls(**{k: v for k, v in raw.items() if k in names})

    def save(self, path: Path) -> None:
        """Write atomically (``server.log.atomic``)."""
        write_atomic(path, json.dumps(asdict(self)).encode())


def default_state_path(events_file: str | os.PathLike[str]) -> Path:
    """``EVENTS_FILE.replay-state``."""
    return Path(f"{os.fspath(events_file)}.replay-state")


def default_rejected_path(events_file: str | os.PathLike[str]) -> Path:
    """``EVENTS_FILE.rejected.csv``."""
    return Path(f"{os.fspath(events_file)}.rejected.csv")


# ------------------------------------------------------------------------------------ replay


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejected row."""

    row: int
    event_id: str
    field: str
    message: str


@dataclass
class ReplayResult:
    """What one run did (``state`` is cumulative over runs)."""

    skipped: int = 0
    """Rows skipped because the state file recorded them as done."""
    rows: int = 0
    """Rows processed by this run (accepted + duplicates + rejected)."""
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    rejected_file: Path | None = None
    """Where rejected rows were written (None if this run rejected none)."""
    state: ReplayState = field(default_factory=ReplayState)

    def summary(self, path: str | os.PathLike[str]) -> str:
        """The one-line summary printed at the end."""
        rate = self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0
        where = f" (-> {self.rejected_file})" if self.rejected_file else ""
        skipped = f" after skipping {self.skipped} already done" if self.skipped else ""
        return (f"replayed {self.rows} rows of {os.fspath(path)}{skipped}: {self.accepted} accepted, "
                f"{self.duplicates} duplicates, {self.rejected} rejected{where}; "
                f"{rate:.0f} events/s in {self.elapsed_s:.1f} s")


@dataclass
class _Window:
    """Consecutive rows sent as one batch: their events (with row numbers) and the rows rejected locally."""

    events: list[tuple[int, Any]] = field(default_factory=list)
    local_rejects: list[Rejected] = field(default_factory=list)
    last_row: int = 0


def _to_proto(e: Any) -> Any:
    """The proto of an Event, or a Rejected-style (field, message) pair if it cannot be encoded."""
    from server.api import convert

    if not -_INT32 <= e.quantity < _INT32:
        return ("quantity", f"quantity {e.quantity} does not fit the wire format (int32)")
    if e.event_time is not None and (not math.isfinite(e.event_time) or abs(e.event_time) > _MAX_TIMESTAMP_S):
        return ("event_time", f"event_time {e.event_time!r} is out of range")
    try:
        return convert.event_to_proto(e)
    except (ValueError, TypeError, OverflowError) as exc:
        return ("", f"cannot encode the event: {exc}")


def _windows(path: Path, skip: int, batch_size: int) -> Iterator[_Window]:
    """Rows after ``skip``, grouped into windows of ``batch_size`` events; a window is closed when the
    next parseable event arrives, so rejected rows trailing a window belong to it and the last window
    has an event unless no row after ``skip`` has one."""
    from server.tools.eventfile import EventFileError, read_rows, row_to_event

    win = _Window(last_row=skip)
    for n, row in enumerate(read_rows(path), start=1):
        if n <= skip:
            continue
        try:
            event = row_to_event(row, n)
        except EventFileError as err:
            raw_id = row.get("event_id")
            win.local_rejects.append(Rejected(n, "" if raw_id is None else str(raw_id), err.column or "",
                                              err.reason))
            win.last_row = n
            continue
        proto = _to_proto(event)
        if isinstance(proto, tuple):
            win.local_rejects.append(Rejected(n, event.event_id, proto[0], proto[1]))
            win.last_row = n
            continue
        if len(win.events) >= batch_size:
            yield win
            win = _Window(last_row=win.last_row)
        win.events.append((n, proto))
        win.last_row = n
    if win.events or win.local_rejects:
        yield win


def _count_rows(path: Path) -> int | None:
    """Data rows in the file, for the progress bar's ETA (CSV: lines - 1, an estimate; gzip: unknown)."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if name.endswith(".csv"):
            lines = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    lines += chunk.count(b"\n")
            return max(0, lines - 1)
    except OSError:
        return None
    return None


class _RejectedWriter:
    """Appends rejected rows to a CSV, creating it (with a header) at the first one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._writer: Any = None
        self.used = False

    def write(self, rows: list[Rejected]) -> None:
        if not rows:
            return
        if self._file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
            self._writer = csv.writer(self._file, lineterminator="\n")
            if new:
                self._writer.writerow(REJECTED_COLUMNS)
        self.used = True
        for r in sorted(rows, key=lambda r: r.row):
            self._writer.writerow((r.row, r.event_id, r.field, r.message))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def replay(
    path: str | os.PathLike[str],
    target: str,
    *,
    batch_size: int = 500,
    rate: float | None = None,
    state_path: str | os.PathLike[str] | None = None,
    rejected_path: str | os.PathLike[str] | None = None,
    restart: bool = False,
    wait_visible: bool = False,
    timeout_s: float = 60.0,
    progress: bool = False,
    out: IO[str] | None = None,
    on_batch: Callable[[ReplayResult], None] | None = None,
) -> ReplayResult:
    """Replay ``path`` into the server at ``target``; see the module docstring.

    Raises :class:`ReplayError` for file/state problems and ``grpc.RpcError`` when a batch fails
    after the client's retries (the state file then holds everything acknowledged before).
    ``on_batch`` is called after each acknowledged batch (and its state save) with the running result.
    """
    from server.api.client import PortraitClient
    from server.tools.eventfile import EventFileError

    events_path = Path(path)
    state_file = Path(state_path) if state_path else default_state_path(events_path)
    rejected_file = Path(rejected_path) if rejected_path else default_rejected_path(events_path)
    if not 1 <= batch_size <= MAX_REPLAY_BATCH:
        raise ReplayError(f"--batch must be 1..{MAX_REPLAY_BATCH}, got {batch_size}")
    try:
        size = events_path.stat().st_size
    except OSError as exc:
        raise ReplayError(f"cannot read {events_path}: {exc.strerror or exc}") from None
    state = None if restart else ReplayState.load(state_file)
    if state is not None and state.file_size is not None and state.file_size != size:
        raise ReplayError(f"{state_file} was written for a {state.file_size}-byte {events_path.name}, which is "
                          f"{size} bytes now: use --restart to replay it from row 1 (or delete the state file)")
    if state is None:  # a fresh replay: earlier rejected rows belong to an earlier run
        state = ReplayState(file_size=size)
        rejected_file.unlink(missing_ok=True)
    result = ReplayResult(skipped=state.rows_done, state=state)
    effective_batch = min(batch_size, max(1, int(rate))) if rate else batch_size
    bucket = TokenBucket(rate, burst=effective_batch) if rate else None
    rejects = _RejectedWriter(rejected_file)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=_count_rows(events_path), initial=state.rows_done, unit="ev", unit_scale=True,
                   dynamic_ncols=True, file=out if out is not None else sys.stdout, smoothing=0.1, leave=True)
    started = time.monotonic()
    # a batch refused with UNAVAILABLE (a partition worker restarting) is tried again for up to --timeout
    client = PortraitClient(target, timeout_s=timeout_s, retry_unavailable_s=timeout_s)
    try:
        windows = _windows(events_path, state.rows_done, effective_batch)
        try:
            current = next(windows, None)
            while current is not None:
                following = next(windows, None)
                batch_rejects = list(current.local_rejects)
                accepted = duplicates = 0
                if current.events:
                    if bucket is not None:
                        bucket.acquire(len(current.events))
                    resp = client.track_encoded([p for _, p in current.events],
                                                wait_visible=wait_visible or following is None, timeout_s=timeout_s)
                    accepted, duplicates = resp.accepted, resp.duplicates
                    batch_rejects += [Rejected(current.events[r.index][0], r.event_id, r.field, r.message)
                                      for r in resp.rejected]
                    result.sent += len(current.events)
                    result.batches += 1
                rejects.write(batch_rejects)  # before the state: a crash in between repeats, never loses, a line
                rows = current.last_row - state.rows_done
                state.rows_done = current.last_row
                state.accepted += accepted
                state.duplicates += duplicates
                state.rejected += len(batch_rejects)
                state.save(state_file)
                result.rows += rows
                result.accepted += accepted
                result.duplicates += duplicates
                result.rejected += len(batch_rejects)
                result.elapsed_s = time.monotonic() - started
                if bar is not None:
                    bar.set_postfix(accepted=result.accepted, dup=result.duplicates, rejected=result.rejected,
                                    refresh=False)
                    bar.update(rows)
                if on_batch is not None:
                    on_batch(result)
                current = following
        except EventFileError as exc:
            raise ReplayError(str(exc)) from None
    finally:
        client.close()
        rejects.close()
        if bar is not None:
            bar.close()
    result.elapsed_s = time.monotonic() - started
    result.rejected_file = rejected_file if rejects.used else None
    return result


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``portrait replay`` arguments."""
    parser.description = (__doc__ or "").split("\n\n", 1)[0].replace("``", "")
    parser.add_argument("events_file", metavar="EVENTS_FILE", help="event file: .csv, .csv.gz or .parquet")
    parser.add_argument("--target", default=None,
                        help="HOST:PORT of the server (default 127.0.0.1:$PORTRAIT_GRPC_PORT)")
    parser.add_argument("--rate", type=float, default=None, help="at most N events per second (default: unlimited)")
    parser.add_argument("--batch", type=int, default=500,
                        help=f"events per TrackBatch call, 1..{MAX_REPLAY_BATCH} (default 500)")
    parser.add_argument("--rejected-out", default=None, metavar="FILE",
                        help="CSV of rejected rows: row,event_id,field,message (default EVENTS_FILE.rejected.csv)")
    parser.add_argument("--state", default=None, metavar="FILE",
                        help="resume state: rows acknowledged so far (default EVENTS_FILE.replay-state)")
    parser.add_argument("--restart", action="store_true", help="ignore the state file and replay from row 1")
    parser.add_argument("--wait-visible", action="store_true",
                        help="acknowledge each batch only once it is readable online (the last one always is)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each TrackBatch call, seconds; a "
                        "batch refused with UNAVAILABLE (a worker restarting) is tried again for as long")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def _rows_recorded(state_file: Path) -> int:
    try:
        state = ReplayState.load(state_file)
    except ReplayError:
        return 0
    return state.rows_done if state else 0


def run(args: argparse.Namespace) -> int:
    """``portrait replay``: exit 0 done, 1 server unreachable / failed, 2 file or state problem, 130 interrupted."""
    import grpc

    target = args.target
    if not target:
        from server.config import Settings

        target = f"127.0.0.1:{Settings().grpc_port}"
    if args.rate is not None and not args.rate > 0:
        print("portrait replay: --rate must be > 0", file=sys.stderr)
        return 2
    state_file = Path(args.state) if args.state else default_state_path(args.events_file)
    try:
        result = replay(args.events_file, target, batch_size=args.batch, rate=args.rate, state_path=state_file,
                        rejected_path=args.rejected_out, restart=args.restart, wait_visible=args.wait_visible,
                        timeout_s=args.timeout, progress=sys.stdout.isatty() and not args.no_progress)
    except ReplayError as exc:
        print(f"portrait replay: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # unreadable or corrupt file (pyarrow errors are ValueError/OSError)
        print(f"portrait replay: cannot read {args.events_file}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "ERROR"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"portrait replay: {code}: {details} (target {target}); {_rows_recorded(state_file)} rows "
              f"acknowledged are recorded in {state_file}: run the same command again to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"portrait replay: interrupted; {_rows_recorded(state_file)} rows acknowledged are recorded in "
              f"{state_file}: run the same command again to resume", file=sys.stderr)
        return 130
    print(result.summary(args.events_file))
    return 0
