"""The candle assets."""

import asyncio
from datetime import date

import dagster as dg
import pandas as pd

from tradebeat_pipeline.candles import iso_utc
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource
from tradebeat_pipeline.exchange import FetchResult, fetch_days
from tradebeat_pipeline.heartbeat import beat_windows, fetch_windows, wait_until_closed
from tradebeat_pipeline.io_manager import BEAT_ATTR, SYMBOL_COLUMN
from tradebeat_pipeline.partitions import BEAT_MINUTE_TAG, candle_partitions, days_by_symbol
from tradebeat_pipeline.settings import Settings


@dg.asset(
    partitions_def=candle_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key="candle_io_manager",
    group_name="candles",
    kinds={"sqlite"},
)
def ohlcv_1m(
    context: dg.AssetExecutionContext, exchange: ExchangeResource, store: StoreResource
) -> pd.DataFrame:
    """Closed 1-minute OHLCV candles; one partition is one UTC day of one symbol.

    A backfill fetches its whole days, one window per symbol, all symbols at once (a year of
    history is one run). A heartbeat fetches only what each symbol lacks up to its minute.
    """
    requested = days_by_symbol(context.partition_keys)
    with store.open() as candles:
        unregistered = sorted(set(requested) - candles.active_symbols())
        newest = candles.newest_candles([s for s in requested if s not in unregistered])
    beat_minute = context.run.tags.get(BEAT_MINUTE_TAG)
    if unregistered and beat_minute is None:
        raise dg.Failure(
            f"not registered in the store: {', '.join(unregistered)}; "
            "add them with `tradebeat symbols add` (or wait for the symbols sensor)"
        )
    for symbol in unregistered:  # a partition the symbols sensor has not validated yet
        context.log.warning(f"{symbol}: skipped this beat, not registered yet")
        del requested[symbol]
    if beat_minute is None:
        return asyncio.run(_backfill(context, exchange, requested))
    return asyncio.run(_heartbeat(context, exchange, requested, newest, int(beat_minute)))


async def _backfill(
    context: dg.AssetExecutionContext, exchange: ExchangeResource, requested: dict[str, list[date]]
) -> pd.DataFrame:
    async with exchange.open() as client:
        results = await fetch_days(client, requested)
    for symbol, result in results.items():
        days = requested[symbol]
        context.log.info(
            f"{symbol}: {len(result.candles)} closed candles for {days[0]}..{days[-1]} "
            f"in {result.requests} requests (exchange clock {iso_utc(result.server_time_ms)})"
        )
    return _frame(results)


async def _heartbeat(
    context: dg.AssetExecutionContext,
    exchange: ExchangeResource,
    requested: dict[str, list[date]],
    newest: dict[str, int | None],
    minute_ms: int,
) -> pd.DataFrame:
    if not requested:
        raise dg.Failure("no registered symbol in this beat's range")
    windows = beat_windows(requested, newest, minute_ms)
    async with exchange.open() as client:
        await wait_until_closed(client, minute_ms, Settings.load().heartbeat_buffer_seconds)
        fetched = await fetch_windows(client, windows)
    for symbol, reason in fetched.failures.items():
        context.log.error(f"{symbol}: not stored this beat, retried on the next one ({reason})")
    if fetched.failures and not fetched.results:
        raise dg.Failure(
            description=f"beat {iso_utc(minute_ms)}: every symbol failed",
            metadata={"failed": dg.MetadataValue.json(fetched.failures)},
        )
    frame = _frame(fetched.results)
    frame.attrs[BEAT_ATTR] = {
        "minute": minute_ms,
        "ok": len(fetched.results),
        "failed": sorted(fetched.failures),
    }
    return frame


def _frame(results: dict[str, FetchResult]) -> pd.DataFrame:
    frames = [r.candles.assign(**{SYMBOL_COLUMN: s}) for s, r in results.items()]
    return pd.concat(frames, ignore_index=True)
