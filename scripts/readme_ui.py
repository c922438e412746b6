"""Regenerate the README's pictures of the Dagster UI: the demo's whole system (sandbox exchange in
live replay, charts server, `dagster dev`) started in a temporary folder on free ports, exactly as
the browser tests start it (`tradebeat_pipeline_tests/ui/demo_system.py`), left to onboard its
symbols and beat a few times, then photographed by headless Chromium (the tests themselves never
write tracked files):

- docs/ui-asset.png   the `ohlcv_1m` asset's partitions (month × symbol), this month's BTC/USDT open
- docs/ui-checks.png  its checks, settled between two beats
- docs/ui-chart.png   the chart page its `price_chart` asset links to

    uv run python scripts/readme_ui.py
"""

import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import dagster as dg
from playwright.sync_api import Page, expect, sync_playwright

from tradebeat_pipeline.defs.checks import FRESH, GAPS_EXPLAINED, OHLC_VALID
from tradebeat_pipeline.defs.partitions import KIND_TAG, ONBOARD_TAG, Kind
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.timewindows import month_key, month_of, now_ms
from tradebeat_pipeline_tests.ui.demo_system import (
    RUN_TIMEOUT_S,
    SETTLED,
    VIEWPORT,
    DemoSystem,
    check_status,
    chromium,
    dismiss_welcome,
    launch_chromium,
    materialize,
    open_chart_link,
    running_demo,
    wait_for_onboarding,
    wait_until,
)

BEATS = 3  # successful heartbeat runs before the pictures: the asset's history shows a live system
DOCS = PROJECT_DIR / "docs"


def asset_partitions(page: Page, system: DemoSystem) -> Path:
    """The asset's Partitions tab with this month's BTC/USDT selected (its status and metadata)."""
    key = f"{month_key(month_of(now_ms()))}|BTC/USDT"
    page.goto(f"{system.ui_url}/assets/ohlcv_1m?view=partitions&partition={quote(key, safe='')}")
    expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
    return shot(page, "ui-asset.png")


def asset_checks(page: Page, system: DemoSystem) -> Path:
    """The asset's Checks tab, at a moment between beats (every check settled)."""
    wait_until("a moment between beats", system.between_beats, timeout_s=RUN_TIMEOUT_S)
    page.goto(f"{system.ui_url}/assets/ohlcv_1m?view=checks")
    for check in (FRESH, GAPS_EXPLAINED, OHLC_VALID):
        expect(check_status(page, check)).to_have_text(SETTLED, timeout=30_000)
    return shot(page, "ui-checks.png")


def chart(page: Page, system: DemoSystem) -> Path:
    """The chart page, opened from the `open` link of the price_chart asset's metadata."""
    materialize(page, system, "price_chart")
    opened, answer = open_chart_link(page, system)
    assert answer.status == 200, f"the chart server answered {answer.status}"
    expect(opened.locator(".scatterlayer .trace")).to_have_count(len(system.symbols()), timeout=60_000)
    return shot(opened, "ui-chart.png")


def shot(page: Page, name: str) -> Path:
    """What the page shows, to docs/<name>."""
    png = DOCS / name
    page.screenshot(path=png)
    return png


def render() -> list[Path]:
    """Start the demo, let it onboard and beat, photograph it, stop it; the PNGs written."""
    try:
        chromium()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc
    work = Path(tempfile.mkdtemp(prefix="tradebeat-ui-"))
    try:
        with running_demo(work) as system, sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            dismiss_welcome(browser, system)
            onboarded = wait_for_onboarding(system)
            print(f"onboarded {onboarded.tags.get(ONBOARD_TAG)}; waiting for {BEATS} beats", flush=True)
            beats, success = {KIND_TAG: Kind.HEARTBEAT}, [dg.DagsterRunStatus.SUCCESS]
            wait_until(
                f"{BEATS} successful beats",
                lambda: len(system.runs(tags=beats, statuses=success)) >= BEATS,
                timeout_s=(BEATS + 1) * 60 + RUN_TIMEOUT_S,
            )
            page = browser.new_context(viewport=VIEWPORT, timezone_id="UTC").new_page()
            pictures = [chart(page, system), asset_partitions(page, system), asset_checks(page, system)]
            browser.close()
    except BaseException:
        print(f"failed; the demo's files (dagster-dev.log among them) are kept in {work}", flush=True)
        raise
    shutil.rmtree(work)
    return pictures


if __name__ == "__main__":
    for png in render():
        print(f"wrote {png}")
