"""The explorer's HTML: one function per page, from the data of ``server.ui.data``; no script.

Every string that did not come from this file is escaped (``html.escape``), user ids in links are
percent-encoded, and values a test compares with GetProfile carry ``data-field`` / ``data-value``
attributes (``repr`` of the float: exact).

>>> html = error_page(404, "No profile", "no user <b>x</b>")
>>> "&lt;b&gt;x&lt;/b&gt;" in html, "<b>x</b>" in html
(True, False)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from server.metrics import MODELS
from server.tools.segments import Segment
from server.ui import charts
from server.ui.data import RADAR_AXES, RADAR_Z, ModelsView, PopulationView, SystemView, UserView

#: The profile card's headline features, in words (every other numeric feature is listed below them).
KEY_FEATURES = (
    ("views_24h", "views, 24 h"), ("carts_7d", "add-to-carts, 7 d"), ("purchases_30d", "purchases, 30 d"),
    ("spend_30d", "spend, 30 d"), ("lifetime_spend", "lifetime spend"), ("avg_order_value", "average order"),
    ("sessions_7d", "sessions, 7 d"), ("conversion_rate_30d", "conversion, 30 d"),
    ("preferred_hour", "preferred hour (UTC)"), ("active_days_30d", "active days, 30 d"),
)
TIME_FEATURES = frozenset({"first_seen_ts", "last_event_ts", "last_purchase_ts", "next_purchase_expected_ts",
                           "updated_at_ts", "as_of_ts"})
NAV = (("/", "Explorer"), ("/models", "Models"), ("/system", "System"))


def when(t: float | None) -> str:
    """A unix time in UTC, to the second ("-" for none).

    >>> when(0.0), when(1_700_000_000.5)
    ('-', '2023-11-14 22:13:20 UTC')
    """
    if not t or not math.isfinite(t):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def ago(seconds: float | None) -> str:
    """A duration in words.

    >>> ago(5), ago(150), ago(7200), ago(3 * 86400), ago(None)
    ('5 s', '2.5 min', '2.0 h', '3.0 days', '-')
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def num(v: Any, digits: int = 4) -> str:
    """A number for people (``-`` for none or NaN).

    >>> num(1234567.0), num(0.12345), num(3.0), num(float("nan")), num(None)
    ('1,234,567', '0.1235', '3', '-', '-')
    """
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return "-"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.2f}"
    return f"{v:.{digits}g}"


def user_href(user_id: str) -> str:
    """The page of a user id (any characters: percent-encoded, ``/`` included).

    >>> user_href("a/b c?")
    '/users/a%2Fb%20c%3F'
    """
    return "/users/" + quote(user_id, safe="")


def layout(title: str, body: str, *, signed_in: bool = False, active: str = "") -> str:
    """The page around ``body`` (``title`` is escaped here)."""
    current = ' class="active" aria-current="page"'
    nav = "".join(f'<a href="{href}"{current if href == active else ""}>{name}</a>' for href, name in NAV)
    logout = ('<form method="post" action="/logout" class="logout"><button type="submit">Sign out</button></form>'
              if signed_in else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)} · Portrait</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>"
            f"<body><header><a class=\"brand\" href=\"/\">Portrait</a><nav>{nav}</nav>{search_form()}{logout}</header>"
            f"<main><h1>{escape(title)}</h1>{body}</main>"
            "<footer>Portrait explorer · numbers as GetProfile serves them · times in UTC</footer></body></html>")


def search_form(value: str = "") -> str:
    return ('<form class="search" method="get" action="/users"><input type="search" name="user_id" '
            f'placeholder="user id" aria-label="user id" required maxlength="128" value="{escape(value)}">'
            '<button type="submit">Look up</button></form>')


def stat(label: str, value: str, field: str = "", *, html: bool = False) -> str:
    """A figure with its label; ``value`` is escaped unless ``html``."""
    attr = f' data-stat="{escape(field)}"' if field else ""
    shown = value if html else escape(value)
    return f'<div class="stat"{attr}><div class="value">{shown}</div><div class="label">{escape(label)}</div></div>'


def table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A table; cells are HTML already (callers escape)."""
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{escape(cls)}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def section(title: str, body: str, cls: str = "", note: str = "") -> str:
    n = f'<p class="note">{note}</p>' if note else ""
    return f'<section class="card {escape(cls)}"><h2>{escape(title)}</h2>{n}{body}</section>'


# ------------------------------------------------------------------------------------------------ home


def segment_name(segments: Sequence[Segment], sid: int) -> str:
    s = next((s for s in segments if s.id == sid), None)
    return s.name if s is not None else ""


def home_page(v: PopulationView, *, signed_in: bool = False) -> str:
    """``/``: search, and the population at a glance."""
    stats = "".join([
        stat("users", num(v.users), "users"),
        stat("events / s", "-" if v.events_per_s is None else f"{v.events_per_s:,.1f}", "events_per_s"),
        stat("events accepted since start", num(v.events_total), "events_total"),
        stat("segments with users", num(sum(1 for n in v.segment_sizes if n > 0)), "segments"),
    ])
    search = section("Look up a user", search_form(),
                     note="Type the user id your systems send (with pseudonyms on, the id is mapped the way "
                          "GetProfile maps it).")
    total = sum(v.segment_sizes) or 1
    by_id = {s.id: s for s in v.segments}
    rows = []
    for sid, n in enumerate(v.segment_sizes):
        if n <= 0:
            continue
        s = by_id.get(sid)
        cats = ", ".join(f"{escape(c)} ({k})" for c, k in s.top_categories) if s else ""
        rows.append([
            str(sid), f'<span class="segment-name">{escape(s.name) if s else "-"}</span>',
            f'<span data-segment-size="{sid}">{n:,}</span>', f"{100 * n / total:.0f}%",
            num(s.recency_days, 3) if s else "-", num(s.events_30d, 3) if s else "-",
            num(s.spend_30d, 4) if s else "-", f"{100 * s.buyers_30d:.0f}%" if s else "-", cats or "-",
        ])
    seg_table = table(["segment", "in words", "users", "share", "days since last event", "events / 30 d",
                       "spend / 30 d", "bought in 30 d", "top categories"], rows, "segments")
    seg_chart = charts.bars([(f"{sid} {segment_name(v.segments, sid)}", float(n))
                             for sid, n in enumerate(v.segment_sizes) if n > 0], v_format="{:,.0f}")
    segments = section("Segments", seg_table + seg_chart,
                       note="KMeans segments of recency, frequency, money and breadth; named in words by comparing "
                            f"each with all users (what <code>portrait segments</code> says). Summary as of "
                            f"{escape(when(v.as_of))}, built in {v.built_in_s:.2f} s.")
    tags = section("Tags", charts.bars([(t, float(n)) for t, n in v.tags], v_format="{:,.0f}") if v.tags
                   else "<p>No tagged users yet.</p>", note="Users holding each rule-based tag now.")
    if v.pseudonymized:
        recent = section("Users", "<p>User ids are stored as pseudonyms: the explorer cannot list raw ids. "
                                  "Look a user up by the id your systems send.</p>")
    elif v.recent_users:
        items = "".join(f'<li><a href="{user_href(u)}">{escape(u)}</a> <span class="muted">last event '
                        f"{escape(when(t))}</span></li>" for t, u in v.recent_users)
        recent = section("Recently active users", f'<ul class="users">{items}</ul>')
    else:
        recent = section("Recently active users", "<p>No users yet.</p>")
    body = f'<div class="stats">{stats}</div>{search}<div class="grid">{segments}{tags}{recent}</div>'
    return layout("Population", body, signed_in=signed_in, active="/")


# ------------------------------------------------------------------------------------------------ user


def _feature_cell(name: str, v: Any) -> str:
    if v is None:
        return f'<span data-field="{escape(name)}" data-value="">-</span>'
    shown = when(float(v)) if name in TIME_FEATURES else num(v)
    return f'<span data-field="{escape(name)}" data-value="{escape(repr(float(v)))}">{escape(shown)}</span>'


def _ranked(items: list[tuple[str, float]], header: str, attr: str, v_max: float, css_id: str, empty: str) -> str:
    """Items with probabilities, best first (Score, Recommend): bars and a table whose value cells carry
    ``data-<attr>="item"`` and ``data-value`` (what the browser tests read)."""
    if not items:
        return f"<p>{empty}</p>"
    return charts.bars(list(items), v_max=v_max) + table(
        ["item", header],
        [[escape(i), f'<span data-{attr}="{escape(i)}" data-value="{p!r}">{p:.4f}</span>'] for i, p in items],
        css_id)


def user_page(user_id: str, v: UserView, *, signed_in: bool = False) -> str:
    """``/users/{user_id}``: the profile card, charts, recent events, Score results."""
    row = v.row
    tags = "".join(f'<span class="tag">{escape(t)}</span>' for t in row.get("tags") or []) or \
        '<span class="muted">none</span>'
    cats = ", ".join(escape(c) for c in row.get("top_categories") or []) or "-"
    seg = int(row["segment"]) if row.get("segment") is not None else -1
    seg_words = f" — {escape(v.segment.name)}" if v.segment is not None else ""
    seg_link = f'<span data-field="segment" data-value="{seg}">{seg}</span>{seg_words}' if seg >= 0 else "none yet"
    attrs = ", ".join(f"{k} {escape(str(row.get(k)))}" for k in ("age", "gender", "region")
                      if row.get(k) not in (None, "", 0)) or '<span class="muted">not set</span>'
    prop = float(row.get("purchase_propensity") or 0.0)
    risk = float(row.get("risk_score") or 0.0)
    card = (
        '<dl class="card-facts">'
        f'<dt>user</dt><dd data-field="user_id">{escape(user_id)}</dd>'
        f"<dt>tags</dt><dd class=\"tags\" data-field=\"tags\">{tags}</dd>"
        f"<dt>segment</dt><dd>{seg_link}</dd>"
        f'<dt>purchase propensity</dt><dd><span data-field="purchase_propensity" data-value="{prop!r}">'
        f"{100 * prop:.1f}%</span> <span class=\"muted\">P(purchase within the horizon)</span></dd>"
        f'<dt>risk score</dt><dd><span data-field="risk_score" data-value="{risk!r}">{risk:.3f}</span></dd>'
        f'<dt>top categories</dt><dd data-field="top_categories">{cats}</dd>'
        f'<dt>attributes</dt><dd data-field="attributes">{attrs}</dd>'
        f'<dt>version</dt><dd><span data-field="profile_version" data-value="{int(row.get("profile_version") or 0)}">'
        f"{int(row.get('profile_version') or 0):,}</span></dd>"
        f"<dt>as of</dt><dd>{_feature_cell('as_of_ts', row.get('as_of_ts'))}</dd>"
        f"<dt>latest event</dt><dd>{_feature_cell('updated_at_ts', row.get('updated_at_ts'))}</dd>"
        "</dl>"
    )
    key_names = {n for n, _ in KEY_FEATURES}
    key = "".join(stat(label, _feature_cell(n, row.get(n)), html=True) for n, label in KEY_FEATURES)
    others = [(n, row.get(n)) for n in sorted(row) if n not in key_names and isinstance(row.get(n), (int, float))
              and not isinstance(row.get(n), bool) and n not in ("profile_version", "segment", "age",
                                                                   "purchase_propensity", "risk_score",
                                                                   "event_timestamp_us")]
    all_features = table(["feature", "value"], [[escape(n), _feature_cell(n, x)] for n, x in others], "features")
    profile = section("Profile", card + f'<div class="stats small">{key}</div>'
                      f"<details><summary>All {len(others) + len(KEY_FEATURES)} features</summary>{all_features}"
                      "</details>", "profile")
    z = v.radar_z
    z_rows = [[escape(a)] + [f"{z[k][i]:+.2f}" if k in z else "-" for k in ("user", "segment")]
              for i, a in enumerate(RADAR_AXES)]
    radar = section("Compared with its segment and everyone", charts.radar(RADAR_AXES, v.radar) +
                    "<details><summary>Standard scores</summary>" +
                    table(["axis", "this user", "segment centre"], z_rows) + "</details>",
                    note=f"The segment model's inputs as standard scores against all users (the middle ring is "
                         f"the population's mean, the rim +{RADAR_Z:g}); computed from the values above, with the "
                         "number of categories the user touched.")
    heat = section("Activity", charts.heatmap(v.activity),
                   note=f"Events by day of week and hour of day (UTC), all {sum(map(sum, v.activity)):,} since the "
                        "first.")
    recent_rows = [[escape(when(t)), escape(k.name.lower()),
                    f'<span class="item">{escape(item)}</span>' if item else "-",
                    f'<span class="category">{escape(cat)}</span>' if cat else "-",
                    f'<span data-price="{price!r}">{num(price) if price else "-"}</span>']
                   for t, k, item, cat, price in v.recent]
    recent = section("Recent events", table(["time", "type", "item", "category", "price"], recent_rows, "recent")
                     if recent_rows else "<p>No events kept.</p>", note="The latest events by event time (at most 20).")
    score = _ranked(v.scores, "P(buys within the horizon)", "score", 1.0, "scores",
                    "No recently touched items to score.")
    scores = section("Score", score, note=f"Score (the RPC) of the {v.scored_from} items in the recent events, "
                                          "best first: P(the user buys it within the item horizon if viewed now).")
    rec = _ranked(v.recommended, "P(the item bought next)", "recommend",
                  max((p for _, p in v.recommended), default=1.0), "recommended", "No items known yet.")
    recommended = section("Recommend", rec, note="Recommend (the RPC) for this user, best first: candidates from "
                                                 "the user's recent items, items co-visited with them, the top "
                                                 "categories' and the most touched items, ranked by the model "
                                                 "learnt from purchases.")
    body = f'<div class="grid">{profile}{radar}{heat}{scores}{recommended}{recent}</div>'
    return layout(f"User {user_id}", body, signed_in=signed_in)


# ------------------------------------------------------------------------------------------------ models


def models_page(v: ModelsView, *, signed_in: bool = False) -> str:
    """``/models``: quality over time, labels, pending decisions, version and staleness."""
    now = v.now
    parts = [f'<div class="stats">{stat("trainer version (messages learnt)", num(v.trainer_version), "version")}'
             f'{stat("history samples", num(len(v.history.samples)), "samples")}</div>']
    for m in MODELS:
        auc, loss = v.history.quality_series(m)
        labels = now.labels.get(m, {})
        learnt = v.learnt_at.get(m)
        stats = "".join([
            stat("ROC AUC now", num(now.auc.get(m), 4), f"{m}_auc"),
            stat("log loss now", num(now.log_loss.get(m), 4), f"{m}_log_loss"),
            stat("positive labels", num(labels.get("positive")), f"{m}_positive"),
            stat("negative labels", num(labels.get("negative")), f"{m}_negative"),
            stat("pending decisions", num(now.pending.get(m)), f"{m}_pending"),
            stat("labels in the quality window", num(v.window.get(m)), f"{m}_window"),
            stat("last learnt", "not since start" if learnt is None else ago(now.t - learnt) + " ago",
                 f"{m}_staleness"),
        ])
        body = (f'<div class="stats small">{stats}</div>'
                f'<div class="pair"><div><h3>ROC AUC</h3>{charts.line_chart({"auc": auc}, y_min=0.0, y_max=1.0)}'
                f'</div><div><h3>log loss</h3>{charts.line_chart({"log_loss": loss}, y_min=0.0)}</div></div>')
        parts.append(section(f"Model: {m}", body, f"model-{m}",
                             note="Rolling quality over the last resolved labels (exact ROC AUC, mean log loss), "
                                  "sampled every interval since the server started."))
    return layout("Models", "".join(parts), signed_in=signed_in, active="/models")


# ------------------------------------------------------------------------------------------------ system


def system_page(v: SystemView, *, signed_in: bool = False) -> str:
    """``/system``: throughput and the server's state."""
    now = v.now
    lag = now.t - v.watermark if math.isfinite(v.watermark) else None
    stats = "".join([
        stat("users", num(v.users), "users"),
        stat("events accepted since start", num(now.events), "events_total"),
        stat("watermark", when(v.watermark) if math.isfinite(v.watermark) else "-", "watermark"),
        stat("watermark behind the clock", ago(lag), "watermark_lag"),
        stat("profiles with a pending timer", num(v.timers_pending), "timers"),
        stat("online store", "up" if v.online_store_up else "DOWN (rows wait and are retried)", "online_store"),
        *(stat(f"queue: {q}", num(d), f"queue_{q}") for q, d in v.queue.items()),
        stat("requests or events refused", num(v.rejected), "rejected"),
        stat("erased users suppressed", num(v.suppressed), "suppressed"),
        stat("up for", ago(now.t - v.started), "uptime"),
        *([stat("partition workers answering", f"{v.workers_answering} of {v.workers}", "workers")]
          if v.workers > 1 else []),
    ])
    rates = v.history.rate_series()
    chart = section("Events per second", charts.line_chart({"events_per_s": rates}, y_min=0.0, y_format="{:,.1f}"),
                    note="Accepted events per second between samples.")
    return layout("System", f'<div class="stats">{stats}</div>{chart}', signed_in=signed_in, active="/system")


# ------------------------------------------------------------------------------------------------ others


def error_page(status: int, title: str, message: str, *, search: str = "", signed_in: bool = False) -> str:
    """An error (unknown user, bad request, store down) with a way on."""
    body = f'<section class="card error" data-status="{status}"><p>{escape(message)}</p>{search_form(search)}</section>'
    return layout(title, body, signed_in=signed_in)


def login_page(error: str = "") -> str:
    """The sign-in form: an API key with the ``read`` (or ``admin``) role."""
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = ('<section class="card login">'
            "<p>The explorer needs an API key with the <code>read</code> role (the key GetProfile takes).</p>"
            f'{err}<form method="post" action="/login"><label>API key <input type="password" name="key" '
            'autocomplete="current-password" required autofocus></label><button type="submit">Sign in</button>'
            "</form></section>")
    return layout("Sign in", body)
