"""The Redis Cluster samples under deploy/: ``compose.cluster.yaml`` and ``k8s/redis-cluster/`` (issue #16).

No Docker engine, no Kubernetes: the Compose CLIs found validate the combined files (and the merge they
compute), the manifests are checked as YAML, and -- the part that matters -- the redis-server command line
and the cluster-init command are taken from the manifests and run for real on loopback: six nodes with
free ports (host names, ports, ``--dir`` and the announced host name substituted, every other flag kept),
the init script joined them into 3 masters + 3 replicas, ``cluster_state:ok`` with 16384 slots; a second
run of the init changes nothing; a half-fresh set of nodes is refused. ``kubectl kustomize`` when on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
import yaml

from server.store.embedded_redis import die_with_parent
from tests.conftest import cluster_info, free_port, wait_redis
from tests.integration.test_deploy import (
    COMPOSE,
    DEPLOY,
    PORTRAIT_ENV_KEYS,
    _compose_commands,
    image_tag,
    k8s_docs,
    load_yaml,
    parse_quantity,
)

COMPOSE_CLUSTER = DEPLOY / "compose.cluster.yaml"
K8S_CLUSTER = DEPLOY / "k8s" / "redis-cluster"
SLOTS = 16384
INIT_TIMEOUT_S = 120.0


def _loopback_name() -> str:
    """A host name resolving to loopback for the nodes to announce: the machine's own name when it does
    (redis-py turns "localhost" into 127.0.0.1 before dialling, which would hide whether names are followed),
    else "localhost"."""
    name = socket.gethostname()
    try:
        if name != "localhost" and socket.gethostbyname(name).startswith("127."):
            return name
    except OSError:
        pass
    return "localhost"


ANNOUNCE = _loopback_name()
# Settings the server reads, plus the one it derives and exports for Feast (other Feast clients need it set).
ENV_OK = PORTRAIT_ENV_KEYS | {"PORTRAIT_FEAST_REDIS_TYPE"}


# ----------------------------------------------------------------------------- helpers


def opt(argv: list[str], name: str) -> str:
    """The value after ``name`` in a redis-server argv (exactly one occurrence)."""
    idx = [i for i, a in enumerate(argv) if a == name]
    assert len(idx) == 1, f"{name} expected once in {argv}"
    assert idx[0] + 1 < len(argv), f"{name} has no value in {argv}"
    return argv[idx[0] + 1]


def compose_docs() -> tuple[dict[str, Any], dict[str, Any]]:
    return load_yaml(COMPOSE), load_yaml(COMPOSE_CLUSTER)


def is_cluster_node(argv: Any) -> bool:
    return isinstance(argv, list) and "--cluster-enabled" in argv and opt(argv, "--cluster-enabled") == "yes"


def compose_nodes(override: dict[str, Any]) -> dict[str, list[str]]:
    """Cluster-node services of the override: service name -> redis-server argv."""
    return {name: svc["command"] for name, svc in override["services"].items() if is_cluster_node(svc.get("command"))}


def compose_init(override: dict[str, Any]) -> dict[str, Any]:
    inits = [svc for svc in override["services"].values()
             if "REDIS_NODES" in (svc.get("environment") or {})]
    assert len(inits) == 1, "exactly one init service (the one given REDIS_NODES) expected"
    return inits[0]


def k8s_cluster_docs() -> list[dict[str, Any]]:
    return k8s_docs(K8S_CLUSTER)


def k8s_one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_cluster_docs()
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def only_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec["containers"]
    assert len(containers) == 1
    return containers[0]


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """Literal env values (valueFrom entries map to '')."""
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def generated_configmap_files() -> dict[str, Path]:
    """configMapGenerator name -> the single file it packs (the init script)."""
    kust = load_yaml(K8S_CLUSTER / "kustomization.yaml")
    out = {}
    for gen in kust.get("configMapGenerator", []):
        assert len(gen["files"]) == 1, gen
        out[gen["name"]] = K8S_CLUSTER / gen["files"][0]
    return out


def assert_pinned(ref: str) -> None:
    tag = image_tag(ref)
    assert tag and tag != "latest" and "latest" not in tag.split("-"), f"{ref!r} is not pinned"


def split_nodes(value: str) -> list[tuple[str, int]]:
    out = []
    for entry in value.split():
        host, _, port = entry.rpartition(":")
        assert host and port.isdigit(), f"bad REDIS_NODES entry {entry!r}"
        out.append((host, int(port)))
    return out


# ------------------------------------------------------------------- the manifests as runnable plans


@dataclass
class Plan:
    """What a manifest runs: the nodes (their DNS names -> redis-server argv) and the init command."""

    nodes: dict[str, list[str]]  # host name the init dials -> argv (argv[0] = redis-server)
    init_argv: list[str]  # with the script's container path mapped to the repo file
    init_env: dict[str, str]
    probes: list[list[str]]  # health/probe commands, run with sh -c when a string


def compose_plan() -> Plan:
    _, override = compose_docs()
    init = compose_init(override)
    argv = list(init.get("entrypoint") or []) + list(init.get("command") or [])
    mounts = {}
    for v in init.get("volumes", []):
        src, dst = v.split(":")[:2]
        mounts[dst] = (DEPLOY / src).resolve()
    argv = [str(mounts.get(a, a)) for a in argv]
    probes = []
    for svc in override["services"].values():
        if is_cluster_node(svc.get("command")):
            test = svc["healthcheck"]["test"]
            probes.append(["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:])
    return Plan(compose_nodes(override), argv, {k: str(v) for k, v in init["environment"].items()}, probes)


def k8s_plan() -> Plan:
    sts = k8s_one("StatefulSet")
    c = only_container(sts["spec"]["template"]["spec"])
    argv = [*c["command"], *c["args"]]
    pods = {f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}": argv
            for i in range(sts["spec"]["replicas"])}
    job = k8s_one("Job")
    jc = only_container(job["spec"]["template"]["spec"])
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    files = generated_configmap_files()
    mounts: dict[str, Path] = {}
    for vm in jc["volumeMounts"]:
        cm = volumes[vm["name"]]["configMap"]["name"]
        script = files[cm]
        mounts[f"{vm['mountPath'].rstrip('/')}/{script.name}"] = script
    init_argv = [str(mounts.get(a, a)) for a in [*jc["command"], *jc.get("args", [])]]
    probes = [c[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c]
    return Plan(pods, init_argv, k8s_env(jc), probes)


PLANS: dict[str, Callable[[], Plan]] = {"compose": compose_plan, "k8s": k8s_plan}


# ---------------------------------------------------------------------------- local nodes


@dataclass
class LocalNode:
    name: str  # the host name the manifest gives it
    argv: list[str]  # localized
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    source: list[str] = field(default_factory=list)  # the manifest's argv (before localize)

    @property
    def addr(self) -> str:
        return f"localhost:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)


def localize(argv: list[str], port: int, bus_port: int, data_dir: Path) -> list[str]:
    """A manifest's redis-server argv for loopback: its port, bus port, dir and announced host name replaced,
    listening on 127.0.0.1 only, in the foreground, logging to a file; every other flag kept as written."""
    server = shutil.which("redis-server")
    assert server
    assert Path(argv[0]).name == "redis-server", argv
    for flag in ("--bind", "--daemonize", "--logfile"):  # appended below: must not be set (and lost) here
        assert flag not in argv, f"{flag} in the manifest: the local run would override it"
    subst = {"--port": str(port), "--cluster-port": str(bus_port), "--dir": str(data_dir),
             "--cluster-announce-hostname": ANNOUNCE}
    for flag in subst:
        opt(argv, flag)  # present exactly once, or the node would run with the container's value
    out = [server]
    args = argv[1:]
    i = 0
    while i < len(args):
        if args[i] in subst:
            out += [args[i], subst[args[i]]]
            i += 2
        else:
            out.append(args[i])
            i += 1
    return [*out, "--bind", "127.0.0.1", "--daemonize", "no", "--logfile", str(data_dir / "redis.log")]


class NodeExited(AssertionError):
    """A local redis-server exited while we waited for it to answer."""


def _answering(n: LocalNode) -> bool:
    if n.proc is None or n.proc.poll() is not None:
        raise NodeExited(f"redis-server {n.name} on {n.port} exited (see {n.dir / 'redis.log'})")
    return bool(n.client().ping())


@dataclass
class LocalCluster:
    plan: Plan
    nodes: list[LocalNode] = field(default_factory=list)
    extra: list[LocalNode] = field(default_factory=list)
    first_init: subprocess.CompletedProcess[str] | None = None

    def start_node(self, name: str, argv: list[str], root: Path) -> LocalNode:
        d = root / re.sub(r"[^\w.-]", "_", name)
        d.mkdir(exist_ok=True)
        port = free_port()
        node = LocalNode(name, localize(argv, port, free_port(), d), port, d, source=argv)
        node.proc = subprocess.Popen(node.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        return node

    def wait_answering(self, nodes: list[LocalNode], tries: int = 5) -> None:
        """Wait until every node answers PING. A node that exited because its port was taken between
        ``free_port()`` and its bind (an outgoing connection can get the same ephemeral port; met in CI:
        "bind: Address already in use") is started again on other ports, up to ``tries`` times."""
        for n in nodes:
            for _ in range(tries):
                try:
                    wait_redis(lambda n=n: _answering(n), f"redis-server {n.name} on {n.port}")
                    break
                except NodeExited:
                    log = n.dir / "redis.log"
                    if "Address already in use" not in (log.read_text(errors="replace") if log.exists() else ""):
                        raise
                    log.unlink()
                    fresh = self.start_node(n.name, n.source, n.dir.parent)
                    n.argv, n.port, n.proc = fresh.argv, fresh.port, fresh.proc
            else:
                raise AssertionError(f"redis-server {n.name}: its port was taken {tries} times")

    def init_env(self, nodes: list[LocalNode] | None = None) -> dict[str, str]:
        """The manifest's env, REDIS_NODES mapped host by host to the local nodes (order kept)."""
        if nodes is None:
            by_name = {n.name: n for n in self.nodes}
            mapped = []
            for host, port in split_nodes(self.plan.init_env["REDIS_NODES"]):
                assert host in by_name, f"REDIS_NODES names {host!r}, which is not a node of the manifest"
                assert port == int(opt(self.plan.nodes[host], "--port")), f"{host}:{port}: not the node's --port"
                mapped.append(by_name[host].addr)
        else:
            mapped = [n.addr for n in nodes]
        return {**{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
                **self.plan.init_env, "REDIS_NODES": " ".join(mapped)}

    def run_init(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """The manifest's init command, in a session of its own (killed whole on a timeout)."""
        proc = subprocess.Popen(self.plan.init_argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=INIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            raise AssertionError(f"init did not finish in {INIT_TIMEOUT_S}s: {out}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def stop(self) -> None:
        procs = [n.proc for n in [*self.nodes, *self.extra] if n.proc is not None]
        for p in procs:  # by pid: only the ones started here
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def topology(node: LocalNode) -> frozenset[tuple[str, str, str, str]]:
    """(node id, role, master id, slots) of every node, from CLUSTER NODES as ``node`` sees it."""
    r = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-h", "127.0.0.1", "-p", str(node.port),
                        "cluster", "nodes"], capture_output=True, text=True, timeout=30, check=True)
    out = set()
    for line in r.stdout.strip().splitlines():
        parts = line.split()
        role = "master" if "master" in parts[2].split(",") else "replica"
        out.add((parts[0], role, parts[3], " ".join(parts[8:])))
    return frozenset(out)


def agreed_topology(nodes: list[LocalNode]) -> frozenset[tuple[str, str, str, str]]:
    """The topology once every node sees the same one (gossip spreads a replica's role within seconds)."""
    views: list[frozenset[tuple[str, str, str, str]]] = []

    def agree() -> bool:
        views[:] = [topology(n) for n in nodes]
        return len(set(views)) == 1

    wait_redis(agree, "every node to see the same cluster topology")
    return views[0]


def require_redis() -> None:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server and redis-cli are needed to run the manifests' commands (apt install redis-server)")


@pytest.fixture(scope="module", params=sorted(PLANS))
def local_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The nodes of one manifest (compose or k8s) on loopback, joined by that manifest's init command."""
    require_redis()
    plan = PLANS[request.param]()
    root = tmp_path_factory.mktemp(f"redis-cluster-{request.param}")
    lc = LocalCluster(plan)
    try:
        lc.nodes = [lc.start_node(name, argv, root) for name, argv in plan.nodes.items()]
        lc.wait_answering(lc.nodes)
        lc.first_init = lc.run_init(lc.init_env())
        yield lc
    finally:
        lc.stop()


# -------------------------------------------------------------------------------- compose


@pytest.mark.skipif(not _compose_commands(), reason="no Compose CLI: neither the `docker compose` v2 plugin nor "
                                                     "`docker-compose` (Debian package docker-compose) is installed")
def test_compose_clis_validate_and_merge_the_override() -> None:
    for cmd in _compose_commands():
        files = [*cmd, "-f", str(COMPOSE), "-f", str(COMPOSE_CLUSTER)]
        r = subprocess.run([*files, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=DEPLOY.parent)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        # the merge as the CLI computes it: portrait waits for the init; node 0 mounts its cluster volume only
        r = subprocess.run([*files, "config"], capture_output=True, text=True, timeout=60, cwd=DEPLOY.parent)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        merged = yaml.safe_load(r.stdout)["services"]
        portrait = merged["portrait"]
        assert portrait["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
        env = portrait["environment"]
        assert str(env["PORTRAIT_REDIS_CLUSTER"]).lower() == "true"
        assert env["PORTRAIT_REDIS_URL"] == "redis://redis:6379/0"
        sources = [v.split(":")[0] if isinstance(v, str) else v["source"] for v in merged["redis"]["volumes"]]
        assert sources == ["redis-cluster-0"], f"{' '.join(cmd)}: node 0 mounts {sources}"
        assert is_cluster_node(merged["redis"]["command"])


def test_compose_override_is_validatable_by_compose_1_29() -> None:
    _, override = compose_docs()
    assert "name" not in override and "version" not in override, "no top-level name:/version: (compose 1.29)"
    assert set(override) <= {"services", "volumes", "x-redis-node"}


def test_compose_cluster_nodes() -> None:
    base, override = compose_docs()
    nodes = compose_nodes(override)
    assert len(nodes) == 6, f"3 masters + 3 replicas expected, nodes: {sorted(nodes)}"
    assert "redis" in nodes, "the base file's `redis` (portrait's base dependency) must be a cluster node"
    declared = set(override.get("volumes") or {})
    used = []
    for name, argv in nodes.items():
        svc = override["services"][name]
        image = svc.get("image", base["services"].get(name, {}).get("image"))
        assert image == base["services"]["redis"]["image"], f"{name}: {image} (same pinned image as the base)"
        assert_pinned(image)
        assert argv[0] == "redis-server"
        assert opt(argv, "--appendonly") == "yes", f"{name}: AOF off"
        assert opt(argv, "--appendfsync") in ("everysec", "always"), name
        assert opt(argv, "--cluster-announce-hostname") == name, f"{name} must announce its service name"
        assert opt(argv, "--cluster-preferred-endpoint-type") == "hostname", name
        assert "/" not in opt(argv, "--cluster-config-file"), f"{name}: nodes.conf must live in --dir (the volume)"
        data = opt(argv, "--dir")
        mounts = [v.split(":") for v in svc["volumes"]]
        vol = [m[0] for m in mounts if m[1] == data]
        assert len(vol) == 1 and vol[0] in declared, f"{name}: --dir {data} is not on a declared volume"
        used.append(vol[0])
        assert "ports" not in svc, f"{name}: publishes a port (the host cannot follow announced names)"
        assert svc["restart"] == "unless-stopped"
    assert len(set(used)) == len(used), "two nodes share a volume"
    assert "redis-data" not in used, "a standalone Redis' data cannot join a cluster"


def test_compose_init_service() -> None:
    _, override = compose_docs()
    nodes = compose_nodes(override)
    init = compose_init(override)
    assert_pinned(init["image"])
    assert str(init.get("restart", "no")) == "no", "one-shot: it must not restart"
    assert init.get("user") not in (None, "root", "0") and not str(init["user"]).startswith("0:")
    listed = split_nodes(init["environment"]["REDIS_NODES"])
    assert {h for h, _ in listed} == set(nodes), "REDIS_NODES must list every node, and only nodes"
    for host, port in listed:
        assert port == int(opt(nodes[host], "--port")), host
    replicas = int(init["environment"]["REDIS_CLUSTER_REPLICAS"])
    assert len(nodes) // (replicas + 1) == 3 and len(nodes) % (replicas + 1) == 0, "3 masters expected"
    deps = init["depends_on"]
    assert set(deps) == set(nodes)
    for v in init["volumes"]:
        src = v.split(":")[0]
        assert (DEPLOY / src).is_file(), f"mounted script {src} missing"
        assert v.endswith(":ro")


def test_compose_portrait_points_at_the_cluster() -> None:
    _, override = compose_docs()
    nodes = compose_nodes(override)
    init_name = next(n for n, s in override["services"].items() if s is compose_init(override))
    portrait = override["services"]["portrait"]
    env = portrait["environment"]
    assert set(env) <= ENV_OK, f"unknown settings: {set(env) - ENV_OK}"
    assert env["PORTRAIT_REDIS_CLUSTER"] == "true"
    assert env["PORTRAIT_FEAST_REDIS_TYPE"] == "redis_cluster"
    url = urlparse(env["PORTRAIT_REDIS_URL"])
    assert url.scheme == "redis" and url.hostname in nodes
    assert url.port == int(opt(nodes[url.hostname], "--port"))
    assert url.path in ("", "/", "/0"), "a Redis Cluster has database 0 only"
    assert portrait["depends_on"][init_name]["condition"] == "service_completed_successfully"


# ----------------------------------------------------------------------------- Kubernetes


def test_k8s_resources_listed() -> None:
    kust = load_yaml(K8S_CLUSTER / "kustomization.yaml")
    on_disk = {p.name for p in K8S_CLUSTER.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk, "every manifest must be listed in kustomization.yaml"
    assert sorted(d["kind"] for d in k8s_cluster_docs()) == ["Job", "Service", "Service", "StatefulSet"]
    assert all(p.is_file() for p in generated_configmap_files().values())
    # the main kustomization still deploys no Redis
    main = load_yaml(DEPLOY / "k8s" / "kustomization.yaml")["resources"]
    assert not any("redis" in r for r in main)


def test_k8s_statefulset_runs_cluster_nodes_with_aof_on_pvcs() -> None:
    sts = k8s_one("StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 6
    headless = k8s_one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"].get("publishNotReadyAddresses") is True, "the init Job dials pods before readiness"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    c = only_container(spec["template"]["spec"])
    assert_pinned(c["image"])
    argv = [*c["command"], *c["args"]]
    assert argv[0] == "redis-server"
    assert opt(argv, "--cluster-enabled") == "yes"
    assert opt(argv, "--appendonly") == "yes"
    assert "/" not in opt(argv, "--cluster-config-file"), "nodes.conf must live in --dir (the PVC)"
    assert opt(argv, "--cluster-preferred-endpoint-type") == "hostname"
    own_name = f"$(POD_NAME).{spec['serviceName']}.$(POD_NAMESPACE)."
    assert opt(argv, "--cluster-announce-hostname").startswith(own_name), \
        "each pod must announce its own stable DNS name on the headless Service"
    env_names = {e["name"] for e in c["env"]}
    missing = set(re.findall(r"\$\((\w+)\)", " ".join(argv))) - env_names
    assert not missing, f"args reference undefined env vars: {missing}"
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    data = [vm for vm in c["volumeMounts"] if vm["mountPath"] == opt(argv, "--dir")]
    assert len(data) == 1 and data[0]["name"] in claims, "--dir must be on a PVC"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["redis"] == int(opt(argv, "--port"))
    assert ports["cluster-bus"] == int(opt(argv, "--cluster-port"))
    svc_ports = {p["name"]: p for p in headless["spec"]["ports"]}
    assert {svc_ports[n]["targetPort"] for n in svc_ports} <= set(ports)


def test_k8s_statefulset_probes_resources_and_security() -> None:
    spec = k8s_one("StatefulSet")["spec"]
    c = only_container(spec["template"]["spec"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in c, f"{probe} missing"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in c:
            assert set(c[probe]) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"exec"}
            assert "redis-cli" in " ".join(c[probe]["exec"]["command"]) and "ping" in c[probe]["exec"]["command"][-1]
    res = c["resources"]
    for kind in ("cpu", "memory"):
        req, lim = parse_quantity(res["requests"][kind]), parse_quantity(res["limits"][kind])
        assert 0 < req <= lim, f"{kind}: request {req} > limit {lim}"
    pod = spec["template"]["spec"]["securityContext"]
    sc = c["securityContext"]
    assert pod.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True
    assert pod.get("runAsUser", sc.get("runAsUser")) not in (None, 0)
    assert pod.get("fsGroup") not in (None, 0), "the PVC must be writable by the non-root user"
    assert sc["allowPrivilegeEscalation"] is False and "ALL" in sc["capabilities"]["drop"]


def test_k8s_job_creates_the_cluster_from_every_pod() -> None:
    sts = k8s_one("StatefulSet")
    job = k8s_one("Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    c = only_container(pod)
    assert_pinned(c["image"])
    assert c["image"] == only_container(sts["spec"]["template"]["spec"])["image"], "redis-cli of the same version"
    env = k8s_env(c)
    argv = [*c["command"], *c["args"]] if "args" in c else c["command"]
    sts_argv = [*only_container(sts["spec"]["template"]["spec"])["command"],
                *only_container(sts["spec"]["template"]["spec"])["args"]]
    want = [(f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}", int(opt(sts_argv, "--port")))
            for i in range(sts["spec"]["replicas"])]
    assert split_nodes(env["REDIS_NODES"]) == want
    replicas = int(env["REDIS_CLUSTER_REPLICAS"])
    assert len(want) // (replicas + 1) == 3 and len(want) % (replicas + 1) == 0, "3 masters expected"
    # the script the Job runs is the generated ConfigMap's file
    plan = k8s_plan()
    assert plan.init_argv[0] == "sh" and Path(plan.init_argv[1]).is_file(), argv
    sc = pod.get("securityContext", {})
    assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") not in (None, 0)


def test_k8s_client_service_seeds_the_cluster() -> None:
    sts = k8s_one("StatefulSet")
    seeds = [s for s in k8s_cluster_docs() if s["kind"] == "Service" and s["spec"].get("clusterIP") != "None"]
    assert len(seeds) == 1
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert seeds[0]["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["targetPort"]) for p in seeds[0]["spec"]["ports"]] == [(6379, "redis")]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kubectl_kustomize_builds() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S_CLUSTER)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job", "Service", "Service", "StatefulSet"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "Job")
    names = [v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert names == [cm["metadata"]["name"]], "the Job mounts the generated ConfigMap"
    assert cm["data"]["cluster-init.sh"] == (K8S_CLUSTER / "cluster-init.sh").read_text()
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "portrait"


# --------------------------------------------------------- the manifests' commands, run on loopback


def test_init_creates_a_healthy_cluster_of_3_masters_and_3_replicas(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    assert lc.first_init is not None
    assert lc.first_init.returncode == 0, lc.first_init.stdout
    assert "creating a cluster of 6 nodes" in lc.first_init.stdout
    for n in lc.nodes:
        info = cluster_info(n.client().execute_command("CLUSTER INFO"))
        assert info["cluster_state"] == "ok", (n.name, info)
        assert int(info["cluster_slots_assigned"]) == SLOTS and int(info["cluster_slots_ok"]) == SLOTS
        assert int(info["cluster_known_nodes"]) == 6 and int(info["cluster_size"]) == 3
    roles = [n.client().execute_command("ROLE")[0] for n in lc.nodes]
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
    # the flags kept from the manifest are in effect: AOF on, files in --dir
    for n in lc.nodes:
        assert n.client().config_get("appendonly")["appendonly"] == "yes"
        assert (n.dir / "nodes.conf").is_file()
        assert (n.dir / "appendonlydir").is_dir()


def test_clients_follow_the_announced_host_names(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    slots = lc.nodes[0].client().execute_command("CLUSTER SHARDS")
    endpoints = {node_field(node, "hostname") for shard in slots for node in shard_nodes(shard)}
    assert endpoints == {ANNOUNCE}, endpoints  # the substituted cluster-announce-hostname
    masters = {n.port for n in lc.nodes if n.client().execute_command("ROLE")[0] == "master"}
    with redis.RedisCluster(host="localhost", port=lc.nodes[0].port, socket_timeout=5) as rc:
        keys = [f"k{i}" for i in range(60)]
        for k in keys:
            rc.set(k, k)
        assert [rc.get(k) for k in keys] == [k.encode() for k in keys]
        # redis-py dialled the announced name of every master (redis-py itself resolves "localhost" early)
        dialled = {(n.host, n.port) for n in rc.get_primaries()}
        assert dialled == {(ANNOUNCE if ANNOUNCE != "localhost" else "127.0.0.1", p) for p in masters}


def node_field(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node.get(key, node.get(key.encode()))
    pairs = dict(zip(node[::2], node[1::2], strict=True))
    return pairs.get(key, pairs.get(key.encode()))


def shard_nodes(shard: Any) -> list[Any]:
    if isinstance(shard, dict):
        return list(shard.get("nodes", shard.get(b"nodes")))
    pairs = dict(zip(shard[::2], shard[1::2], strict=True))
    return list(pairs.get("nodes", pairs.get(b"nodes")))


def test_init_run_again_changes_nothing(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    with redis.RedisCluster(host="localhost", port=lc.nodes[0].port, socket_timeout=5) as rc:
        rc.set("before-second-init", "kept")
    before = agreed_topology(lc.nodes)
    assert len(before) == 6
    assert sorted(role for _, role, _, _ in before) == ["master"] * 3 + ["replica"] * 3
    again = lc.run_init(lc.init_env())
    assert again.returncode == 0, again.stdout
    assert "nothing to create" in again.stdout and "creating" not in again.stdout
    assert all(topology(n) == before for n in lc.nodes)  # same ids, roles, masters and slots on every node
    for n in lc.nodes:
        assert cluster_info(n.client().execute_command("CLUSTER INFO"))["cluster_state"] == "ok"
    with redis.RedisCluster(host="localhost", port=lc.nodes[0].port, socket_timeout=5) as rc:
        assert rc.get("before-second-init") == b"kept"


def test_init_refuses_a_mix_of_fresh_and_joined_nodes(local_cluster: LocalCluster, tmp_path: Path) -> None:
    """A node that lost its volume comes back empty: the init must not try to create a second cluster."""
    lc = local_cluster
    fresh = lc.start_node("fresh", next(iter(lc.plan.nodes.values())), tmp_path)
    lc.extra.append(fresh)
    lc.wait_answering([fresh])
    before = agreed_topology(lc.nodes)
    r = lc.run_init(lc.init_env([*lc.nodes[1:], fresh]))
    assert r.returncode == 1, r.stdout
    assert "1 of 6 nodes are empty" in r.stdout
    assert all(topology(n) == before for n in lc.nodes)
    assert int(cluster_info(fresh.client().execute_command("CLUSTER INFO"))["cluster_known_nodes"]) == 1


def test_init_gives_up_when_a_node_never_answers(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    env = lc.init_env()
    env["REDIS_NODES"] = f"{lc.nodes[0].addr} localhost:{free_port()}"
    env["REDIS_CLUSTER_WAIT_S"] = "2"
    t0 = time.monotonic()
    r = lc.run_init(env)
    assert r.returncode == 1, r.stdout
    assert "gave up after 2s waiting for localhost:" in r.stdout
    assert time.monotonic() - t0 < 30


def test_probes_pass_on_a_node_and_fail_without_one(local_cluster: LocalCluster) -> None:
    lc = local_cluster
    assert lc.plan.probes
    node = lc.nodes[0]
    configured = int(opt(lc.plan.nodes[node.name], "--port"))
    for probe in lc.plan.probes:
        pattern = rf"-p\s+{configured}\b"
        assert re.search(pattern, probe[-1]), f"probe {probe} does not dial the node's --port {configured}"
        ok = subprocess.run([*probe[:-1], re.sub(pattern, f"-p {node.port}", probe[-1])],
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        down = subprocess.run([*probe[:-1], re.sub(pattern, f"-p {free_port()}", probe[-1])],
                              capture_output=True, text=True, timeout=30)
        assert down.returncode != 0, f"probe passes with no server: {probe}"


# ------------------------------------------------------------------ deploy/README.md's overlay example


def readme_overlay() -> dict[str, Any]:
    """The kustomization in deploy/README.md's "Redis Cluster" section that points Portrait at the cluster."""
    text = (DEPLOY / "README.md").read_text()
    section = text.split("\n## Redis Cluster\n", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    found = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "Kustomization"]
    assert len(found) == 1, "one overlay example expected in the Redis Cluster section"
    return found[0]


def test_readme_overlay_sets_what_portrait_needs() -> None:
    from server.config import Settings

    overlay = readme_overlay()
    assert [Path(r).name for r in overlay["resources"]] == ["k8s"]
    (patch,) = overlay["patches"]
    assert patch["target"] == {"kind": "ConfigMap", "name": "portrait-config"}
    data = yaml.safe_load(patch["patch"])["data"]
    assert set(data) <= ENV_OK, f"unknown settings: {set(data) - ENV_OK}"
    assert data["PORTRAIT_REDIS_CLUSTER"] == "true" and data["PORTRAIT_FEAST_REDIS_TYPE"] == "redis_cluster"
    seed = next(s for s in k8s_cluster_docs() if s["kind"] == "Service" and s["spec"].get("clusterIP") != "None")
    url = urlparse(data["PORTRAIT_REDIS_URL"])
    assert url.hostname is not None and url.hostname.split(".")[0] == seed["metadata"]["name"]
    assert url.hostname.endswith(".svc.cluster.local") and url.port == seed["spec"]["ports"][0]["port"]
    settings = Settings(_env_file=None, redis_cluster=True, redis_url=data["PORTRAIT_REDIS_URL"],  # type: ignore[call-arg]
                        feast_redis=None)
    assert settings.feast_redis_type() == data["PORTRAIT_FEAST_REDIS_TYPE"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_readme_overlay_builds_on_deploy_k8s(tmp_path: Path) -> None:
    overlay = readme_overlay()
    overlay["resources"] = [os.path.relpath(DEPLOY / "k8s", tmp_path)]  # kustomize refuses absolute roots
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    r = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Service", "Service", "StatefulSet"]
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert data["PORTRAIT_REDIS_CLUSTER"] == "true" and data["PORTRAIT_FEAST_REDIS_TYPE"] == "redis_cluster"
    assert data["PORTRAIT_REDIS_URL"].startswith("redis://redis-cluster.")
    assert data["PORTRAIT_HEALTH_PORT"] == "8081", "the patch must merge into the base ConfigMap, not replace it"
