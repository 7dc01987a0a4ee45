"""Unit tests of server.domain.events: every validation rule of ``validate`` and ``Event.units``."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.events import (
    MAX_CONTEXT_ENTRIES,
    MAX_CONTEXT_LEN,
    MAX_FUTURE_S,
    MAX_ID_LEN,
    MAX_QUERY_LEN,
    Event,
    EventType,
    FieldError,
    validate,
)

NOW = 1_700_000_000.0


def ev(**kw: object) -> Event:
    """A valid VIEW event, with ``kw`` overriding fields."""
    base = Event("e1", "u1", EventType.VIEW, NOW, item_id="sku-1", category="shoes", price=9.5)
    return replace(base, **kw)


def field_of(e: Event) -> str | None:
    err = validate(e, now=NOW)
    return err.field if err else None


def test_valid_events_of_every_type() -> None:
    for t in EventType:
        e = ev(type=t, query="q") if t == EventType.SEARCH else ev(type=t)
        assert validate(e, now=NOW) is None, t
    assert validate(ev(type=EventType.SEARCH, item_id="", query="red shoes"), now=NOW) is None
    assert validate(ev(type=int(EventType.CLICK)), now=NOW) is None  # a plain proto int


@pytest.mark.parametrize("name", ["event_id", "user_id"])
def test_ids_required_and_bounded(name: str) -> None:
    assert field_of(ev(**{name: ""})) == name
    assert field_of(ev(**{name: "x" * (MAX_ID_LEN + 1)})) == name
    assert field_of(ev(**{name: "x" * MAX_ID_LEN})) is None


@pytest.mark.parametrize("t", [0, 8, -1, 99])
def test_unspecified_or_unknown_type(t: int) -> None:
    err = validate(ev(type=t), now=NOW)
    assert err is not None
    assert err.field == "type"
    assert str(t) in err.message


@pytest.mark.parametrize("t", [None, math.nan, math.inf, -math.inf, -1.0])
def test_event_time_missing_or_invalid(t: float | None) -> None:
    assert field_of(ev(event_time=t)) == "event_time"


def test_event_time_future_limit_is_inclusive() -> None:
    assert field_of(ev(event_time=NOW + MAX_FUTURE_S)) is None
    assert field_of(ev(event_time=NOW + MAX_FUTURE_S + 0.001)) == "event_time"
    assert field_of(ev(event_time=0.0)) is None  # the epoch itself is a valid time
    assert field_of(ev(event_time=NOW - 400 * 86400)) is None  # old events are fine


@pytest.mark.parametrize("t", [t for t in EventType if t != EventType.SEARCH])
def test_item_id_required_except_search(t: EventType) -> None:
    err = validate(ev(type=t, item_id=""), now=NOW)
    assert err == FieldError("item_id", f"item_id is required for {t.name} events")


def test_item_id_length() -> None:
    assert field_of(ev(item_id="i" * (MAX_ID_LEN + 1))) == "item_id"
    assert field_of(ev(type=EventType.SEARCH, query="q", item_id="i" * (MAX_ID_LEN + 1))) == "item_id"


def test_search_query_required_and_bounded() -> None:
    search = ev(type=EventType.SEARCH, item_id="")
    assert field_of(search) == "query"
    assert field_of(replace(search, query="q" * MAX_QUERY_LEN)) is None
    assert field_of(replace(search, query="q" * (MAX_QUERY_LEN + 1))) == "query"
    assert field_of(ev(query="q" * (MAX_QUERY_LEN + 1))) == "query"  # a long query is invalid on any type
    assert field_of(ev(query="")) is None  # a query is optional on non-SEARCH events


@pytest.mark.parametrize("name", ["category", "session_id"])
def test_optional_string_lengths(name: str) -> None:
    assert field_of(ev(**{name: ""})) is None
    assert field_of(ev(**{name: "c" * MAX_ID_LEN})) is None
    assert field_of(ev(**{name: "c" * (MAX_ID_LEN + 1)})) == name


@pytest.mark.parametrize("price", [math.nan, math.inf, -math.inf, -0.01])
def test_price_invalid(price: float) -> None:
    assert field_of(ev(price=price)) == "price"


def test_price_and_quantity_zero_ok_negative_quantity_not() -> None:
    assert field_of(ev(price=0.0, quantity=0)) is None
    assert field_of(ev(quantity=-1)) == "quantity"


def test_context_bounds() -> None:
    full = {f"k{i}": "v" for i in range(MAX_CONTEXT_ENTRIES)}
    assert field_of(ev(context=full)) is None
    assert field_of(ev(context={**full, "one": "more"})) == "context"
    assert field_of(ev(context={"k" * MAX_CONTEXT_LEN: "v" * MAX_CONTEXT_LEN})) is None
    assert field_of(ev(context={"k" * (MAX_CONTEXT_LEN + 1): "v"})) == "context"
    assert field_of(ev(context={"k": "v" * (MAX_CONTEXT_LEN + 1)})) == "context"


def test_units() -> None:
    assert ev(type=EventType.PURCHASE, quantity=0).units == 1
    assert ev(type=EventType.PURCHASE, quantity=3).units == 3
    assert ev(type=int(EventType.PURCHASE), quantity=0).units == 1
    assert ev(type=EventType.ADD_TO_CART, quantity=0).units == 0
    assert ev(type=EventType.ADD_TO_CART, quantity=2).units == 2


# -- property: valid strategies validate; one invalid field is named --------------------------------
ids = st.text(min_size=1, max_size=MAX_ID_LEN)
opt_ids = st.text(max_size=MAX_ID_LEN)
short = st.text(max_size=8)


@st.composite
def valid_events(draw: st.DrawFn) -> Event:
    etype = draw(st.sampled_from(list(EventType)))
    search = etype == EventType.SEARCH
    return Event(
        event_id=draw(ids),
        user_id=draw(ids),
        type=draw(st.sampled_from([etype, int(etype)])),
        event_time=draw(st.floats(0.0, NOW + MAX_FUTURE_S)),
        item_id=draw(opt_ids if search else ids),
        category=draw(opt_ids),
        price=draw(st.floats(0.0, 1e9)),
        quantity=draw(st.integers(0, 1000)),
        session_id=draw(opt_ids),
        query=draw(st.text(min_size=1 if search else 0, max_size=MAX_QUERY_LEN)),
        context=draw(st.dictionaries(short, short, max_size=MAX_CONTEXT_ENTRIES)),
    )


too_long_id = st.text(min_size=MAX_ID_LEN + 1, max_size=MAX_ID_LEN + 20)
INVALID: dict[str, st.SearchStrategy[object]] = {
    "event_id": st.just("") | too_long_id,
    "user_id": st.just("") | too_long_id,
    "type": st.sampled_from([0, 8, 42, -3]),
    "event_time": st.sampled_from([None, math.nan, math.inf, -1.0, NOW + MAX_FUTURE_S + 1]),
    "item_id": too_long_id,
    "category": too_long_id,
    "session_id": too_long_id,
    "query": st.text(min_size=MAX_QUERY_LEN + 1, max_size=MAX_QUERY_LEN + 5),
    "price": st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats(max_value=-1e-9, allow_infinity=False),
    "quantity": st.integers(max_value=-1),
    "context": st.dictionaries(st.text(min_size=1, max_size=4), short, min_size=MAX_CONTEXT_ENTRIES + 1,
                               max_size=MAX_CONTEXT_ENTRIES + 3)
    | st.builds(lambda v: {"k": v}, st.text(min_size=MAX_CONTEXT_LEN + 1, max_size=MAX_CONTEXT_LEN + 3)),
}


@settings(deadline=None)  # no flaky deadline errors on a loaded CI machine
@given(valid_events())
def test_property_valid_events_validate(e: Event) -> None:
    assert validate(e, now=NOW) is None


@settings(deadline=None)  # no flaky deadline errors on a loaded CI machine
@given(valid_events(), st.sampled_from(sorted(INVALID)), st.data())
def test_property_one_invalid_field_is_named(e: Event, name: str, data: st.DataObject) -> None:
    bad = replace(e, **{name: data.draw(INVALID[name])})
    err = validate(bad, now=NOW)
    assert isinstance(err, FieldError)
    assert err.field == name
    assert err.message


@settings(deadline=None)  # no flaky deadline errors on a loaded CI machine
@given(valid_events())
def test_property_missing_item_id_or_query_is_named(e: Event) -> None:
    if EventType(e.type) == EventType.SEARCH:
        assert field_of(replace(e, query="")) == "query"
    else:
        assert field_of(replace(e, item_id="")) == "item_id"
