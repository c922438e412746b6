"""Assembles the Dagster definitions. Loading them reads no environment and calls no network."""

import dagster as dg

from tradebeat_pipeline.defs.assets import ohlcv_1m
from tradebeat_pipeline.defs.automation import candles_job, heartbeat, symbols_sensor
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource
from tradebeat_pipeline.io_manager import CandleIOManager


def resources() -> dict[str, object]:
    """Resource bindings, shared by the Definitions and the CLI's in-process runs."""
    return {
        "exchange": ExchangeResource(),
        "store": StoreResource(),
        "candle_io_manager": CandleIOManager(),
    }


defs = dg.Definitions(
    assets=[ohlcv_1m],
    jobs=[candles_job],
    schedules=[heartbeat],
    sensors=[symbols_sensor],
    resources=resources(),
)
