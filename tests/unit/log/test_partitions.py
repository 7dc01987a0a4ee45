"""The partition count is recorded once per data dir and every later start is checked against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.log.partitions import FILE, PartitionsChanged, ensure_partitions, recorded_partitions


def test_first_use_records_and_later_uses_must_match(tmp_path: Path) -> None:
    assert recorded_partitions(tmp_path) is None
    assert ensure_partitions(tmp_path, 8) == 8
    assert recorded_partitions(tmp_path) == 8
    assert json.loads((tmp_path / FILE).read_text()) == {"partitions": 8, "hash": "crc32", "workers": 1}
    before = (tmp_path / FILE).read_bytes()
    with pytest.raises(PartitionsChanged, match=r"PORTRAIT_PARTITIONS=8 .*asks for 16"):
        ensure_partitions(tmp_path, 16)
    assert (tmp_path / FILE).read_bytes() == before  # a refused start changes nothing


def test_a_store_partitioned_by_another_hash_is_refused(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text(json.dumps({"partitions": 8, "hash": "murmur3"}))
    with pytest.raises(PartitionsChanged, match="hash murmur3"):
        ensure_partitions(tmp_path, 8)


def test_the_worker_count_is_recorded_and_a_change_refused(tmp_path: Path) -> None:
    ensure_partitions(tmp_path, 8, workers=3)
    assert json.loads((tmp_path / FILE).read_text())["workers"] == 3
    with pytest.raises(PartitionsChanged, match=r"PORTRAIT_WORKERS=3; this start asks for 1"):
        ensure_partitions(tmp_path, 8)


def test_a_record_without_workers_was_written_by_one(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text(json.dumps({"partitions": 8, "hash": "crc32"}))
    assert ensure_partitions(tmp_path, 8) == 8
    with pytest.raises(PartitionsChanged, match="PORTRAIT_WORKERS=1"):
        ensure_partitions(tmp_path, 8, workers=2)
