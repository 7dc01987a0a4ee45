"""One schema (server.store.schema) for the Feast definitions, the offline files, the rows and the README."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from server.domain.events import Event, EventType
from server.domain.profile import CYCLE_FEATURES, FEATURE_NAMES, SEQUENCE_FEATURES
from server.metrics import Metrics
from server.store import schema
from server.store.feast import OfflineLog
from server.store.schema import (
    ARROW_SCHEMA,
    COLUMNS,
    CREATED_TIMESTAMP,
    ENTITY,
    EVENT_TIMESTAMP,
    FEATURES,
    ROW_KEYS,
    Role,
    markdown_table,
    row_errors,
)
from server.worker.partition import PartitionWorker, WorkerConfig
from tests.conftest import ROOT

T = 1_700_000_000.0


def _worker_rows() -> dict[str, dict[str, Any]]:
    """Rows of a busy user (purchases, categories, attributes, tags), a one-event user and an attributes-only user."""
    w = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    events = [
        Event("e1", "busy", EventType.VIEW, T, item_id="i1", category="shoes", price=40.0, session_id="s1"),
        Event("e2", "busy", EventType.ADD_TO_CART, T + 10, item_id="i1", category="shoes", price=40.0),
        Event("e3", "busy", EventType.PURCHASE, T + 20, item_id="i1", category="shoes", price=40.0, quantity=2),
        Event("e4", "busy", EventType.SEARCH, T + 30, query="hats"),
        Event("e5", "busy", EventType.CLICK, T + 40, item_id="i2", category="hats"),
        Event("e6", "once", EventType.VIEW, T, item_id="i3"),
    ]
    for e in events:
        w.track(e, now=T + 60)
    w.update_attributes("busy", 31, "f", "eu")
    w.update_attributes("attrs", 40, "m", "us")
    return {u: w.row(u) for u in ("busy", "once", "attrs")}


def _load_definitions() -> ModuleType:
    """feature_repo/user_profile.py, loaded as the server and ``feast apply`` load it."""
    path = ROOT / "feature_repo" / "user_profile.py"
    spec = importlib.util.spec_from_file_location("portrait_test_definitions", path)
    assert spec and spec.loader
    defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defs)
    return defs


def test_readme_feature_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- feature-table -->\n(.*?)\n<!-- /feature-table -->", readme, re.S)
    assert m, "README lacks the feature-table markers"
    assert m.group(1) == markdown_table(), "regenerate it: python -m server.store.schema --markdown"


def test_the_generator_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    schema.main(["--markdown"])
    assert capsys.readouterr().out == markdown_table() + "\n"
    schema.main([])
    assert capsys.readouterr().out.splitlines()[0] == "user_id\tstring\tentity"


def test_every_column_is_listed_once_and_in_the_readme() -> None:
    names = [c.name for c in COLUMNS]
    assert len(names) == len(set(names))
    features = [c.name for c in FEATURES]
    assert sorted(n for n in features if n in FEATURE_NAMES) == sorted(FEATURE_NAMES)  # every profile feature
    first = features.index("updated_at_ts")  # the first layout's profile features, in their order; later ones
    assert features[:first] == [n for n in FEATURE_NAMES if features.index(n) < first]  # appended at the end
    assert features[-len(CYCLE_FEATURES + SEQUENCE_FEATURES):] == list(CYCLE_FEATURES + SEQUENCE_FEATURES)
    table = markdown_table()
    for c in COLUMNS:  # by name, or inside the {..}_{..} pattern of the counts
        head, _, tail = c.name.rpartition("_")
        assert f"`{c.name}`" in table or re.search(rf"{{[^}}]*\b{head}\b[^}}]*}}_{{[^}}]*\b{tail}\b", table), c.name


def test_worker_rows_have_exactly_the_schemas_columns_and_types() -> None:
    rows = _worker_rows()
    for user, row in rows.items():
        assert set(row) == set(ROW_KEYS), user
        assert row_errors(row) == [], user
    busy = rows["busy"]
    assert busy["top_categories"] and busy["tags"] and busy["age"] == 31 and busy["gender"] == "f"
    assert not math.isnan(busy["purchase_propensity"])


def test_row_errors_names_what_is_wrong() -> None:
    row = _worker_rows()["once"]
    bad = dict(row, segment=True, views_1h=1, tags=["new", 3], extra=1.0)
    del bad["region"]
    assert sorted(row_errors(bad)) == sorted([
        "missing column region", "unknown column extra", "column segment: bool True, expected int64",
        "column views_1h: int 1, expected float64", "column tags: list ['new', 3], expected list of strings",
    ])


def test_feature_repo_definitions_derive_from_the_schema() -> None:
    defs = _load_definitions()
    fv = defs.user_profile_fv
    assert [(f.name, f.dtype) for f in fv.features] == [(c.name, c.kind.feast_type()) for c in FEATURES]
    assert defs.user.join_key == ENTITY.name
    assert defs.user_profile_source.timestamp_field == EVENT_TIMESTAMP.name
    assert defs.user_profile_source.created_timestamp_column == CREATED_TIMESTAMP.name
    assert defs.user_profile_push_source.batch_source is defs.user_profile_source
    assert [p.name for p in defs.user_profile_v1.feature_view_projections] == [fv.name]


def test_offline_files_have_the_schemas_columns_in_order(tmp_path: Path) -> None:
    rows = list(_worker_rows().values())
    table = pq.read_table(OfflineLog(tmp_path).append(rows))
    assert table.schema.equals(ARROW_SCHEMA)
    assert table.column_names == [c.name for c in COLUMNS]
    got = table.to_pylist()
    for row, back in zip(rows, got, strict=True):
        for c in COLUMNS:
            if c.role is Role.FEATURE or c.role is Role.ENTITY:
                assert back[c.name] == row[c.name] or (math.isnan(back[c.name]) and math.isnan(row[c.name])), c.name
        assert int(back[EVENT_TIMESTAMP.name].timestamp() * 1_000_000) == row["event_timestamp_us"]
