"""The schema of a profile row, once: every column's name, kind, role and meaning.

Everything else derives from ``COLUMNS``: the Feast feature view's fields (``feast_fields``, used by
``feature_repo/user_profile.py``), the entity's join key and the source's timestamp columns, the offline
parquet schema (``ARROW_SCHEMA``, the column order of the files ``OfflineLog`` writes), the protobuf
``Value`` field the online writer fills (``Kind.value_field``), the keys and Python types of a row as the
partition worker builds it (``ROW_KEYS``, ``row_errors``) and the README's feature table
(``markdown_table``; ``python -m server.store.schema --markdown`` prints it).

The profile's numeric features take their names and order from ``server.domain.profile.FEATURE_NAMES``
(the domain computes them); this module adds their meaning and every other column. The order of
``COLUMNS`` is the order of the offline files' columns: append new columns at the end (parts already
written keep theirs).

>>> [c.name for c in COLUMNS[:4]]
['user_id', 'event_timestamp', 'created_timestamp', 'views_1h']
>>> COLUMN["top_categories"].kind.arrow, COLUMN["segment"].kind.value_field, COLUMN["event_timestamp"].row_key
(ListType(list<item: string>), 'int64_val', 'event_timestamp_us')
>>> ENTITY.name, EVENT_TIMESTAMP.name, CREATED_TIMESTAMP.name, len(FEATURES) == len(FEATURE_NAMES) + 11
('user_id', 'event_timestamp', 'created_timestamp', True)
>>> row_errors({"user_id": "u1"})[:1]
['missing column event_timestamp_us']
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from server.domain.profile import (
    COUNT_FEATURES,
    CYCLE_FEATURES,
    FEATURE_NAMES,
    SCALAR_FEATURES,
    SEQUENCE_FEATURES,
)


@dataclass(frozen=True)
class Kind:
    """A column's value type in each representation: Python (rows), Arrow (offline files), Feast (the
    feature view) and the Feast ``Value`` proto field the online writer sets."""

    name: str
    """As shown in the README."""
    python: type
    """The type of the value in a row (a list's items are ``str``)."""
    arrow: pa.DataType
    feast: Callable[[Any], Any] | None
    """The Feast type, given the ``feast.types`` module; None: not a Feast feature type."""
    value_field: str | None
    """``feast.protos.feast.types.Value_pb2.Value`` field holding it online; None: not stored as a value."""

    def feast_type(self) -> Any:
        """The ``feast.types`` object (imports Feast: seconds, the first time)."""
        from feast import types

        if self.feast is None:
            raise ValueError(f"{self.name} is not a Feast feature type")
        return self.feast(types)


FLOAT = Kind("float64", float, pa.float64(), lambda t: t.Float64, "double_val")
INT = Kind("int64", int, pa.int64(), lambda t: t.Int64, "int64_val")
STRING = Kind("string", str, pa.string(), lambda t: t.String, "string_val")
STRING_LIST = Kind("list of strings", list, pa.list_(pa.string()), lambda t: t.Array(t.String), "string_list_val")
TIMESTAMP = Kind("timestamp (µs, UTC)", int, pa.timestamp("us", tz="UTC"), None, None)
"""Rows carry it as int microseconds since the epoch, under ``<name>_us``."""


class Role(enum.Enum):
    """What a column is to Feast."""

    ENTITY = "entity"
    """The join key of the ``user`` entity."""
    TIMESTAMP = "timestamp"
    """The source's event timestamp: the row's as-of time."""
    CREATED = "created"
    """The source's created timestamp: set when a row is written, not carried by rows."""
    FEATURE = "feature"
    """A field of the ``user_profile`` feature view."""


@dataclass(frozen=True)
class Column:
    """One column of a profile row."""

    name: str
    kind: Kind
    role: Role
    doc: str
    """Meaning (Markdown, one line): the README's table. Columns sharing it share a table row."""

    @property
    def row_key(self) -> str | None:
        """The key of the column in a row built by the worker (None: not in rows)."""
        if self.role is Role.CREATED:
            return None
        return f"{self.name}_us" if self.kind is TIMESTAMP else self.name


_COUNTS_DOC = ("sliding counts, exact to a tile: minute tiles for 1h, hour tiles for 24h/7d, day tiles for 30d "
               "(≤ 60 + 168 + 30 tiles per user)")
# The meaning of each numeric feature of the profile (names and order: FEATURE_NAMES).
_PROFILE_DOCS: dict[str, str] = {
    **dict.fromkeys(COUNT_FEATURES, _COUNTS_DOC),
    **dict.fromkeys(("spend_7d", "spend_30d", "lifetime_spend"), "Σ price × units of purchases"),
    **dict.fromkeys(("lifetime_events", "lifetime_purchases", "avg_order_value"),
                    "a purchase event is one order line; AOV = lifetime_spend / lifetime_purchases"),
    **dict.fromkeys(("first_seen_ts", "last_event_ts", "last_purchase_ts"), "unix seconds (0 = never)"),
    "sessions_7d": "sessions started in 7 days: by `session_id`, else a new session after 30 min of inactivity",
    "conversion_rate_30d": "purchases_30d / views_30d",
    "preferred_hour": "argmax of an hour-of-day (UTC) histogram decayed with a 14-day half-life (−1 = none)",
    **dict.fromkeys(("avg_viewed_price_30d", "avg_purchased_price_30d"),
                    "mean unit price of priced views / purchases (price level and sensitivity)"),
    **dict.fromkeys(("purchase_interval_mean_days", "purchase_interval_last_days"),
                    "purchase cycle: mean / latest interval between purchase occasions (purchases > 30 min apart), "
                    "days (0 = fewer than two occasions)"),
    "next_purchase_expected_ts": "last_purchase_ts + the mean interval, unix seconds (0 = unknown)",
    "active_days_30d": "days with any event among the last 30",
    **dict.fromkeys(SEQUENCE_FEATURES,
                    "behaviour sequence: P(next event is *b*, given this one is *a*) over consecutive events, counts "
                    "decayed with a 30-day half-life, smoothed towards 1/7"),
}
if set(_PROFILE_DOCS) != set(FEATURE_NAMES):  # the domain added or renamed a feature: give it a meaning here
    raise RuntimeError(f"profile features without a meaning: {sorted(set(FEATURE_NAMES) - set(_PROFILE_DOCS))}, "
                      f"meanings of no feature: {sorted(set(_PROFILE_DOCS) - set(FEATURE_NAMES))}")

COLUMNS: tuple[Column, ...] = (
    Column("user_id", STRING, Role.ENTITY, "the user: join key of the Feast entity `user`"),
    Column("event_timestamp", TIMESTAMP, Role.TIMESTAMP,
           "row time: the as-of time, bumped to increase strictly per user (Feast's Redis writer skips a row "
           "not newer than the stored one); rows carry it as `event_timestamp_us`"),
    Column("created_timestamp", TIMESTAMP, Role.CREATED, "when the row was written (offline files only)"),
    *(Column(n, FLOAT, Role.FEATURE, _PROFILE_DOCS[n]) for n in COUNT_FEATURES + SCALAR_FEATURES),
    Column("updated_at_ts", FLOAT, Role.FEATURE, "the latest event time, unix seconds (= last_event_ts)"),
    Column("purchase_propensity", FLOAT, Role.FEATURE,
           "P(purchase within `PORTRAIT_PROPENSITY_HORIZON_S`) predicted at the latest event (models, below)"),
    Column("risk_score", FLOAT, Role.FEATURE,
           "highest recent per-event anomaly score (River HalfSpaceTrees), halving every hour "
           "([docs/learning.md](docs/learning.md))"),
    Column("profile_version", INT, Role.FEATURE, "+1 per accepted event or attribute update"),
    Column("segment", INT, Role.FEATURE, "segment at the latest event, 0..k−1 (models, below; −1 = none)"),
    Column("age", INT, Role.FEATURE, "set by `UpdateAttributes` (0 = unset)"),
    *(Column(n, STRING, Role.FEATURE, "set by `UpdateAttributes` (empty = unset)") for n in ("gender", "region")),
    Column("tags", STRING_LIST, Role.FEATURE, "rule-based tags, sorted (below)"),
    Column("top_categories", STRING_LIST, Role.FEATURE,
           "top 3 by affinity decayed with a 7-day half-life (view 1, click 1, cart 3, remove −1, favorite 2, "
           "purchase 5, search 0.5; ≤ 32 categories kept)"),
    # added after the first offline files: appended, so that parts written before keep their column order
    Column("as_of_ts", FLOAT, Role.FEATURE,
           "the time the values are true for, unix seconds: the latest event, or later when time alone changed "
           "them (a window tile left, a tag started or stopped holding; timers below)"),
    *(Column(n, FLOAT, Role.FEATURE, _PROFILE_DOCS[n]) for n in CYCLE_FEATURES + SEQUENCE_FEATURES),
)
"""Every column of a profile row, in the offline files' order."""

COLUMN: dict[str, Column] = {c.name: c for c in COLUMNS}
APPENDED_FROM = [c.name for c in COLUMNS].index("as_of_ts")
"""Columns from this index on were appended after the first offline files (rows and parts may lack them)."""
_BY_ROLE = {r: tuple(c for c in COLUMNS if c.role is r) for r in Role}
(ENTITY,), (EVENT_TIMESTAMP,), (CREATED_TIMESTAMP,) = (_BY_ROLE[r] for r in (Role.ENTITY, Role.TIMESTAMP,
                                                                               Role.CREATED))
FEATURES: tuple[Column, ...] = _BY_ROLE[Role.FEATURE]
"""The feature view's fields, in order."""
ROW_KEYS: tuple[str, ...] = tuple(c.row_key for c in COLUMNS if c.row_key is not None)
"""The keys of a row built by the worker (``PartitionWorker.row``)."""
ARROW_SCHEMA = pa.schema([pa.field(c.name, c.kind.arrow) for c in COLUMNS])
"""The offline parquet files' schema."""
_ROW_KIND = {c.row_key: c.kind for c in COLUMNS if c.row_key is not None}


def feast_fields() -> list[Any]:
    """The ``user_profile`` feature view's schema: one ``feast.Field`` per feature (imports Feast)."""
    from feast import Field

    return [Field(name=c.name, dtype=c.kind.feast_type()) for c in FEATURES]


def row_errors(row: Mapping[str, Any]) -> list[str]:
    """What is wrong with a row: missing or unknown keys, values not of their column's Python type
    (``bool`` is no ``int``; list items must be ``str``). Empty: the row fits the schema."""
    errors = [f"missing column {k}" for k in ROW_KEYS if k not in row]
    errors += [f"unknown column {k}" for k in row if k not in _ROW_KIND]
    for key, v in row.items():
        kind = _ROW_KIND.get(key)
        if kind is None:
            continue
        ok = isinstance(v, kind.python) and not isinstance(v, bool)
        if ok and kind is STRING_LIST:
            ok = all(isinstance(x, str) for x in v)
        if not ok:
            errors.append(f"column {key}: {type(v).__name__} {v!r}, expected {kind.name}")
    return errors


def _label(names: list[str]) -> str:
    """Column names for a table cell: a full product ``{a,b}_{x,y}`` in brace form, else listed."""
    split = [(*n.rsplit("_", 1), "")[:2] for n in names]
    heads, tails = list(dict.fromkeys(h for h, _ in split)), list(dict.fromkeys(t for _, t in split))
    if len(heads) > 1 and len(tails) > 1 and len(names) == len(heads) * len(tails) \
            and {(h, t) for h, t in split} == {(h, t) for h in heads for t in tails}:
        return f"`{{{','.join(heads)}}}_{{{','.join(tails)}}}`"
    return ", ".join(f"`{n}`" for n in names)


def _groups(columns: Iterable[Column]) -> list[tuple[list[str], Column]]:
    groups: dict[tuple[str, str, Role], tuple[list[str], Column]] = {}
    for c in columns:
        groups.setdefault((c.doc, c.kind.name, c.role), ([], c))[0].append(c.name)
    return list(groups.values())


def markdown_table() -> str:
    """The README's feature table: one line per meaning (columns sharing one share the line), in column order.

    >>> print("\\n".join(markdown_table().splitlines()[:3]))
    | column | type | role | meaning |
    |---|---|---|---|
    | `user_id` | string | entity key | the user: join key of the Feast entity `user` |
    >>> markdown_table().splitlines()[5].split(" | ")[0]
    '| `{views,clicks,carts,remove_from_carts,favorites,purchases,searches}_{1h,24h,7d,30d}`'
    """
    roles = {Role.ENTITY: "entity key", Role.TIMESTAMP: "event timestamp", Role.CREATED: "created timestamp",
             Role.FEATURE: "feature"}
    lines = ["| column | type | role | meaning |", "|---|---|---|---|"]
    for names, c in _groups(COLUMNS):
        doc = c.doc.replace("|", "\\|")
        lines.append(f"| {_label(names)} | {c.kind.name} | {roles[c.role]} | {doc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m server.store.schema [--markdown]``: the columns, one per line, or the README table."""
    parser = argparse.ArgumentParser(prog="python -m server.store.schema", description="The columns of a profile row.")
    parser.add_argument("--markdown", action="store_true", help="print the README's feature table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
        return
    for c in COLUMNS:
        print(f"{c.name}\t{c.kind.name}\t{c.role.value}")


if __name__ == "__main__":
    main()
