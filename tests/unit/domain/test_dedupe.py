"""Unit tests of server.domain.dedupe.Dedupe: bounded capacity and oldest-first forgetting."""

from __future__ import annotations

from server.domain.dedupe import Dedupe


def test_duplicate_is_recognised() -> None:
    d = Dedupe(capacity=10)
    assert d.seen_or_add("a") is False
    assert d.seen_or_add("a") is True
    assert d.seen_or_add("b") is False
    assert "a" in d and "b" in d and "c" not in d
    assert len(d) == 2


def test_capacity_is_a_hard_bound() -> None:
    d = Dedupe(capacity=100)
    for i in range(10_000):
        d.seen_or_add(str(i))
        assert len(d) <= 100
    assert len(d) == 100
    assert all(str(i) in d for i in range(9_900, 10_000))
    assert not any(str(i) in d for i in range(9_900))


def test_evicts_oldest_first() -> None:
    d = Dedupe(capacity=3)
    for x in "abc":
        d.seen_or_add(x)
    d.seen_or_add("d")
    assert "a" not in d
    assert all(x in d for x in "bcd")
    d.seen_or_add("e")
    assert "b" not in d
    assert d.seen_or_add("a") is False  # forgotten: a resend that old is not recognised
    assert "c" not in d  # and re-adding it evicted the next oldest


def test_a_repeat_does_not_refresh_the_insertion_order() -> None:
    d = Dedupe(capacity=2)
    d.seen_or_add("a")
    d.seen_or_add("b")
    assert d.seen_or_add("a") is True
    d.seen_or_add("c")
    assert "a" not in d  # still the oldest insertion
    assert "b" in d and "c" in d
