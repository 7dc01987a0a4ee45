"""`portrait serve` records the partition count in a new data dir and refuses a later start with another."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ServerProcess


def test_a_start_with_another_partition_count_is_refused(redis_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data, redis_url, PORTRAIT_PARTITIONS="16")
    try:
        first.wait_serving()
    finally:
        assert first.terminate() == 0
    recorded = (data / "partitions.json").read_bytes()
    assert json.loads(recorded) == {"partitions": 16, "hash": "crc32", "workers": 1}

    second = ServerProcess(data, redis_url, PORTRAIT_PARTITIONS="64")
    code = second.proc.wait(timeout=120)
    second.terminate()
    log = second.log()
    assert code == 2, log
    assert "refusing to start" in log and "PORTRAIT_PARTITIONS=16" in log and "asks for 64" in log
    assert (data / "partitions.json").read_bytes() == recorded

    third = ServerProcess(data, redis_url, PORTRAIT_PARTITIONS="16")  # the recorded count starts again
    try:
        third.wait_serving()
    finally:
        assert third.terminate() == 0
