"""The explorer in a real browser: `portrait serve` (a child process, API keys on, fed with simulated events)
and headless Chromium driven by Selenium (Debian's chromium + chromium-driver; .ci/run installs them).

Every test runs against the one-process server and against a server with two partition workers on a real
local Ray (``PORTRAIT_WORKERS=2``: what only a worker holds is asked of the owning actor, the population and
counters merged from both). The page's numbers are compared with the real gRPC GetProfile / Score of the same
server; the charts are counted in the rendered DOM. ``python -m tests.integration.test_ui --screenshots
docs/screenshots`` makes the README's screenshots the same way.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.api.client import PortraitClient
from server.api.security import key_digest
from server.log.codec import timestamp
from server.tools.simulate import simulate
from tests.conftest import ServerProcess, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
READ, INGEST, ADMIN = "read-key-for-the-explorer", "ingest-key", "admin-key"
USERS, DAYS, SEED = 120, 10, 7
WAIT_S = 60.0

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"):
    pytest.skip("no Chromium here (/usr/bin/chromium and /usr/bin/chromedriver: apt-get install chromium "
                "chromium-driver); CI installs them and runs these tests", allow_module_level=True)


class Shop:
    """A running server with the simulated shop in it."""

    def __init__(self, data_dir: Path, ui_port: int, workers: int = 1) -> None:
        keys = data_dir.parent / "keys.txt"
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.write_text("".join(f"{role}:{key_digest(k)}\n" for role, k in
                                (("read", READ), ("ingest", INGEST), ("admin", ADMIN))))
        self.ui = f"http://127.0.0.1:{ui_port}"
        self.workers = workers
        self.srv = ServerProcess(data_dir, None, PORTRAIT_UI_PORT=str(ui_port), PORTRAIT_API_KEYS=str(keys),
                                 PORTRAIT_UI_HISTORY_INTERVAL_S="1", PORTRAIT_WORKERS=str(workers))
        self.srv.wait_serving(timeout_s=300.0 if workers > 1 else 120.0)  # Ray and its actors start first
        self.events = list(simulate(users=USERS, days=DAYS, seed=SEED))
        with PortraitClient(self.srv.target, timeout_s=300, api_key=INGEST) as c:
            for i in range(0, len(self.events), 5000):
                c.track_batch(self.events[i:i + 5000], wait_visible=i + 5000 >= len(self.events))
        self.users = sorted({e.user_id for e in self.events})

    def client(self, key: str = READ) -> PortraitClient:
        return PortraitClient(self.srv.target, timeout_s=30, api_key=key)

    def close(self) -> int:
        return self.srv.terminate()


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "2-workers"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    s = Shop(tmp_path_factory.mktemp("ui") / "data", free_port(), workers=request.param)
    yield s
    assert s.close() == 0, s.srv.log()[-3000:]


def chrome(width: int = 1360, height: int = 1000) -> Any:
    """Headless Chromium through Debian's chromedriver (never a downloaded driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers on the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--lang=en-US"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


@pytest.fixture(scope="module")
def browser(shop: Shop) -> Iterator[Any]:
    """A browser signed in through the form (the cookie path)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    b = chrome()
    try:
        b.get(shop.ui + "/")
        form = b.find_element(By.CSS_SELECTOR, "section.login form")
        form.find_element(By.NAME, "key").send_keys(READ)
        form.submit()
        WebDriverWait(b, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.segments"))
        yield b
    finally:
        b.quit()


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, str, Any]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **kw: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def _load(b: Any, url: str, css: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    b.get(url)
    WebDriverWait(b, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


# ---------------------------------------------------------------------------------------------- access


def test_a_missing_or_wrong_key_is_refused_and_a_read_key_signs_in(shop: Shop) -> None:
    user = shop.users[0]
    for path in ("/", f"/users/{user}", "/models", "/system"):
        status, body, _ = _get(shop.ui + path)
        assert status == 401 and 'name="key"' in body and user not in body.replace(f"User {user}", ""), path
    assert _get(shop.ui + "/", {"Authorization": "Bearer nope"})[0] == 401
    status, body, _ = _get(shop.ui + f"/users/{user}", {"Authorization": f"Bearer {INGEST}"})
    assert status == 403 and "may not read profiles" in body
    assert _get(shop.ui + f"/users/{user}", {"Authorization": f"Bearer {READ}"})[0] == 200
    assert _get(shop.ui + "/static/style.css")[0] == 200  # the sign-in page's stylesheet is open
    assert _get(shop.ui + "/login", data=b"key=wrong")[0] == 401
    status, _, headers = _get(shop.ui + "/login", data=f"key={READ}".encode())
    cookie = headers["Set-Cookie"]
    assert status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert _get(shop.ui + "/", {"Cookie": cookie.split(";")[0]})[0] == 200
    _, _, headers = _get(shop.ui + "/", {"Authorization": f"Bearer {READ}"})
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Referrer-Policy"] == "no-referrer"


def test_the_browser_without_a_key_gets_the_sign_in_form(shop: Shop) -> None:
    from selenium.webdriver.common.by import By

    b = chrome()
    try:
        _load(b, f"{shop.ui}/users/{shop.users[1]}", "section.login")
        assert not b.find_elements(By.CSS_SELECTOR, "[data-field]")
        assert "read" in b.find_element(By.CSS_SELECTOR, "section.login").text
    finally:
        b.quit()


# ---------------------------------------------------------------------------------------------- pages


def test_home_shows_the_population_segments_in_words_and_tags(shop: Shop, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _load(browser, shop.ui + "/", "table.segments")
    users = browser.find_element(By.CSS_SELECTOR, '[data-stat="users"] .value').text
    assert users.replace(",", "") == str(len(shop.users))  # the simulated users who sent an event
    sizes = [int(e.text.replace(",", "")) for e in browser.find_elements(By.CSS_SELECTOR, "[data-segment-size]")]
    assert sum(sizes) == len(shop.users) and sizes
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".segment-name")]
    assert all(n and n != "-" for n in names)
    assert all(any(w in n for w in ("buyers", "browsers", "big spenders")) for n in names)  # the money word
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.bars")
    assert len(bars) == 2 and len(bars[0].find_elements(By.CSS_SELECTOR, "rect.bar")) == len(sizes)
    links = browser.find_elements(By.CSS_SELECTOR, "ul.users a")
    assert links and all(a.text in shop.users for a in links)  # ids are not pseudonymized on this server


def test_user_page_shows_what_get_profile_returns_and_draws_its_charts(shop: Shop, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    busiest = max(shop.users, key=lambda u: sum(e.user_id == u for e in shop.events))
    for user in (busiest, shop.users[5]):
        # the row may be written again meanwhile (a timer: time alone changed the profile): the page is compared
        # with GetProfile's row read before and after it, the same row both times (rows only move forward)
        with shop.client() as c:
            for _ in range(10):
                profile = c.get_profile(user)
                _load(browser, f"{shop.ui}/users/{user}", "svg.radar")
                if c.get_profile(user) == profile:
                    break
            else:
                raise AssertionError(f"{user}'s row kept changing while its page loaded")

        def field(name: str) -> Any:
            return browser.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]')

        for name, value in profile.features.items():
            assert float(field(name).get_attribute("data-value")) == value, name
        assert float(field("purchase_propensity").get_attribute("data-value")) == profile.purchase_propensity
        assert int(field("segment").get_attribute("data-value")) == profile.segment
        assert int(field("profile_version").get_attribute("data-value")) == profile.version
        # the page shows the row's float time, GetProfile the Timestamp the server made of it (server.log.codec)
        assert timestamp(float(field("as_of_ts").get_attribute("data-value"))) == profile.as_of
        shown_tags = [t.text for t in field("tags").find_elements(By.CSS_SELECTOR, ".tag")]
        assert shown_tags == list(profile.tags)
        assert field("top_categories").text == (", ".join(profile.top_categories) or "-")
        assert field("user_id").text == user
        # the radar: population, the segment's centre and the user, 7 axes each
        polygons = browser.find_elements(By.CSS_SELECTOR, "svg.radar polygon.series")
        assert [p.get_attribute("data-series") for p in polygons] == [
            "population (mean)", f"segment {profile.segment} centre", "this user"]
        assert all(len(p.get_attribute("points").split()) == 7 for p in polygons)
        # the heat map: 7 x 24 cells, every event counted once
        cells = browser.find_elements(By.CSS_SELECTOR, "svg.heatmap rect.cell")
        assert len(cells) == 168
        assert sum(int(c.get_attribute("data-count")) for c in cells) == profile.features["lifetime_events"]
        # recent events: the latest 20
        rows = browser.find_elements(By.CSS_SELECTOR, "table.recent tbody tr")
        assert len(rows) == min(20, int(profile.features["lifetime_events"]))
        # Score results equal the Score RPC for the same candidates (the recent items, newest first)
        candidates: dict[str, tuple[str, str, float]] = {}
        for r in rows:
            items = r.find_elements(By.CSS_SELECTOR, ".item")
            if items and items[0].text not in candidates:
                cats = r.find_elements(By.CSS_SELECTOR, ".category")
                price = float(r.find_element(By.CSS_SELECTOR, "[data-price]").get_attribute("data-price"))
                candidates[items[0].text] = (items[0].text, cats[0].text if cats else "", price)
        shown = {e.get_attribute("data-score"): float(e.get_attribute("data-value"))
                 for e in browser.find_elements(By.CSS_SELECTOR, "[data-score]")}
        recommended = [(e.get_attribute("data-recommend"), float(e.get_attribute("data-value")))
                       for e in browser.find_elements(By.CSS_SELECTOR, "[data-recommend]")]
        with shop.client() as c:
            assert shown == dict(c.score(user, list(candidates.values())))
            assert recommended == c.recommend(user, 10) and len(recommended) == 10  # the Recommend RPC, in order
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.bars rect.bar")) == len(shown) + len(recommended)


def test_an_unknown_user_and_an_erased_user_get_a_clear_not_found_page(shop: Shop, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _load(browser, f"{shop.ui}/users/nobody%3Cscript%3E", "section.error")
    page = browser.find_element(By.CSS_SELECTOR, "section.error")
    assert page.get_attribute("data-status") == "404" and "No profile for the user id 'nobody<script>'" in page.text
    assert not browser.find_elements(By.CSS_SELECTOR, "main script")  # escaped, not markup
    erased = shop.users[-1]
    with shop.client(ADMIN) as c:
        assert c.delete_user(erased)
    assert _get(f"{shop.ui}/users/{erased}", {"Authorization": f"Bearer {READ}"})[0] == 404
    # the search box leads to the user's page
    _load(browser, shop.ui + "/", "form.search")
    box = browser.find_element(By.CSS_SELECTOR, "main form.search input[name=user_id]")
    box.send_keys(shop.users[2])
    box.submit()
    # wait for the browser to follow the form (reading current_url right after submit() can still give "/")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.heatmap"))
    assert "/users/" in browser.current_url
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="user_id"]').text == shop.users[2]


def test_models_and_system_pages_draw_samples_over_time(shop: Shop, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(d: Any) -> bool:  # the quality gauges are refreshed every 15 s, sampled every second here
        d.get(shop.ui + "/models")
        lines = d.find_elements(By.CSS_SELECTOR, "svg.line polyline")
        return len(lines) == 4 and all(int(p.get_attribute("data-points")) >= 3 for p in lines)

    WebDriverWait(browser, WAIT_S, poll_frequency=0.5).until(drawn)
    for model in ("propensity", "item"):
        section = browser.find_element(By.CSS_SELECTOR, f"section.model-{model}")
        charts = section.find_elements(By.CSS_SELECTOR, "svg.line")
        assert len(charts) == 2
        for chart in charts:
            lines = chart.find_elements(By.CSS_SELECTOR, "polyline")
            assert len(lines) == 1
            n = int(lines[0].get_attribute("data-points"))
            assert n >= 3 and len(lines[0].get_attribute("points").split()) == n
            assert len(chart.find_elements(By.CSS_SELECTOR, "circle.point")) == n
        positives = section.find_element(By.CSS_SELECTOR, f'[data-stat="{model}_positive"] .value').text
        assert int(positives.replace(",", "")) > 0
    _load(browser, shop.ui + "/system", "svg.line")
    line = browser.find_element(By.CSS_SELECTOR, "svg.line polyline")
    assert int(line.get_attribute("data-points")) >= 2
    assert browser.find_element(By.CSS_SELECTOR, '[data-stat="users"] .value').text.replace(",", "") in (
        str(len(shop.users)), str(len(shop.users) - 1))  # one may have been erased by now
    workers = browser.find_elements(By.CSS_SELECTOR, '[data-stat="workers"] .value')
    assert [w.text for w in workers] == ([f"{shop.workers} of {shop.workers}"] if shop.workers > 1 else [])


# ---------------------------------------------------------------------------------------------- screenshots


def screenshots(out: Path) -> None:
    """Screenshots of every page, from a server fed with the simulated shop (docs/screenshots/*.png)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portrait-screens-") as tmp:
        shop = Shop(Path(tmp) / "data", free_port())
        b = chrome(1360, 1000)
        try:
            b.get(shop.ui + "/login")
            b.save_screenshot(str(out / "login.png"))
            b.find_element(By.NAME, "key").send_keys(READ)
            b.find_element(By.CSS_SELECTOR, "section.login form").submit()
            WebDriverWait(b, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.segments"))
            WebDriverWait(b, WAIT_S, poll_frequency=1).until(
                lambda d: d.get(shop.ui + "/models") or len(d.find_elements(By.CSS_SELECTOR, "circle.point")) >= 20)
            busiest = max(shop.users, key=lambda u: sum(e.user_id == u for e in shop.events))
            for name, path, css in (("home", "/", "table.segments"), ("user", f"/users/{busiest}", "svg.radar"),
                                    ("models", "/models", "svg.line"), ("system", "/system", "svg.line")):
                _load(b, shop.ui + path, css)
                height = b.execute_script("return document.documentElement.scrollHeight")
                b.set_window_size(1360, min(max(int(height) + 40, 600), 3000))
                b.save_screenshot(str(out / f"{name}.png"))
                b.set_window_size(1360, 1000)
                print(out / f"{name}.png")
        finally:
            b.quit()
            shop.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--screenshots"] or len(sys.argv) != 3:
        sys.exit("usage: python -m tests.integration.test_ui --screenshots DIR")
    screenshots(Path(sys.argv[2]))
