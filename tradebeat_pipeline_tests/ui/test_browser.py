"""The Dagster UI as the product's face (#17): what a user sees and does in a browser, against the
running demo (real `dagster dev`, real daemon, sandbox exchange replaying candles on the wall clock).

Each test drives Debian's Chromium through the UI's own pages and dialogs, waits on what the page
shows (Playwright's auto-waiting `expect`) or on the instance's records, and checks the outcome in
the instance too, so a UI that only looks right does not pass. The symbols sensor ticks every 30 s,
so the tests that add symbols take up to a tick each. Slow by nature, so marked `slow`.
"""

import re
from datetime import timedelta
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect

from tradebeat_pipeline.defs.checks import FRESH, GAPS_EXPLAINED, OHLC_VALID
from tradebeat_pipeline.defs.partitions import ONBOARD_TAG, RANGE_END_TAG, RANGE_START_TAG
from tradebeat_pipeline.timewindows import month_key, month_of, now_ms
from tradebeat_pipeline_tests.ui.demo_system import (
    RUN_TIMEOUT_S,
    SETTLED,
    DemoSystem,
    check_status,
    materialize,
    open_chart_link,
    wait_until,
)

pytestmark = pytest.mark.slow

# A tick of the symbols sensor comes at most 30 s (its minimum interval) plus the daemon's loop
# after a partition is added; the UI's sensor page refreshes itself every 15 s or so.
TICK_TIMEOUT_MS = 75_000
RUN_TIMEOUT_MS = RUN_TIMEOUT_S * 1000
BACKFILL_TAG = "dagster/backfill"  # Dagster's own: the backfill a run belongs to


def add_symbol_partition(page: Page, demo: DemoSystem, name: str) -> None:
    """Type a symbol into the UI's "Add a partition" dialog of the `symbols` dimension, reached from
    the asset's Materialize dialog as a user does. The dialog closes once the partition is added;
    the Materialize dialog is left unlaunched (the next page replaces it)."""
    page.goto(f"{demo.ui_url}/assets/ohlcv_1m")
    page.get_by_role("button", name="Materialize…").click()
    launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    launch.get_by_text("Add a partition", exact=True).click()
    add = page.get_by_role("dialog").filter(has_text="Add a partition for")
    add.get_by_placeholder("name").fill(name)
    add.get_by_role("button", name="Save").click()
    expect(add).to_be_hidden()


def sensor_tick(page: Page, demo: DemoSystem, row_text: list[str], not_text: str | None = None) -> Locator:
    """The newest tick of the symbols sensor on its UI page whose row says all of `row_text` (what
    the tick requested, e.g. "partition deleted"), waited for; its log dialog, opened."""
    page.goto(f"{demo.ui_url}/automation")
    page.get_by_text("symbols_sensor", exact=True).click()
    row = page.get_by_role("row").filter(has=page.get_by_role("button", name="View logs"))
    for text in row_text:
        row = row.filter(has_text=text)
    if not_text is not None:
        row = row.filter(has_not_text=not_text)
    expect(row.first).to_be_visible(timeout=TICK_TIMEOUT_MS)
    row.first.get_by_role("button", name="View logs").click()
    return page.get_by_role("dialog").filter(has_text="Logs for symbols_sensor")


def test_a_symbol_added_in_the_add_a_partition_dialog_is_onboarded_by_one_successful_backfill(
    page: Page, demo: DemoSystem
) -> None:
    this_month = month_key(month_of(now_ms()))
    add_symbol_partition(page, demo, "S000/USDT")

    query = quote(f"tag:{ONBOARD_TAG}=S000/USDT", safe="")
    page.goto(f"{demo.ui_url}/runs?q%5B0%5D={query}")  # the Runs page, filtered by the sensor's tag
    expect(page.get_by_text(f"{ONBOARD_TAG}: S000/USDT")).to_be_visible(timeout=TICK_TIMEOUT_MS)
    expect(page.get_by_text("Success", exact=True)).to_be_visible(timeout=RUN_TIMEOUT_MS)

    runs = demo.runs(tags={ONBOARD_TAG: "S000/USDT"})
    assert [(r.tags[RANGE_END_TAG], r.is_success) for r in runs] == [(f"{this_month}|S000/USDT", True)]
    assert demo.materialized("ohlcv_1m", f"{this_month}|S000/USDT")


def test_a_lower_case_symbol_is_renamed_to_upper_case_and_the_sensor_tick_log_says_so(
    page: Page, demo: DemoSystem
) -> None:
    add_symbol_partition(page, demo, "s001/usdt")

    log = sensor_tick(page, demo, ["partition created", "partition deleted"])
    expect(log).to_contain_text(
        re.compile(r"renamed partition 's001/usdt' to S001/USDT \(symbols are kept in one upper-case")
    )
    symbols = demo.symbols()
    assert "S001/USDT" in symbols
    assert "s001/usdt" not in symbols


def test_an_unknown_symbol_is_refused_and_the_sensor_tick_log_gives_the_reason(
    page: Page, demo: DemoSystem
) -> None:
    add_symbol_partition(page, demo, "FOO/BAR")

    log = sensor_tick(page, demo, ["partition deleted"], not_text="partition created")
    expect(log).to_contain_text(
        re.compile(r"rejected partition 'FOO/BAR' as not listed on the exchange \(.+\); partition deleted")
    )
    assert "FOO/BAR" not in demo.symbols()


def test_a_backfill_launched_from_the_dialog_over_a_range_of_partitions_is_exactly_one_run(
    page: Page, demo: DemoSystem
) -> None:
    this_month = month_of(now_ms())
    last_month = month_of(this_month - timedelta(days=1))
    first, last = f"{month_key(last_month)}|BTC/USDT", f"{month_key(this_month)}|BTC/USDT"
    page.goto(f"{demo.ui_url}/assets/ohlcv_1m")
    page.get_by_role("button", name="Materialize…").click()
    launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    months = launch.get_by_placeholder("ex: 2017-07", exact=False)
    months.fill(f"[{month_key(last_month)}...{month_key(this_month)}]")
    months.press("Enter")
    launch.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem", name="BTC/USDT").click()
    page.keyboard.press("Escape")  # closes the symbol list, not the dialog
    expect(launch.get_by_text("2 partitions")).to_be_visible()
    expect(launch.get_by_text("Backfills all partitions in a single run.")).to_be_visible()
    launch.get_by_role("button", name="Launch backfill").click()

    created = page.get_by_text(re.compile(r"Created backfill \w+"))
    expect(created).to_be_visible()
    backfill_id = created.inner_text().split()[-1]
    page.goto(f"{demo.ui_url}/runs/b/{backfill_id}?tab=runs")
    expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)

    runs = demo.runs(tags={BACKFILL_TAG: backfill_id})
    ranges = [(r.tags.get(RANGE_START_TAG), r.tags.get(RANGE_END_TAG), r.is_success) for r in runs]
    assert ranges == [(first, last, True)]  # one run over the whole range, not one per partition
    expect(page.get_by_text(runs[0].run_id[:8], exact=True)).to_be_visible()  # the run the page lists


def test_the_chart_link_in_the_price_chart_metadata_opens_a_chart_with_one_line_per_symbol(
    page: Page, demo: DemoSystem
) -> None:
    materialize(page, demo, "price_chart")
    symbols = sorted(demo.symbols())

    chart, answer = open_chart_link(page, demo)

    assert (answer.url, answer.status) == (demo.chart_url("price_chart.html"), 200)
    expect(chart.locator(".scatterlayer .trace")).to_have_count(len(symbols), timeout=60_000)
    lines = chart.evaluate(
        "() => document.querySelector('.js-plotly-plot').data"
        ".filter(t => t.type === 'scatter').map(t => t.name)"
    )
    assert lines == symbols


# Last in the module: by now the daemon has beaten for minutes, and no wait for a first beat is needed.
def test_between_beats_the_asset_page_shows_every_check_of_ohlcv_1m_settled(
    page: Page, demo: DemoSystem
) -> None:
    wait_until(
        "a moment between beats (the last beat succeeded and no run is in flight); a beat that lives "
        "most of its minute leaves the asset's checks in progress",
        demo.between_beats,
        timeout_s=90,
    )
    page.goto(f"{demo.ui_url}/assets/ohlcv_1m?view=checks")
    for check in (FRESH, GAPS_EXPLAINED, OHLC_VALID):
        expect(check_status(page, check)).to_have_text(SETTLED, timeout=20_000)
