"""The real process: `portrait serve` on its embedded Redis, the CLI against it, plain Feast from
another process, and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, uid, wait_serving

PORTRAIT = [sys.executable, "-m", "server"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    wait_serving(f"127.0.0.1:{port}", proc, timeout_s)


def test_serve_embedded_cli_other_process_feast_and_sigterm(tmp_path: Path) -> None:
    port, redis_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    env.update(PORTRAIT_GRPC_PORT=str(port), PORTRAIT_METRICS_PORT="0", PORTRAIT_DATA_DIR=str(tmp_path / "var"),
               PORTRAIT_EMBEDDED_REDIS_PORT=str(redis_port), PORTRAIT_UI_PORT="0")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*PORTRAIT, "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_serving(port, proc)
        target = ["--target", f"127.0.0.1:{port}"]
        user = uid()
        sent = subprocess.run([*PORTRAIT, "send", user, "purchase", "--price", "12.5", "--category", "toys",
                               "--wait-visible", *target], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert "version=1" in sent.stdout
        bad = subprocess.run([*PORTRAIT, "send", user, "view", "--price", "-1", *target], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "price" in bad.stderr
        shown = subprocess.run([*PORTRAIT, "profile", user, *target], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        prof = json.loads(shown.stdout)
        assert prof["version"] == "1" and prof["features"]["lifetime_spend"] == 12.5
        assert prof["top_categories"] == ["toys"]

        # Another service reads with plain Feast, configured only by the three documented variables.
        reader = (
            "from feast import FeatureStore; import sys; s = FeatureStore(repo_path='feature_repo'); "
            "r = s.get_online_features(features=s.get_feature_service('user_profile_v1'), "
            f"entity_rows=[{{'user_id': '{user}'}}]).to_dict(); print(r['lifetime_spend'][0], r['profile_version'][0])"
        )
        feast_env = dict(env, PORTRAIT_FEAST_REDIS=f"127.0.0.1:{redis_port},db=0", PORTRAIT_FEAST_REDIS_TYPE="redis")
        other = subprocess.run([sys.executable, "-c", reader], cwd=ROOT, env=feast_env, capture_output=True,
                               text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        assert other.stdout.split() == ["12.5", "1"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "embedded Redis" in text and "stopped" in text
    pidfile = tmp_path / "var" / "redis" / "redis.pid"
    assert not pidfile.exists() or not _alive(pidfile)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True
