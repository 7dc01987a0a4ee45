"""The Ray deploy samples: ``deploy/compose.ray.yaml`` (a Ray head + worker nodes) and ``deploy/k8s-ray/`` (a
KubeRay RayCluster), issue #16. No Docker engine or Kubernetes here: the files are validated by the Compose CLIs
and ``kubectl kustomize`` where installed, and their settings checked against what the server needs (every Ray
node runs Portrait's image and mounts the shared data dir, the workers' CPUs fit the nodes', the front end joins
without CPUs). The same shape runs for real on one machine in ``tests/integration/cluster/test_ray_workers.py``
(a local Ray)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.integration.test_deploy import COMPOSE, DEPLOY, PORTRAIT_ENV_KEYS, ROOT, _compose_commands, load_yaml

COMPOSE_RAY = DEPLOY / "compose.ray.yaml"
K8S_RAY = DEPLOY / "k8s-ray"


def _locked_ray() -> str:
    lock = (ROOT / "uv.lock").read_text()
    m = re.search(r'\[\[package\]\]\nname = "ray"\nversion = "([^"]+)"', lock)
    assert m, "ray is not in uv.lock"
    return m.group(1)


def _merged() -> dict[str, Any]:
    """compose.yaml with compose.ray.yaml over it, as Compose merges services (maps merged, the rest replaced)."""
    base, over = load_yaml(COMPOSE), load_yaml(COMPOSE_RAY)
    services = dict(base["services"])
    for name, svc in over["services"].items():
        merged = dict(services.get(name, {}))
        for k, v in svc.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        services[name] = merged
    return services


def _flag(cmd: list[str], name: str) -> str | None:
    for part in cmd:
        if part == name:
            return ""
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
    return None


@pytest.mark.skipif(not _compose_commands(), reason="no Compose CLI (docker compose v2 or Debian's docker-compose)")
def test_compose_clis_validate_the_ray_override() -> None:
    for cmd in _compose_commands():
        r = subprocess.run([*cmd, "-f", str(COMPOSE), "-f", str(COMPOSE_RAY), "config", "-q"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"


def test_compose_ray_nodes_run_portraits_image_and_share_the_data_dir() -> None:
    services = _merged()
    nodes = {n: s for n, s in services.items() if n.startswith("ray-")}
    assert "ray-head" in nodes and len(nodes) >= 2
    image = services["portrait"]["image"]
    for name, svc in nodes.items():
        assert svc["image"] == image, f"{name}: the workers import the server package: Portrait's image"
        assert "portrait-data:/data" in svc["volumes"], f"{name}: workers keep their state in the shared /data"
        assert svc["environment"]["RAY_USAGE_STATS_ENABLED"] == "0"
        cmd = svc["command"]
        assert cmd[:2] == ["ray", "start"] and "--block" in cmd and _flag(cmd, "--disable-usage-stats") == ""
    head = nodes["ray-head"]["command"]
    assert _flag(head, "--head") == "" and _flag(head, "--num-cpus") == "0"
    assert _flag(head, "--include-dashboard") == "false"
    port = _flag(head, "--port")
    for name, svc in nodes.items():
        if name != "ray-head":
            assert _flag(svc["command"], "--address") == f"ray-head:{port}"
            assert svc["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_compose_front_end_joins_without_cpus_and_the_workers_fit_the_nodes() -> None:
    services = _merged()
    portrait = services["portrait"]
    env = portrait["environment"]
    assert {k for k in env if k.startswith("PORTRAIT_")} <= PORTRAIT_ENV_KEYS
    assert env["PORTRAIT_RAY_ADDRESS"] == "auto"
    shell = portrait["command"]
    assert shell[:2] == ["sh", "-c"]
    join, serve = shell[2].split("&&")
    join_cmd = shlex.split(join)
    assert join_cmd[:2] == ["ray", "start"] and _flag(join_cmd, "--num-cpus") == "0"
    assert _flag(join_cmd, "--address") == _flag(services["ray-worker-1"]["command"], "--address")
    assert shlex.split(serve) == ["exec", "portrait", "serve"]
    offered = sum(float(_flag(s["command"], "--num-cpus") or 0) for n, s in services.items() if n.startswith("ray-"))
    wanted = int(env["PORTRAIT_WORKERS"]) * float(env["PORTRAIT_WORKER_CPUS"])
    assert wanted <= offered, f"{wanted} CPUs asked by the workers, the nodes offer {offered}"
    assert int(env["PORTRAIT_WORKERS"]) > 1


# ------------------------------------------------------------------------------------------- k8s


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    kust = load_yaml(K8S_RAY / "kustomization.yaml")
    for res in kust["resources"]:
        path = K8S_RAY / res
        if path.is_file():
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_raycluster_pins_the_locked_ray_and_runs_portraits_image() -> None:
    rc = next(d for d in _k8s_docs() if d["kind"] == "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["rayVersion"] == _locked_ray()
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["include-dashboard"] == "false"
    groups = [head["template"], *(g["template"] for g in rc["spec"]["workerGroupSpecs"])]
    for tpl in groups:
        (container,) = tpl["spec"]["containers"]
        assert container["image"].split(":")[0] == "portrait"
        assert {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"} in container["env"]
        assert {"name": "shared-data", "mountPath": "/data"} in container["volumeMounts"]
        assert tpl["spec"]["volumes"] == [{"name": "shared-data",
                                           "persistentVolumeClaim": {"claimName": "portrait-shared-data"}}]
    pvc = next(d for d in _k8s_docs() if d["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "portrait-shared-data" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_front_end_patch_joins_the_head_service_and_the_workers_fit() -> None:
    rc = next(d for d in _k8s_docs() if d["kind"] == "RayCluster")
    ops = {op["path"]: op for op in load_yaml(K8S_RAY / "frontend-patch.yaml")}
    script = ops["/spec/template/spec/containers/0/args"]["value"][0]
    join, serve = script.split("&&")
    # KubeRay names the head's service <cluster>-head-svc
    assert _flag(shlex.split(join), "--address") == f"{rc['metadata']['name']}-head-svc:6379"
    assert _flag(shlex.split(join), "--num-cpus") == "0" and shlex.split(serve) == ["exec", "portrait", "serve"]
    env = {e["name"]: e["value"] for e in ops["/spec/template/spec/containers/0/env"]["value"]}
    assert {k for k in env if k.startswith("PORTRAIT_")} <= PORTRAIT_ENV_KEYS
    offered = sum(float(g["rayStartParams"]["num-cpus"]) * g["minReplicas"] for g in rc["spec"]["workerGroupSpecs"])
    assert int(env["PORTRAIT_WORKERS"]) * float(env["PORTRAIT_WORKER_CPUS"]) <= offered


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_ray_overlay() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S_RAY)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "portrait-shared-data"
    assert {d["kind"] for d in docs} >= {"RayCluster", "PersistentVolumeClaim", "StatefulSet", "ConfigMap"}
