"""The browser tests' fixtures: one running demo (sandbox exchange in live replay, charts server,
`dagster dev`) shared by the module, Debian's Chromium under Playwright, and a fresh browser page
per test whose last view is kept as a screenshot in the test's tmp_path."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tradebeat_pipeline_tests.ui.demo_system import (
    VIEWPORT,
    DemoSystem,
    dismiss_welcome,
    launch_chromium,
    running_demo,
    wait_for_onboarding,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium; without it the tests fail naming the fix (they never skip)."""
    with sync_playwright() as playwright:
        try:
            chromium = launch_chromium(playwright)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[DemoSystem]:
    """The demo's processes in a temporary folder, once the UI is up and the demo's symbols have
    been onboarded (so each test starts from a system with candles, beating every minute)."""
    with running_demo(tmp_path_factory.mktemp("ui")) as system:
        dismiss_welcome(browser, system)
        wait_for_onboarding(system)
        yield system


@pytest.fixture
def page(browser: Browser, demo: DemoSystem, tmp_path: Path) -> Iterator[Page]:
    """A fresh page (own cookies and storage) in UTC; what it showed last is kept in tmp_path."""
    context = browser.new_context(viewport=VIEWPORT, timezone_id="UTC")
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    for number, shown in enumerate(context.pages):
        shown.screenshot(path=tmp_path / f"page-{number}.png")
    context.close()
