"""Assembles the Dagster definitions. Loading them reads no environment and calls no network."""

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
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource
from tradebeat_pipeline.io_manager import CandleIOManager, RollupIOManager


def resources() -> dict[str, object]:
    """Resource bindings, shared by the Definitions and the CLI's in-process runs."""
    return {
        "exchange": ExchangeResource(),
        "store": StoreResource(),
        "candle_io_manager": CandleIOManager(),
        "rollup_io_manager": RollupIOManager(),
    }


defs = dg.Definitions(
    assets=[ohlcv_1m, *ROLLUP_ASSETS, price_chart],
    jobs=[candles_job, backfill_job, rollups_job, chart_job, retention_job],
    schedules=[heartbeat, rollups_schedule, chart_schedule, retention_schedule],
    sensors=[symbols_sensor],
    resources=resources(),
)
