"""The rollup assets and the chart asset, after a real backfill of the recorded outage day."""

import re
import shutil
import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.chart import screenshot
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.definitions import resources
from tradebeat_pipeline.defs.assets import price_chart
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline_tests.conftest import ms

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


@pytest.fixture
def outage_day(env: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The three symbols backfilled for 2023-03-24 (candles + rollups, one run each); returns DB_PATH."""
    monkeypatch.setenv("CHARTS_DIR", str(env.parent / "charts"))
    assert main(["symbols", "add", *SYMBOLS]) == 0
    for symbol in SYMBOLS:
        assert main(["backfill", symbol, "--start", "2023-03-24", "--end", "2023-03-24", "--rollups"]) == 0
    return env


def test_a_backfill_with_rollups_stores_every_rollup_bucket_of_its_days(outage_day: Path) -> None:
    with sqlite3.connect(outage_day) as conn:
        counts = dict(
            conn.execute(
                "SELECT timeframe, count(*) FROM rollups JOIN symbols ON symbols.id = symbol_id "
                "WHERE symbol = 'BTC/USDT' GROUP BY timeframe"
            ).fetchall()
        )
        outage_hour = conn.execute(
            "SELECT minutes, complete FROM rollups WHERE timeframe = '1h' AND timestamp = ? AND symbol_id = "
            "(SELECT id FROM symbols WHERE symbol = 'BTC/USDT')",
            (ms("2023-03-24T13:00:00Z"),),
        ).fetchone()
    conn.close()
    assert counts == {"5m": 31 * 288, "1h": 31 * 24, "1d": 31}  # every bucket of the month
    assert outage_hour == (0, 0)


def chart(instance: dg.DagsterInstance) -> tuple[Path, dict[str, object]]:
    result = dg.materialize([price_chart], instance=instance, resources=resources())
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata: dict[str, object] = {k: v.value for k, v in event.materialization.metadata.items()}
    return Path(str(metadata["path"])), metadata


def test_the_chart_is_one_offline_page_with_every_symbol_on_a_log_axis(
    outage_day: Path, instance: dg.DagsterInstance
) -> None:
    page, metadata = chart(instance)
    assert page.is_file()
    assert (page.parent / "plotly.min.js").is_file()  # written beside it: opens with no network
    html = page.read_text()
    assert all(symbol.replace("/", "\\u002f") in html for symbol in SYMBOLS)  # JSON-escaped by plotly
    assert re.search(r'"yaxis":\{[^{}]*"type":"log"', html)
    assert "2023-03-24T12:40:00" in html  # the exchange's own hole is shaded
    assert metadata["open"] == f"http://127.0.0.1:3011/{page.name}"  # CHARTS_PORT's default
    assert metadata["page_bytes"] == page.stat().st_size
    assert "| BTC/USDT |" in str(metadata["preview"])


def test_the_charts_metadata_shows_its_thumbnail_served_beside_the_page(
    outage_day: Path, instance: dg.DagsterInstance
) -> None:
    page, metadata = chart(instance)
    assert page.with_suffix(".svg").read_text().startswith("<svg")
    assert "![the chart's overview](http://127.0.0.1:3011/price_chart.svg)" in str(metadata["preview"])


def test_the_chart_page_has_a_title_and_its_size_reads_in_kib(
    outage_day: Path, instance: dg.DagsterInstance
) -> None:
    page, metadata = chart(instance)
    assert re.search(r"<title>tradebeat — up to 2023-03-\d\dT\d\d:\d\d:00Z</title>", page.read_text())
    assert metadata["page_size"] == f"{page.stat().st_size / 1024:.0f} KiB"


def test_the_chart_page_renders_in_headless_chromium(outage_day: Path, instance: dg.DagsterInstance) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:  # a failure, never a skip: a skipped test proves nothing
        pytest.fail(
            "Debian's chromium is not installed; this test renders the chart page in it. "
            "Fix: apt-get install chromium (`.ci/run` installs it)",
            pytrace=False,
        )
    page, _ = chart(instance)
    png = outage_day.parent / "chart.png"
    screenshot(page, png, chromium=chromium, profile_dir=outage_day.parent / "chromium")
    assert png.stat().st_size > 50_000  # a drawn chart, not a blank page
