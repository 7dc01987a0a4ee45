"""Event files in and out: CSV (optionally gzipped) or Parquet, chosen by suffix.

Columns (header names are matched case-insensitively; extra columns are ignored)::

    event_id,user_id,event_type,event_time,item_id,category,price,quantity,session_id[,query,context]

* ``user_id``, ``event_type`` and ``event_time`` must be present as columns; the
  others are optional and default to the :class:`~server.domain.events.Event` defaults.
* ``event_type`` is one of ``view, click, add_to_cart, remove_from_cart, favorite,
  purchase, search`` (case-insensitive; ``-`` works for ``_``, the proto spelling
  ``EVENT_TYPE_VIEW`` and the enum number ``1`` are accepted too).
* ``event_time`` is ISO-8601 (a naive time is UTC) or unix seconds (int or float);
  it becomes float unix seconds. An empty value becomes ``None`` (which
  ``validate`` then rejects - that is the server's business, not this module's).
* A missing ``event_id`` column or an empty value gets a deterministic id,
  ``"h-"`` + the 16-byte blake2b hex of the row's parsed fields, so reading the
  same file twice (or the same rows in CSV and Parquet) gives the same ids.
  Identical rows get identical ids, i.e. the server will treat them as duplicates.
* ``query`` (needed by SEARCH events) and ``context`` (a JSON object of strings)
  are optional extras; :func:`write_events` writes them so that a roundtrip keeps
  every :class:`~server.domain.events.Event` field.

Unparseable values raise :class:`EventFileError`, naming the 1-based data row
(the header is not counted) and the column. Files are streamed: CSV row by row,
Parquet by record batches, and :func:`write_events` writes Parquet in row groups.

>>> import os, tempfile
>>> from server.domain.events import Event, EventType
>>> tmp = tempfile.TemporaryDirectory()
>>> d = tmp.name
>>> events = [Event("e1", "u1", EventType.VIEW, 1767225600.0, item_id="i-c01-001", price=9.5),
...           Event("e2", "u1", EventType.PURCHASE, 1767225660.5, item_id="i-c01-001", price=9.5, quantity=2)]
>>> for name in ("a.csv", "a.parquet"):
...     path = os.path.join(d, name)
...     write_events(path, events)
...     list(read_events(path)) == events
2
True
2
True
>>> with open(os.path.join(d, "b.csv"), "w") as f:
...     _ = f.write("user_id,event_type,event_time,item_id\\nu1,VIEW,2026-01-01T00:00:00Z,i-1\\n")
>>> [(e.event_id, e.type.name, e.event_time) for e in read_events(os.path.join(d, "b.csv"))]
[('h-b2cc94127fe636363cb386f7de6d946f', 'VIEW', 1767225600.0)]
>>> tmp.cleanup()
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from server.domain.events import Event, EventType

COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "event_type",
    "event_time",
    "item_id",
    "category",
    "price",
    "quantity",
    "session_id",
)
"""The documented columns, in file order."""

EXTRA_COLUMNS: tuple[str, ...] = ("query", "context")
"""Optional columns carrying the remaining Event fields (written after COLUMNS)."""

REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "event_type", "event_time")

BATCH_ROWS = 65_536
"""Rows per Parquet read batch and per written row group."""

_ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS

_TYPE_NAMES: dict[str, EventType] = {t.name.lower(): t for t in EventType}
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

_PARQUET_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", pa.float64()),
        ("item_id", pa.string()),
        ("category", pa.string()),
        ("price", pa.float64()),
        ("quantity", pa.int64()),
        ("session_id", pa.string()),
        ("query", pa.string()),
        ("context", pa.string()),
    ]
)

Path = str | os.PathLike[str]


class EventFileError(ValueError):
    """A file that cannot be read or written as events.

    ``row`` is the 1-based data row (header not counted; None for file-level
    problems such as a missing column), ``column`` the offending column.
    """

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None, path: str = "") -> None:
        where = []
        if path:
            where.append(path)
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.reason = message
        self.row = row
        self.column = column
        self.path = path


# --------------------------------------------------------------------------- format


def _format_of(path: Path) -> str:
    name = os.fspath(path).lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv.gz"):
        return "csv.gz"
    if name.endswith(".csv"):
        return "csv"
    raise EventFileError(f"unknown event file suffix (use .csv, .csv.gz or .parquet): {os.fspath(path)!r}")


def _open_text(path: Path, mode: str, fmt: str) -> IO[str]:
    if fmt == "csv.gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8", newline=""))
    return open(path, mode, encoding="utf-8", newline="")


# --------------------------------------------------------------------------- parsing values


def _is_missing(v: object) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def parse_event_type(v: object) -> EventType:
    """An ``event_type`` cell as an EventType; raises ValueError if unknown.

    >>> parse_event_type("Add_To_Cart"), parse_event_type(" purchase "), parse_event_type(7)
    (<EventType.ADD_TO_CART: 3>, <EventType.PURCHASE: 6>, <EventType.SEARCH: 7>)
    """
    if isinstance(v, int) and not isinstance(v, bool):
        if v in EventType._value2member_map_:
            return EventType(v)
    elif isinstance(v, str):
        s = v.strip().lower().replace("-", "_")
        s = s.removeprefix("event_type_")
        if s in _TYPE_NAMES:
            return _TYPE_NAMES[s]
        if s.isdigit() and int(s) in EventType._value2member_map_:
            return EventType(int(s))
    raise ValueError(f"unknown event type {v!r} (expected one of {', '.join(_TYPE_NAMES)})")


def parse_time(v: object) -> float | None:
    """An ``event_time`` cell as float unix seconds (None if empty); raises ValueError.

    >>> parse_time("2026-01-01T01:00:00+01:00"), parse_time("2026-01-01 00:00:00"), parse_time("1767225600.5")
    (1767225600.0, 1767225600.0, 1767225600.5)
    """
    if _is_missing(v):
        return None
    if isinstance(v, datetime):
        return _datetime_seconds(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if _NUMBER_RE.match(s):
            return float(s)
        try:
            return _datetime_seconds(datetime.fromisoformat(s))
        except ValueError:
            pass
    raise ValueError(f"cannot parse time {v!r} (expected ISO-8601 or unix seconds)")


def _datetime_seconds(d: datetime) -> float:
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


def _parse_float(v: object) -> float:
    if _is_missing(v):
        return 0.0
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and _NUMBER_RE.match(v.strip()):
        return float(v)
    raise ValueError(f"cannot parse number {v!r}")


def _parse_int(v: object) -> int:
    if _is_missing(v):
        return 0
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    f: float | None = None
    if isinstance(v, float):
        f = v
    elif isinstance(v, str) and _NUMBER_RE.match(v.strip()):
        f = float(v)
    if f is not None and math.isfinite(f) and f == int(f):
        return int(f)
    raise ValueError(f"cannot parse integer {v!r}")


def _parse_str(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v if isinstance(v, str) else str(v)


def _parse_context(v: object) -> dict[str, str]:
    if _is_missing(v):
        return {}
    if isinstance(v, str):
        try:
            obj = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"context is not JSON: {e}") from None
        if isinstance(obj, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in obj.items()):
            return obj
    raise ValueError(f"context must be a JSON object of strings, got {v!r}")


def row_id(e: Event) -> str:
    """The deterministic id of an event's content (used when ``event_id`` is missing).

    >>> row_id(Event("", "u1", EventType.VIEW, 1.0, item_id="i"))
    'h-9eedbe930f2a8581af142773333f673b'
    """
    fields = (
        e.user_id,
        str(int(e.type)),
        "" if e.event_time is None else repr(float(e.event_time)),
        e.item_id,
        e.category,
        repr(float(e.price)),
        str(e.quantity),
        e.session_id,
        e.query,
        json.dumps(e.context, sort_keys=True) if e.context else "",
    )
    return "h-" + hashlib.blake2b("\x1f".join(fields).encode("utf-8"), digest_size=16).hexdigest()


_PARSERS: dict[str, Any] = {
    "event_id": _parse_str,
    "user_id": _parse_str,
    "event_type": parse_event_type,
    "event_time": parse_time,
    "item_id": _parse_str,
    "category": _parse_str,
    "price": _parse_float,
    "quantity": _parse_int,
    "session_id": _parse_str,
    "query": _parse_str,
    "context": _parse_context,
}


def row_to_event(row: dict[str, object], row_number: int | None = None) -> Event:
    """Build an Event from a raw row (column name -> cell); raises EventFileError.

    >>> row_to_event({"event_id": "x", "user_id": "u", "event_type": "search", "event_time": 5, "query": "shoes"})
    Event(event_id='x', user_id='u', type=<EventType.SEARCH: 7>, event_time=5.0, item_id='', category='', \
price=0.0, quantity=0, session_id='', query='shoes', context={})
    """
    values: dict[str, Any] = {}
    for col, parse in _PARSERS.items():
        if col not in row:
            continue
        try:
            values[col] = parse(row[col])
        except ValueError as err:
            raise EventFileError(str(err), row=row_number, column=col) from None
    if "event_type" not in values:
        raise EventFileError("event_type is required", row=row_number, column="event_type")
    e = Event(
        event_id=values.get("event_id", ""),
        user_id=values.get("user_id", ""),
        type=values["event_type"],
        event_time=values.get("event_time"),
        item_id=values.get("item_id", ""),
        category=values.get("category", ""),
        price=values.get("price", 0.0),
        quantity=values.get("quantity", 0),
        session_id=values.get("session_id", ""),
        query=values.get("query", ""),
        context=values.get("context", {}),
    )
    if not e.event_id:
        e.event_id = row_id(e)
    return e


# --------------------------------------------------------------------------- reading


def _select_columns(names: Sequence[str], path: Path) -> dict[str, int]:
    """Known column -> index in the file; raises if a required column is absent."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        key = name.strip().lower()
        if key in _PARSERS and key not in index:
            index[key] = i
    for col in REQUIRED_COLUMNS:
        if col not in index:
            raise EventFileError("required column is missing", column=col, path=os.fspath(path))
    return index


def read_rows(path: Path) -> Iterator[dict[str, object]]:
    """Yield each data row as ``{known column: raw cell}``, in file order (unparsed).

    CSV cells are strings; Parquet cells are Python values (timestamp columns
    arrive as float unix seconds). Unknown columns are dropped.
    """
    fmt = _format_of(path)
    if fmt == "parquet":
        yield from _read_parquet_rows(path)
    else:
        yield from _read_csv_rows(path, fmt)


def _read_csv_rows(path: Path, fmt: str) -> Iterator[dict[str, object]]:
    with _open_text(path, "r", fmt) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise EventFileError("empty file (no header)", path=os.fspath(path))
        index = _select_columns(header, path)
        items = list(index.items())
        for cells in reader:
            if not cells:
                continue  # blank line
            n = len(cells)
            yield {col: (cells[i] if i < n else "") for col, i in items}


def _read_parquet_rows(path: Path) -> Iterator[dict[str, object]]:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    index = _select_columns(names, path)
    wanted = [names[i] for i in index.values()]
    keys = list(index)
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
        cols = [_arrow_values(batch.column(name)) for name in wanted]
        for values in zip(*cols):
            yield dict(zip(keys, values))


def _arrow_values(arr: pa.Array) -> list[object]:
    if pa.types.is_timestamp(arr.type):  # -> float unix seconds (timestamps are stored as UTC ticks)
        unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[arr.type.unit]
        return [None if v is None else v / unit for v in arr.cast(pa.int64()).to_pylist()]
    return arr.to_pylist()  # type: ignore[no-any-return]


def read_events(path: Path) -> Iterator[Event]:
    """Yield the file's events in file order; raises EventFileError on unparseable cells."""
    for n, row in enumerate(read_rows(path), start=1):
        try:
            yield row_to_event(row, n)
        except EventFileError as err:
            raise EventFileError(err.reason, row=n, column=err.column, path=os.fspath(path)) from None


# --------------------------------------------------------------------------- writing


def _type_name(e: Event, n: int) -> str:
    try:
        return EventType(e.type).name.lower()
    except ValueError:
        raise EventFileError(f"unknown event type {e.type!r}", row=n, column="event_type") from None


def _cells(e: Event, n: int) -> tuple[object, ...]:
    return (
        e.event_id,
        e.user_id,
        _type_name(e, n),
        e.event_time,
        e.item_id,
        e.category,
        float(e.price),
        int(e.quantity),
        e.session_id,
        e.query,
        json.dumps(e.context, sort_keys=True, ensure_ascii=False) if e.context else "",
    )


def write_events(path: Path, events: Iterable[Event]) -> int:
    """Write events (COLUMNS then EXTRA_COLUMNS) to a .csv, .csv.gz or .parquet file.

    Returns the number of events written. Times and prices are written as float
    (``repr``), so reading back gives the same values exactly.
    """
    fmt = _format_of(path)
    if fmt == "parquet":
        return _write_parquet(path, events)
    n = 0
    with _open_text(path, "w", fmt) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_ALL_COLUMNS)
        for n, e in enumerate(events, start=1):
            cells = _cells(e, n)
            w.writerow(["" if c is None else repr(c) if isinstance(c, float) else c for c in cells])
    return n


def _write_parquet(path: Path, events: Iterable[Event]) -> int:
    n = 0
    with pq.ParquetWriter(path, _PARQUET_SCHEMA) as writer:
        chunk: list[tuple[object, ...]] = []
        for n, e in enumerate(events, start=1):
            chunk.append(_cells(e, n))
            if len(chunk) >= BATCH_ROWS:
                _write_chunk(writer, chunk)
                chunk = []
        if chunk or n == 0:
            _write_chunk(writer, chunk)
    return n


def _write_chunk(writer: pq.ParquetWriter, chunk: list[tuple[object, ...]]) -> None:
    columns = list(zip(*chunk)) if chunk else [() for _ in _ALL_COLUMNS]
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, _PARQUET_SCHEMA)]
    writer.write_table(pa.Table.from_arrays(arrays, schema=_PARQUET_SCHEMA))
