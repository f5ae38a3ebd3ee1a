"""The dashboard in a real headless browser: Debian's chromium driven by Playwright.

Signs in with a key, reads a subject's gauges and its history chart after
known consumes, checks that a member key cannot see a sibling, that no page
logs a console error, and saves screenshots (their paths are printed; run
with ``-s`` to see them). Without /usr/bin/chromium the test is skipped
with the reason, unless TOKENQUOTA_REQUIRE_SERVICES=1 (CI), where it fails:
``.ci/run`` installs chromium first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, sync_playwright

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock

CHROMIUM = Path(os.environ.get("TOKENQUOTA_TEST_CHROMIUM", "/usr/bin/chromium"))
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PHONE: ViewportSize = {"width": 375, "height": 812}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"chromium not found at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1":
            pytest.fail(f"chromium is required (TOKENQUOTA_REQUIRE_SERVICES=1): {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def acme(make_api: ServerFactory) -> Api:
    """Known usage at a frozen time: alice 300 on gpt-x and 200 on claude, 100 held."""
    api = make_api(clock=FrozenClock(NOW))
    quota = api.quota
    quota.put_subject("org:acme", name="Acme")
    quota.put_subject("user:alice", name="Alice", parents=["org:acme"])
    quota.put_subject("user:bob", parents=["org:acme"])
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.set_limit("user:alice", "tokens", "month", 400, shadow=True)
    assert quota.consume("user:alice", tokens=300, model="gpt-x").allowed
    assert quota.consume("user:alice", tokens=200, model="claude").allowed  # over the shadow 400
    assert quota.reserve("user:alice", tokens=100).allowed
    assert quota.consume("user:bob", tokens=50, model="gpt-x").allowed
    return api


class Watched:
    """A page whose console errors, uncaught exceptions and failed loads are kept."""

    def __init__(self, browser: Browser, **context: object) -> None:
        self.context = browser.new_context(**context)  # type: ignore[arg-type]
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def sign_in(self, url: str, key: str) -> None:
        self.page.goto(f"{url}/dashboard")
        assert self.page.url == f"{url}/dashboard/login"
        self.page.fill("#key", key)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{url}/dashboard")

    def close(self) -> None:
        self.context.close()


def field(page: Page, gauge: str, name: str) -> str:
    return page.inner_text(f'[data-testid="{gauge}"] [data-field="{name}"]').strip()


def test_gauges_and_chart_show_the_known_usage(
    chromium: Browser, acme: Api, tmp_path: Path
) -> None:
    viewer = Watched(chromium, viewport={"width": 1280, "height": 900})
    page = viewer.page
    try:
        viewer.sign_in(acme.url, ADMIN_KEY)
        ranking = page.locator('[data-testid="top-consumers"] tbody tr')
        rows = [ranking.nth(i).inner_text().split("\t")[:3] for i in range(ranking.count())]
        assert rows[:3] == [
            ["1", "org:acme", "550"],
            ["2", "user:alice", "500"],
            ["3", "user:bob", "50"],
        ]

        page.click('[data-testid="top-consumers"] >> text=user:alice')
        page.wait_for_url(f"{acme.url}/dashboard/subjects/user:alice")
        assert page.inner_text('[data-testid="subject"]').startswith("user:alice")
        day = "gauge-tokens-day"
        assert field(page, day, "used") == "500"
        assert field(page, day, "held") == "100"
        assert field(page, day, "remaining") == "400"
        assert field(page, day, "limit") == "1,000 (60 %)"
        assert field(page, day, "reset") == "2026-03-11 00:00 UTC"
        assert field(page, day, "source") == "override"
        shadow = "gauge-tokens-month-shadow"
        assert field(page, shadow, "limit") == "400 (150 %)"
        hits = acme.quota.shadow_hits("user:alice")["tokens/month"]
        assert hits >= 1
        assert field(page, shadow, "shadow-hits") == str(hits)

        chart = page.locator('[data-testid="history-chart"]')
        assert chart.locator("g").count() == 1  # one day with usage
        column = chart.locator("g").first
        assert column.get_attribute("data-start") == "2026-03-10T00:00:00+00:00"
        assert column.get_attribute("data-total") == "500"
        by_model = {
            rect.get_attribute("data-model"): rect.get_attribute("data-value")
            for rect in column.locator("rect").all()
        }
        assert by_model == {"claude": "200", "gpt-x": "300"}
        heights = {
            rect.get_attribute("data-model"): float(rect.get_attribute("height") or 0)
            for rect in column.locator("rect").all()
        }
        assert heights["gpt-x"] == pytest.approx(heights["claude"] * 1.5)
        table = page.inner_text('[data-testid="history-table"] tbody').split("\t")
        assert [cell.strip() for cell in table] == ["2026-03-10 00:00 UTC", "200", "300", "500"]
        audit = page.locator('[data-testid="audit"] tbody tr')
        actions = [audit.nth(i).inner_text().split("\t")[2] for i in range(audit.count())]
        assert actions == ["override.set", "override.set", "subject.put"]  # newest first

        desktop = tmp_path / "dashboard-subject-desktop.png"
        page.screenshot(path=str(desktop), full_page=True)
        page.set_viewport_size(PHONE)
        page.reload()
        # Readable on a phone: nothing wider than the screen but the scrolling tables.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"
        phone = tmp_path / "dashboard-subject-phone.png"
        page.screenshot(path=str(phone), full_page=True)
        print(f"\nscreenshots: {desktop} {phone}")
        assert viewer.errors == []
    finally:
        viewer.close()


def test_a_member_cannot_see_a_sibling(chromium: Browser, acme: Api, tmp_path: Path) -> None:
    viewer = Watched(chromium)
    page = viewer.page
    try:
        viewer.sign_in(acme.url, acme.key("member", "user:bob"))
        ranking = page.inner_text('[data-testid="top-consumers"]')
        assert "user:bob" in ranking
        assert "user:alice" not in ranking
        assert "org:acme" not in ranking

        response = page.goto(f"{acme.url}/dashboard/subjects/user:alice")
        assert response is not None
        assert response.status == 403
        assert "may not read user:alice" in page.inner_text("main")
        assert "500" not in page.content()
        # The 403 is the answer itself; no other load failed and no script ran.
        viewer.errors = [e for e in viewer.errors if "403" not in e]
        screenshot = tmp_path / "dashboard-member-refused.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"\nscreenshot: {screenshot}")

        page.goto(f"{acme.url}/dashboard/subjects/user:bob")
        assert page.inner_text('[data-testid="subject"]').startswith("user:bob")
        page.click("text=Sign out")
        page.wait_for_url(f"{acme.url}/dashboard/login")
        page.goto(f"{acme.url}/dashboard/subjects/user:bob")
        assert page.url == f"{acme.url}/dashboard/login"
        assert viewer.errors == []
    finally:
        viewer.close()
