"""The candle assets."""

import asyncio

import dagster as dg
import pandas as pd

from tradebeat_pipeline.candles import iso_utc
from tradebeat_pipeline.defs.resources import ExchangeResource
from tradebeat_pipeline.exchange import fetch_days
from tradebeat_pipeline.io_manager import SYMBOL_COLUMN
from tradebeat_pipeline.partitions import candle_partitions, days_by_symbol


@dg.asset(
    partitions_def=candle_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key="candle_io_manager",
    group_name="candles",
    kinds={"sqlite"},
)
def ohlcv_1m(context: dg.AssetExecutionContext, exchange: ExchangeResource) -> pd.DataFrame:
    """Closed 1-minute OHLCV candles; one partition is one UTC day of one symbol.

    A range of days is fetched as one window per symbol, all symbols at once, so a year of
    history is one run paging the exchange 1,000 candles a request.
    """
    requested = days_by_symbol(context.partition_keys)

    async def fetch() -> pd.DataFrame:
        async with exchange.open() as client:
            results = await fetch_days(client, requested)
        frames = [r.candles.assign(**{SYMBOL_COLUMN: s}) for s, r in results.items()]
        for symbol, result in results.items():
            days = requested[symbol]
            context.log.info(
                f"{symbol}: {len(result.candles)} closed candles for {days[0]}..{days[-1]} "
                f"in {result.requests} requests (exchange clock {iso_utc(result.server_time_ms)})"
            )
        return pd.concat(frames, ignore_index=True)

    return asyncio.run(fetch())
