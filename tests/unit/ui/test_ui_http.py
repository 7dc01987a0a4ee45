"""Who may see the explorer: the bind rules (reusing gRPC's policy) and the key decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.api.security import ApiKeys, SecurityConfigError, access_policy, key_digest
from server.config import Settings
from server.ui.http import _cookie_key, check_ui_policy, decide


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type]


def _keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"read:{key_digest('r')}\nadmin:{key_digest('a')}\ningest:{key_digest('i')}\n")
    return path


def test_loopback_without_keys_is_open_like_grpc() -> None:
    s = _settings(bind="127.0.0.1")
    check_ui_policy(s, access_policy(s))


def test_a_public_bind_without_keys_never_serves_an_open_page(tmp_path: Path) -> None:
    s = _settings(bind="0.0.0.0", allow_insecure=True)  # gRPC accepts it (a mesh); the explorer does not
    policy = access_policy(s)
    with pytest.raises(SecurityConfigError, match=r"explorer.*PORTRAIT_API_KEYS.*PORTRAIT_UI_PORT=0"):
        check_ui_policy(s, policy)
    check_ui_policy(_settings(bind="0.0.0.0", allow_insecure=True, ui_port=0), policy)  # explorer off
    keyed = _settings(bind="0.0.0.0", allow_insecure=True, api_keys=_keys(tmp_path))
    check_ui_policy(keyed, access_policy(keyed))


def test_a_public_bind_without_tls_is_refused_by_the_shared_policy_first() -> None:
    with pytest.raises(SecurityConfigError, match="plaintext"):
        access_policy(_settings(bind="0.0.0.0"))


def test_keys_decide_by_role(tmp_path: Path) -> None:
    keys = ApiKeys.load(_keys(tmp_path))
    assert decide(keys, "Bearer r", "").status == 200
    assert decide(keys, "bearer a", "").status == 200  # admin may read too
    assert decide(keys, "", "r").via_cookie
    assert decide(keys, "Bearer i", "").status == 403
    assert decide(keys, "Bearer wrong", "r").status == 401  # the header wins over the cookie
    assert decide(keys, "Basic cjpy", "").status == 401
    assert decide(keys, "", "").status == 401
    assert decide(None, "", "").status == 200


def test_the_cookie_holds_the_key_percent_encoded() -> None:
    assert _cookie_key("a=b; portrait_key=k%3By%20z") == "k;y z"
    assert _cookie_key("other=1") == "" and _cookie_key(None) == "" and _cookie_key('portrait_key="') in ("", '"')
