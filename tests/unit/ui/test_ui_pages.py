"""Escaping: whatever a user id, a category or an item id holds, it is text on the page, never markup."""

from __future__ import annotations

import math
import re

from server.domain.events import EventType
from server.tools.segments import Segment
from server.ui import charts, pages
from server.ui.data import RADAR_AXES, PopulationView, UserView

EVIL = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def _view() -> UserView:
    row = {"user_id": EVIL, "profile_version": 3, "segment": 1, "tags": [EVIL], "top_categories": [EVIL],
           "purchase_propensity": 0.25, "risk_score": 0.1, "age": 0, "gender": EVIL, "region": "",
           "as_of_ts": 1.7e9, "updated_at_ts": 1.7e9, "views_24h": 2.0}
    seg = Segment(1, EVIL, 1, 1.0, 0.0, None, 1.0, 1.0, 0.0, 0.0, 0.0, None, [(EVIL, 1)])
    return UserView(row=row, segment=seg, activity=[[0] * 24 for _ in range(7)],
                    recent=[(1.7e9, EventType.VIEW, EVIL, EVIL, 1.0)],
                    radar=[(EVIL, "user", [0.5] * len(RADAR_AXES))], radar_z={"user": [0.0] * len(RADAR_AXES)},
                    scores=[(EVIL, 0.5)], scored_from=1, recommended=[(EVIL, 0.25)])


def _no_markup_from(html: str) -> None:
    assert "<script" not in html and "<img" not in html and "onerror=alert" not in html.replace(
        "onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;" in html


def test_user_page_escapes_every_user_string() -> None:
    html = pages.user_page(EVIL, _view())
    _no_markup_from(html)
    assert 'data-field="gender"' not in html  # attributes are one field, escaped inside it
    assert "&quot;&gt;&lt;script&gt;" in html


def test_home_and_error_pages_escape_and_encode_links() -> None:
    seg = Segment(0, EVIL, 1, 1.0, 0.0, None, 1.0, 1.0, 0.0, 0.0, 0.0, None, [(EVIL, 1)])
    v = PopulationView(users=1, segments=[seg], segment_sizes=[1], tags=[(EVIL, 1)], recent_users=[(1.7e9, EVIL)],
                       as_of=1.7e9, built_in_s=0.0, events_per_s=None, events_total=1.0, pseudonymized=False)
    html = pages.home_page(v)
    _no_markup_from(html)
    hrefs = re.findall(r'href="(/users/[^"]*)"', html)
    assert hrefs and all(set(h[len("/users/"):]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                         "0123456789%-._~") for h in hrefs)
    _no_markup_from(pages.error_page(404, "Unknown user", f"No profile for {EVIL}", search=EVIL))


def test_charts_escape_labels_and_count_their_marks() -> None:
    svg = charts.radar([EVIL] * 5, [(EVIL, EVIL, [0.2, 0.4, 0.6, 0.8, 1.0])])
    assert "<script" not in svg and len(re.findall(r"<circle", svg)) == 5
    grid = [[d * 24 + h for h in range(24)] for d in range(7)]
    heat = charts.heatmap(grid)
    assert heat.count('class="cell') == 168 and heat.count("level-5") == 1  # only the maximum is darkest
    line = charts.line_chart({"a": [(60.0 * i, math.sin(i)) for i in range(30)], "b": [(0.0, math.nan)]})
    assert 'data-points="30"' in line and 'data-points="0"' in line
    assert "<script" not in charts.bars([(EVIL, 1.0)])
