"""Unit tests of server.config: PORTRAIT_* environment parsing, Redis URL -> Feast connection string,
its precedence, and a description for every setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import Settings, redis_url_to_feast


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PORTRAIT_* variable of the caller's shell (or CI) leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("PORTRAIT_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings(_env_file=None)
    assert (s.grpc_port, s.metrics_port, s.bind, s.redis_url, s.feast_redis) == (50051, 9464, "127.0.0.1", None, None)
    assert s.data_dir == Path("var")
    assert (s.propensity_horizon_s, s.decision_interval_s, s.allowed_lateness_s, s.segments) == (3600, 300, 60, 8)


def test_env_vars_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_GRPC_PORT", "6000")
    monkeypatch.setenv("PORTRAIT_METRICS_PORT", "0")
    monkeypatch.setenv("PORTRAIT_BIND", "0.0.0.0")
    monkeypatch.setenv("PORTRAIT_FLUSH_INTERVAL_S", "0.25")
    monkeypatch.setenv("PORTRAIT_FLUSH_MAX_ROWS", "17")
    monkeypatch.setenv("PORTRAIT_DATA_DIR", "/tmp/portrait-data")
    monkeypatch.setenv("PORTRAIT_REDIS_URL", "redis://cache:6380/1")
    monkeypatch.setenv("PORTRAIT_SEGMENTS", "12")
    monkeypatch.setenv("PORTRAIT_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("GRPC_PORT", "1")  # no prefix: ignored
    s = Settings(_env_file=None)
    assert (s.grpc_port, s.metrics_port, s.bind) == (6000, 0, "0.0.0.0")
    assert (s.flush_interval_s, s.flush_max_rows, s.segments, s.log_level) == (0.25, 17, 12, "DEBUG")
    assert s.data_dir == Path("/tmp/portrait-data")
    assert s.redis_url == "redis://cache:6380/1"


def test_keyword_arguments_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_GRPC_PORT", "6000")
    assert Settings(_env_file=None, grpc_port=7000).grpc_port == 7000


@pytest.mark.parametrize(("name", "value"), [
    ("PORTRAIT_GRPC_PORT", "70000"), ("PORTRAIT_GRPC_PORT", "-1"), ("PORTRAIT_GRPC_PORT", "http"),
    ("PORTRAIT_FLUSH_INTERVAL_S", "0"), ("PORTRAIT_FLUSH_MAX_ROWS", "0"), ("PORTRAIT_SEGMENTS", "1"),
    ("PORTRAIT_SEGMENTS", "65"), ("PORTRAIT_QUALITY_WINDOW", "9"), ("PORTRAIT_PROPENSITY_HORIZON_S", "-5"),
])
def test_invalid_env_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as exc:
        Settings(_env_file=None)
    assert name.removeprefix("PORTRAIT_").lower() in str(exc.value)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://localhost", "localhost:6379,db=0"),
    ("redis://cache:6380", "cache:6380,db=0"),
    ("redis://cache:6380/", "cache:6380,db=0"),
    ("redis://cache:6380/3", "cache:6380,db=3"),
    ("redis://:secret@cache/2", "cache:6379,db=2,password=secret"),
    ("redis://bob:secret@cache:7000/0", "cache:7000,db=0,username=bob,password=secret"),
    ("redis://b%40b:p%40ss%3Aw%2Fd@cache:7000/1", "cache:7000,db=1,username=b@b,password=p@ss:w/d"),
    ("rediss://bob:pw@cache:6380/4", "cache:6380,db=4,username=bob,password=pw,ssl=true"),
    ("rediss://cache", "cache:6379,db=0,ssl=true"),
])
def test_redis_url_to_feast(url: str, expected: str) -> None:
    assert redis_url_to_feast(url) == expected


@pytest.mark.parametrize("url", ["http://cache:6379", "unix:///tmp/redis.sock", "cache:6379", "", "redis://h/x"])
def test_redis_url_bad_scheme_or_db(url: str) -> None:
    with pytest.raises(ValueError):
        redis_url_to_feast(url)


def test_redis_url_password_with_comma_is_refused() -> None:
    with pytest.raises(ValueError):
        redis_url_to_feast("redis://bob:p%2Cw@cache:6379/0")


def test_feast_redis_connection_precedence() -> None:
    both = Settings(_env_file=None, redis_url="redis://cache:6380/2", feast_redis="other:1,db=5")
    assert both.feast_redis_connection() == "other:1,db=5"
    assert Settings(_env_file=None, redis_url="redis://cache:6380/2").feast_redis_connection() == "cache:6380,db=2"
    with pytest.raises(ValueError):
        Settings(_env_file=None).feast_redis_connection()


def test_feast_redis_connection_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_REDIS_URL", "rediss://u:p@r:1/1")
    assert Settings(_env_file=None).feast_redis_connection() == "r:1,db=1,username=u,password=p,ssl=true"
    monkeypatch.setenv("PORTRAIT_FEAST_REDIS", "x:2,db=0")
    assert Settings(_env_file=None).feast_redis_connection() == "x:2,db=0"


def test_every_setting_is_described() -> None:
    assert len(Settings.model_fields) >= 20
    for name, info in Settings.model_fields.items():
        assert info.description and info.description.strip(), name
