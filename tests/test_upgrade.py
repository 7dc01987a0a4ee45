"""A data directory written by the code before the re-house (log segments + a checkpoint taken mid-stream,
then kill -9) starts with today's code: every profile equals what the old server served."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

from tests.conftest import ROOT, make_settings

GOLDEN = ROOT / "tests" / "golden"


async def test_a_data_dir_of_the_previous_format_recovers_every_profile(tmp_path: Path, redis_url: str) -> None:
    from server.app import PortraitServer

    data = tmp_path / "data"
    with tarfile.open(GOLDEN / "datadir-v0.tar.gz") as tar:
        tar.extractall(data, filter="data")
    expected = json.loads((GOLDEN / "datadir-v0-expected.json").read_text())
    srv = PortraitServer(make_settings(data, redis_url))
    await srv.start()
    try:
        report = srv.recovery
        assert report is not None and report.replayed > 0  # the checkpoint did not cover the second half
        pipeline = srv.core.pipeline  # type: ignore[union-attr]
        assert sorted(pipeline.profiles) == sorted(expected["profiles"])
        for user, want in expected["profiles"].items():
            row = pipeline.row(user)
            assert row["profile_version"] == want["version"], user
            assert sorted(row["tags"]) == sorted(want["tags"]), user
            assert row["segment"] == want["segment"], user
            for name, value in want["features"].items():
                assert math.isclose(float(row[name]), value, rel_tol=1e-9, abs_tol=1e-12), (user, name)
    finally:
        await srv.stop()
