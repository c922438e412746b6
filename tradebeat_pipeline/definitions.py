"""Assembles the Dagster definitions. Loading them reads no environment, calls no network and
imports neither ccxt, Plotly nor DuckDB (each is imported where it is used)."""

import dagster as dg

from tradebeat_pipeline.defs.assets import ROLLUP_ASSETS, ohlcv_1m, price_chart
from tradebeat_pipeline.defs.automation import (
    backfill_job,
    candles_job,
    chart_job,
    chart_schedule,
    heartbeat,
    retention_job,
    retention_schedule,
    rollups_job,
    rollups_schedule,
    symbols_sensor,
)
from tradebeat_pipeline.defs.io_managers import CandleIOManager, RollupIOManager
from tradebeat_pipeline.defs.resources import ArchivesResource, ExchangeResource, StoreResource


def resources() -> dict[str, object]:
    """Resource bindings, shared by the Definitions and the CLI's in-process runs."""
    store = StoreResource()
    return {
        "exchange": ExchangeResource(),
        "archives": ArchivesResource(),
        "store": store,
        "candle_io_manager": CandleIOManager(store=store),
        "rollup_io_manager": RollupIOManager(store=store),
    }


defs = dg.Definitions(
    assets=[ohlcv_1m, *ROLLUP_ASSETS, price_chart],
    jobs=[candles_job, backfill_job, rollups_job, chart_job, retention_job],
    schedules=[heartbeat, rollups_schedule, chart_schedule, retention_schedule],
    sensors=[symbols_sensor],
    resources=resources(),
)
