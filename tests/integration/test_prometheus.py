"""A real Prometheus scrapes the real Portrait server with deploy/prometheus/prometheus.yml.

The deploy config's ``portrait`` job is pointed at the session server's metrics port (1 s
interval); events go in over gRPC; Prometheus' HTTP API must then show the update-latency
histogram and the accepted-events counter having grown by what was sent, and ``up == 1``.
Needs the ``prometheus`` binary (Debian package ``prometheus``; CI installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server._gen.portrait.v1 import portrait_pb2 as pb
from tests.conftest import ROOT, ServerProcess, uid
from tests.integration.test_deploy import dashboard_exprs, promql_metric_names
from tests.integration.test_servicer import ev

PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DEADLINE_S = 25.0

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus binary is not on PATH (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(metrics_port: int, prom_port: int) -> dict[str, Any]:
    """The deploy config with the portrait job scraping 127.0.0.1:<metrics_port> every second."""
    cfg = copy.deepcopy(yaml.safe_load(PROM_CONFIG.read_text()))
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "portrait"]
    assert len(jobs) == 1, "deploy/prometheus/prometheus.yml needs exactly one 'portrait' scrape job"
    job = jobs[0]
    assert len(job["static_configs"]) == 1
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    for other in cfg["scrape_configs"]:  # e.g. Prometheus scraping itself: point it at this instance
        if other is not job:
            for sc in other.get("static_configs", []):
                sc["targets"] = [f"127.0.0.1:{prom_port}"]
    return cfg


@contextlib.contextmanager
def running_prometheus(metrics_port: int, tmp_path: Path) -> Iterator[str]:
    """A Prometheus process scraping 127.0.0.1:<metrics_port>; yields its API base URL; killed afterwards."""
    prom_port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(metrics_port, prom_port)))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{prom_port}/api/v1"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
        if proc.returncode not in (0, -9):
            print((tmp_path / "prometheus.log").read_text(errors="replace"))


@pytest.fixture
def prometheus(server: Any, tmp_path: Path) -> Iterator[str]:
    """A Prometheus scraping the session server."""
    with running_prometheus(server.metrics_port, tmp_path) as base:
        yield base


def _query(base: str, expr: str) -> list[dict[str, Any]] | None:
    """Instant query; None while Prometheus is not answering yet."""
    url = f"{base}/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # loopback
            body = json.load(r)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


async def _until(base: str, expr: str, ok: Any, deadline: float) -> list[dict[str, Any]]:
    """Poll ``expr`` until ``ok(result)`` holds or the deadline passes; returns the last result."""
    while True:
        res = await asyncio.to_thread(_query, base, expr)
        if res is not None and ok(res):
            return res
        if time.monotonic() > deadline:
            return res or []
        await asyncio.sleep(0.2)


def _accepted_total(server: Any) -> float:
    """The server's own sum of portrait_events_total{outcome="accepted"} over event types."""
    return sum(s.value for m in server.metrics.registry.collect() for s in m.samples
               if s.name == "portrait_events_total" and s.labels["outcome"] == "accepted")


def _value(res: list[dict[str, Any]]) -> float:
    return float(res[0]["value"][1]) if res else -1.0


async def test_prometheus_scrapes_the_server_with_the_deploy_config(server: Any, stub: Any, prometheus: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    up = await _until(prometheus, 'up{job="portrait"}', lambda r: _value(r) == 1.0, deadline)
    assert _value(up) == 1.0, f"Prometheus does not see the portrait target up: {up}"
    assert up[0]["metric"]["service"] == "portrait"  # the static label from the deploy config

    accepted_q = 'sum(portrait_events_total{job="portrait",outcome="accepted"}) or vector(0)'
    count_q = 'sum(portrait_update_latency_seconds_count{job="portrait"})'
    base_accepted = _accepted_total(server)
    # Wait for a scrape of the server as it is now, before the events below.
    before = await _until(prometheus, accepted_q, lambda r: _value(r) >= base_accepted, deadline)
    start = max(_value(before), 0.0)

    user, n = uid(), 25
    events = [ev(user, pb.EVENT_TYPE_CLICK if i % 2 else pb.EVENT_TYPE_VIEW, t=time.time() - 60 + i,
                 item_id=f"sku-{i}") for i in range(n)]
    r = await stub.TrackBatch(pb.TrackBatchRequest(events=events, wait_visible=True))
    assert r.accepted == n

    accepted = await _until(prometheus, accepted_q, lambda r: _value(r) >= start + n, deadline)
    assert _value(accepted) >= start + n, f"accepted events in Prometheus: {accepted}, want >= {start + n}"
    per_type = await _until(prometheus, 'portrait_events_total{job="portrait",outcome="accepted",event_type="click"}',
                            lambda r: len(r) == 1, deadline)
    assert len(per_type) == 1 and _value(per_type) >= n // 2

    count = await _until(prometheus, count_q, lambda r: _value(r) >= n, deadline)
    assert _value(count) >= n
    buckets = await _until(prometheus, 'portrait_update_latency_seconds_bucket{job="portrait"}',
                           lambda r: any(b["metric"]["le"] == "+Inf" and float(b["value"][1]) >= n for b in r),
                           deadline)
    les = {b["metric"]["le"] for b in buckets}
    assert "+Inf" in les and len(les) > 10, les  # the whole histogram, not just a sum
    assert next(float(b["value"][1]) for b in buckets if b["metric"]["le"] == "+Inf") >= n


async def test_every_metric_the_dashboard_queries_has_a_series_on_a_fresh_server(
        redis_url: str, tmp_path: Path) -> None:
    """A server that has seen no event and no call: Grafana must still find every metric it queries.

    Labelled counters whose label values are known (outcomes, reasons, models, labels, queues) are
    exported at 0 from the start; a counter born on first use would be "No data" on the dashboard.
    """
    names = sorted({n for _, expr in dashboard_exprs() for n in promql_metric_names(expr)})
    assert len(names) > 10, names
    srv = ServerProcess(tmp_path / "data", redis_url)
    try:
        await asyncio.to_thread(srv.wait_serving)
        with running_prometheus(srv.metrics_port, tmp_path) as base:
            deadline = time.monotonic() + DEADLINE_S
            up = await _until(base, 'up{job="portrait"}', lambda r: _value(r) == 1.0, deadline)
            assert _value(up) == 1.0, f"Prometheus does not see the fresh server up: {up}"
            empty = []
            for name in names:
                res = await asyncio.to_thread(_query, base, f'{name}{{job="portrait"}}')
                if not res:
                    empty.append(name)
            assert not empty, f"metrics the dashboard queries with no series on a fresh server: {empty}"
            accepted = await asyncio.to_thread(
                _query, base, 'portrait_events_total{job="portrait",outcome="accepted"}')
            assert accepted and all(float(r["value"][1]) == 0.0 for r in accepted)  # fresh: zeros, not absent
    finally:
        srv.terminate()
