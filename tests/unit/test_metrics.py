"""server/metrics.py: names follow Prometheus conventions, and every series whose label values are known is
exported from the start, so that a fresh server's dashboards show 0 instead of "No data"."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from server.metrics import OUTCOMES, REJECT_REASONS, STAGES, Metrics
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "portrait.json"


def _fresh() -> CollectorRegistry:
    m = Metrics(CollectorRegistry())
    m.export_segments(8)  # what the partition worker does for its k
    m.export_rpcs([("unary", "portrait.v1.ProfileService", "Track"),
                   ("client_stream", "portrait.v1.ProfileService", "TrackStream")])
    return m.registry


def test_every_metric_has_a_series_from_the_start() -> None:
    empty = [f.name for f in _fresh().collect() if not f.samples]
    assert empty == []
    assert Metrics(CollectorRegistry()).registry.get_sample_value(
        "portrait_rejected_total", {"reason": "stream_idle"}) == 0.0


def test_every_metric_the_dashboard_queries_exists_on_a_fresh_registry() -> None:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    queried = {n for e in exprs for n in re.findall(r"\b(?:portrait|grpc_server)_[a-z_]+", e)}
    assert len(queried) >= 15
    samples = {s.name for f in _fresh().collect() for s in f.samples}
    assert sorted(queried - samples) == []


def test_label_values_used_in_the_code_are_the_known_ones() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "server").rglob("*.py") if "_gen" not in p.parts)
    assert set(re.findall(r'reason="([a-z_]+)"', code)) == set(REJECT_REASONS)
    assert set(re.findall(r'outcome="([a-z_]+)"', code)) <= set(OUTCOMES)
    assert set(re.findall(r'stage="([a-z_]+)"', code)) <= set(STAGES)


def test_the_versioned_models_are_the_trainers() -> None:
    from server.metrics import VERSIONED_MODELS
    from server.models.trainer import VERSIONED, Trainer, TrainerConfig

    assert VERSIONED_MODELS == VERSIONED
    assert set(Trainer(TrainerConfig()).versions) == set(VERSIONED_MODELS)
