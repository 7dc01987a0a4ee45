"""Tests for server.tools.eventfile: CSV/Parquet roundtrips, time parsing, id hashing, errors."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from server.domain.events import Event, EventType
from server.tools import eventfile
from server.tools.eventfile import COLUMNS, EventFileError, read_events, read_rows, write_events

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def sample_events() -> list[Event]:
    return [
        Event("e1", "u1", EventType.SEARCH, T0, query="red shoes", session_id="s1"),
        Event("e2", "u1", EventType.VIEW, T0 + 1.25, item_id="i-c01-001", category="c01", price=19.99, session_id="s1"),
        Event("e3", "u1", EventType.ADD_TO_CART, T0 + 7.5, item_id="i-c01-001", price=19.99, quantity=2),
        Event("e4", "u2", EventType.PURCHASE, T0 + 1e-3, item_id="i-c02-010", price=0.1 + 0.2, quantity=3,
              context={"promo": "1", "device": "app, \"beta\""}),
        Event("e5", "u2", EventType.REMOVE_FROM_CART, T0 + 60, item_id="i,with\"quotes", quantity=1),
        Event("e6", "u3", EventType.FAVORITE, T0 + 3600, item_id="i-ü-1", category="c03"),
        Event("e7", "u3", EventType.CLICK, None, item_id="i-c03-002"),
    ]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_roundtrip_keeps_every_field(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    events = sample_events()
    assert write_events(path, events) == len(events)
    back = list(read_events(path))
    assert back == events
    assert all(isinstance(e.type, EventType) for e in back)


def test_csv_gz_is_gzipped_and_csv_has_documented_header(tmp_path: Path) -> None:
    write_events(tmp_path / "a.csv.gz", sample_events())
    with gzip.open(tmp_path / "a.csv.gz", "rt") as f:
        assert f.readline().strip().split(",")[: len(COLUMNS)] == list(COLUMNS)
    write_events(tmp_path / "a.csv", sample_events()[:1])
    header, row = (tmp_path / "a.csv").read_text().splitlines()
    assert header == ",".join(COLUMNS) + ",query,context"
    assert row.split(",")[2:4] == ["search", repr(T0)]


def test_parquet_is_written_in_row_groups_and_read_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventfile, "BATCH_ROWS", 3)
    events = [Event(f"e{i}", f"u{i % 4}", EventType.VIEW, T0 + i, item_id=f"i{i}") for i in range(10)]
    path = tmp_path / "many.parquet"
    write_events(path, events)
    assert pq.ParquetFile(path).num_row_groups == 4
    assert [e.event_id for e in read_events(path)] == [f"e{i}" for i in range(10)]


def test_empty_event_stream_writes_readable_files(tmp_path: Path) -> None:
    for name in ("empty.csv", "empty.parquet"):
        assert write_events(tmp_path / name, []) == 0
        assert list(read_events(tmp_path / name)) == []


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a non-UTC local zone, so "naive means UTC" is really tested."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_not_utc")
def test_iso_and_unix_times_parse_to_the_same_seconds(tmp_path: Path) -> None:
    assert time.timezone != 0
    path = tmp_path / "times.csv"
    path.write_text(
        "user_id,event_type,event_time,item_id\n"
        "u,view,2026-01-01T00:00:00Z,i\n"
        "u,view,2026-01-01T01:00:00+01:00,i\n"
        "u,view,2026-01-01 00:00:00,i\n"  # naive = UTC
        "u,view,1767225600,i\n"
        "u,view,1767225600.0,i\n"
        "u,view,2026-01-01T00:00:00.250Z,i\n"
        "u,view,1767225600.25,i\n"
        "u,view,2025-12-31T19:00:00-05:00,i\n"
        "u,view,,i\n"
    )
    times = [e.event_time for e in read_events(path)]
    assert times == [T0] * 5 + [T0 + 0.25] * 2 + [T0, None]


@pytest.mark.usefixtures("local_time_not_utc")
def test_parquet_time_columns_of_any_type(tmp_path: Path) -> None:
    naive = datetime(2026, 1, 1, 0, 0, 1)
    aware = datetime(2026, 1, 1, 1, 0, 1, tzinfo=UTC)
    for name, arr in {
        "ts_naive": pa.array([naive], pa.timestamp("us")),
        "ts_tz": pa.array([aware], pa.timestamp("ms", tz="Europe/Berlin")),
        "ts_ns": pa.array([int((T0 + 1.5) * 1e9)], pa.timestamp("ns")),
        "int": pa.array([int(T0) + 1], pa.int64()),
        "float": pa.array([T0 + 1.5], pa.float64()),
        "iso": pa.array(["2026-01-01T00:00:01Z"], pa.string()),
    }.items():
        path = tmp_path / f"{name}.parquet"
        table = pa.table({"user_id": ["u"], "event_type": ["VIEW"], "event_time": arr, "item_id": ["i"]})
        pq.write_table(table, path)
        (e,) = read_events(path)
        expected = {"ts_tz": T0 + 3601, "ts_ns": T0 + 1.5, "float": T0 + 1.5}.get(name, T0 + 1)
        assert e.event_time == expected, name


def test_missing_event_id_gets_a_deterministic_distinct_hash(tmp_path: Path) -> None:
    path = tmp_path / "noid.csv"
    path.write_text(
        "user_id,event_type,event_time,item_id,price\n"
        "u1,view,2026-01-01T00:00:00Z,i1,9.5\n"
        "u1,view,2026-01-01T00:00:00Z,i2,9.5\n"  # other item
        "u1,view,2026-01-01T00:00:01Z,i1,9.5\n"  # other time
        "u2,view,2026-01-01T00:00:00Z,i1,9.5\n"  # other user
        "u1,click,2026-01-01T00:00:00Z,i1,9.5\n"  # other type
        "u1,view,2026-01-01T00:00:00Z,i1,9.0\n"  # other price
    )
    ids = [e.event_id for e in read_events(path)]
    assert ids == [e.event_id for e in read_events(path)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("h-") and len(i) == 2 + 32 for i in ids)

    # the same rows spelled differently (unix time, "9.50", upper case) in parquet hash the same
    table = pa.table(
        {
            "user_id": ["u1", "u2"],
            "event_type": ["VIEW", "VIEW"],
            "event_time": [T0, T0],
            "item_id": ["i1", "i1"],
            "price": ["9.50", "9.5"],
        }
    )
    pq.write_table(table, tmp_path / "noid.parquet")
    assert [e.event_id for e in read_events(tmp_path / "noid.parquet")] == [ids[0], ids[3]]


def test_empty_event_id_cells_are_hashed_and_given_ids_kept(tmp_path: Path) -> None:
    path = tmp_path / "someid.csv"
    path.write_text("event_id,user_id,event_type,event_time,item_id\nkeep-me,u,view,1,i\n,u,view,1,i\n")
    first, second = read_events(path)
    assert first.event_id == "keep-me"
    assert second.event_id.startswith("h-")
    assert second.event_id == eventfile.row_id(second)


def test_headers_and_types_are_case_insensitive_and_extra_columns_ignored(tmp_path: Path) -> None:
    path = tmp_path / "loose.csv"
    path.write_text(
        "Event_Type, USER_ID ,event_time,item_id,colour,quantity\n"
        "Add_To_Cart,u,1,i,red,2\n"
        "PURCHASE,u,2,i,blue,\n"
        "add-to-cart,u,3,i,green,1.0\n"
        "EVENT_TYPE_FAVORITE,u,4,i,,0\n"
        "7,u,5,,,\n"
    )
    events = list(read_events(path))
    assert [e.type for e in events] == [
        EventType.ADD_TO_CART,
        EventType.PURCHASE,
        EventType.ADD_TO_CART,
        EventType.FAVORITE,
        EventType.SEARCH,
    ]
    assert [e.quantity for e in events] == [2, 0, 1, 0, 0]
    assert all(e.user_id == "u" and e.category == "" and e.price == 0.0 for e in events)


@pytest.mark.parametrize(
    ("cell_column", "cell", "message"),
    [
        ("event_type", "vieww", "unknown event type"),
        ("event_type", "", "unknown event type"),
        ("event_type", "0", "unknown event type"),
        ("event_time", "yesterday", "cannot parse time"),
        ("event_time", "nan", "cannot parse time"),
        ("price", "cheap", "cannot parse number"),
        ("quantity", "1.5", "cannot parse integer"),
        ("context", "{not json", "context is not JSON"),
        ("context", '{"a": 1}', "JSON object of strings"),
    ],
)
def test_unparseable_cells_name_row_and_column(tmp_path: Path, cell_column: str, cell: str, message: str) -> None:
    good = {"user_id": "u", "event_type": "view", "event_time": "1", "item_id": "i", "price": "1", "quantity": "1",
            "context": ""}
    bad = dict(good, **{cell_column: cell})
    cols = list(good)
    path = tmp_path / "bad.csv"
    lines = [",".join(cols)] + [",".join(_csv_cell(r[c]) for c in cols) for r in (good, good, bad, good)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EventFileError) as info:
        list(read_events(path))
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.row, err.column) == (3, cell_column)
    assert "row 3" in str(err) and repr(cell_column) in str(err) and message in str(err)
    assert str(path) in str(err)


def _csv_cell(v: str) -> str:
    return '"' + v.replace('"', '""') + '"' if ("," in v or '"' in v) else v


def test_events_before_a_bad_row_are_yielded(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    path.write_text("user_id,event_type,event_time,item_id\nu,view,1,i\nu,view,2,i\nu,bogus,3,i\n")
    it = read_events(path)
    assert [next(it).event_time, next(it).event_time] == [1.0, 2.0]
    with pytest.raises(EventFileError, match="row 3"):
        next(it)


def test_bad_parquet_cell_names_row_and_column(tmp_path: Path) -> None:
    table = pa.table({"user_id": ["u", "u"], "event_type": ["view", "teleport"], "event_time": [1.0, 2.0]})
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(EventFileError) as info:
        list(read_events(tmp_path / "bad.parquet"))
    assert (info.value.row, info.value.column) == (2, "event_type")


@pytest.mark.parametrize("missing", ["user_id", "event_type", "event_time"])
def test_missing_required_column_is_reported(tmp_path: Path, missing: str) -> None:
    cols = [c for c in ("user_id", "event_type", "event_time", "item_id") if c != missing]
    path = tmp_path / "cols.csv"
    path.write_text(",".join(cols) + "\n" + ",".join("1" if c == "event_time" else "view" for c in cols) + "\n")
    with pytest.raises(EventFileError) as info:
        list(read_events(path))
    assert info.value.column == missing and info.value.row is None


def test_unknown_suffix_and_unwritable_type_are_errors(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="suffix"):
        write_events(tmp_path / "events.json", sample_events())
    with pytest.raises(EventFileError, match="suffix"):
        list(read_events(tmp_path / "events.txt"))
    with pytest.raises(EventFileError) as info:
        write_events(tmp_path / "x.csv", [sample_events()[1], Event("e", "u", 99, T0, item_id="i")])
    assert (info.value.row, info.value.column) == (2, "event_type")


def test_rows_invalid_for_the_server_still_parse(tmp_path: Path) -> None:
    """Validation is the server's business: empty user, negative price, search without query pass through."""
    path = tmp_path / "invalid.csv"
    path.write_text("user_id,event_type,event_time,item_id,price\n,view,1,i,-5\nu,search,1,,\n")
    first, second = read_events(path)
    assert (first.user_id, first.price) == ("", -5.0)
    assert (second.type, second.query) == (EventType.SEARCH, "")


def test_read_rows_gives_raw_cells_of_known_columns(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("user_id,event_type,event_time,extra\nu,VIEW,2026-01-01,x\n")
    assert list(read_rows(path)) == [{"user_id": "u", "event_type": "VIEW", "event_time": "2026-01-01"}]
