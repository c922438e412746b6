"""Regenerate the README's chart picture, `docs/chart.png`: the recorded outage day of BTC, ETH and
SOL backfilled from the sandbox into a temporary store and Dagster home, the `price_chart` asset
materialized, and the page rendered by headless Chromium (the same steps the chart tests take; the
tests themselves never write tracked files).

    uv run python scripts/readme_chart.py
"""

import os
import shutil
import tempfile
from pathlib import Path

import dagster as dg

from tradebeat_pipeline.chart import screenshot
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.definitions import resources
from tradebeat_pipeline.defs.assets import price_chart
from tradebeat_pipeline.sandbox.market_data import historical_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.timewindows import parse_instant

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def render() -> Path:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    work = Path(tempfile.mkdtemp(prefix="tradebeat-chart-"))
    (work / "home").mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", work / "home")
    exchange = Sandbox(historical_markets(), Clock(parse_instant("2026-01-01T00:00:00Z")))
    with SandboxServer(exchange) as server:
        os.environ.update(
            DAGSTER_HOME=str(work / "home"),
            DB_PATH=str(work / "chart.sqlite"),
            BINANCE_API_URL=server.url,
            BINANCE_ARCHIVE_URL=server.url,
            TRADEBEAT_ENV_FILE=str(work / "none.env"),
            CHARTS_DIR=str(work / "charts"),
            LOG_DIR=str(work / "logs"),
        )
        assert main(["symbols", "add", *SYMBOLS]) == 0
        for symbol in SYMBOLS:
            assert (
                main(["backfill", symbol, "--start", "2023-03-24", "--end", "2023-03-24", "--rollups"]) == 0
            )
        with dg.DagsterInstance.get() as instance:
            assert dg.materialize([price_chart], instance=instance, resources=resources()).success
    png = PROJECT_DIR / "docs" / "chart.png"
    screenshot(work / "charts" / "price_chart.html", png, chromium=chromium, profile_dir=work / "chromium")
    shutil.rmtree(work)
    return png


if __name__ == "__main__":
    print(f"wrote {render()}")
