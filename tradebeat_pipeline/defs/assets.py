"""The candle assets."""

import asyncio
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import date

import dagster as dg
import pandas as pd

from tradebeat_pipeline.budget import Lane
from tradebeat_pipeline.candles import DAY_MS, MINUTE_MS, contiguous_day_runs, day_window, iso_utc
from tradebeat_pipeline.chart import SymbolChart, build_figure, write_page
from tradebeat_pipeline.defs.checks import CHECK_SPECS, evaluate
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource
from tradebeat_pipeline.exchange import CcxtExchange, FetchResult, fetch_days, merge_results
from tradebeat_pipeline.heartbeat import beat_windows, fetch_windows, wait_until_closed
from tradebeat_pipeline.io_manager import SYMBOL_COLUMN, Ingest
from tradebeat_pipeline.partitions import BEAT_MINUTE_TAG, candle_partitions, days_by_symbol
from tradebeat_pipeline.quality import FETCH_FAILED, PENDING, GapKind, Hole, holes_to_probe
from tradebeat_pipeline.rollups import ROLLUP_COLUMNS, ROLLUP_TIMEFRAMES, rollup
from tradebeat_pipeline.settings import Settings

# Component loggers: their lines go to logs/<component>.log and, inside runs, to the run's log in
# the UI (`tradebeat` is a managed Python logger of the instance).
backfill_log = logging.getLogger("tradebeat.backfill")
beat_log = logging.getLogger("tradebeat.heartbeat")
chart_log = logging.getLogger("tradebeat.chart")

# BackfillPolicy.single_run() is marked beta; it is the documented way to load a range as one run.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)

# Unexplained holes a heartbeat asks about again, per symbol per beat (it has a minute to spare).
BEAT_PROBES_PER_SYMBOL = 3


@dg.asset(
    partitions_def=candle_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key="candle_io_manager",
    group_name="candles",
    kinds={"sqlite"},
    check_specs=CHECK_SPECS,
)
def ohlcv_1m(
    context: dg.AssetExecutionContext, exchange: ExchangeResource, store: StoreResource
) -> Iterator[dg.Output[Ingest] | dg.AssetCheckResult]:
    """Closed 1-minute OHLCV candles; one partition is one UTC day of one symbol.

    A backfill fetches its whole days, one window per symbol, all symbols at once (a year of
    history is one run). A heartbeat fetches only what each symbol lacks up to its minute. Both ask
    again about unexplained holes in their days, and record the holes their answers reveal.
    """
    settings = Settings.load()
    settings.install_logs()
    requested = days_by_symbol(context.partition_keys)
    beat_minute = context.run.tags.get(BEAT_MINUTE_TAG)
    log = backfill_log if beat_minute is None else beat_log
    with store.open() as candles:
        unregistered = sorted(set(requested) - candles.active_symbols())
        registered = [s for s in requested if s not in unregistered]
        newest = candles.newest_candles(registered)
        first_candles = candles.first_candles(registered)
        # A backfill refetches its whole days anyway; only a pending hole needs the exact re-ask.
        kinds: tuple[GapKind, ...] = (PENDING,) if beat_minute is None else (PENDING, FETCH_FAILED)
        limit = None if beat_minute is None else BEAT_PROBES_PER_SYMBOL
        probes: dict[str, list[Hole]] = {}
        for s in registered:
            lo, hi = day_window(requested[s][0])[0], day_window(requested[s][-1])[1]
            due = holes_to_probe(candles.holes(s, lo, hi), kinds, now_ms=int(time.time() * 1000), limit=limit)
            # A hole reaching past the run's days is asked about only within them.
            probes[s] = [replace(h, start=max(h.start, lo), end=min(h.end, hi - MINUTE_MS)) for h in due]
    if unregistered and beat_minute is None:
        raise dg.Failure(
            f"not registered in the store: {', '.join(unregistered)}; "
            "add them with `tradebeat symbols add` (or wait for the symbols sensor)"
        )
    for symbol in unregistered:  # a partition the symbols sensor has not validated yet
        log.warning("%s: skipped this beat, not registered yet", symbol)
        del requested[symbol]
    unknown_start = [s for s in registered if first_candles[s] is None]
    if beat_minute is None:
        ingest = asyncio.run(_backfill(exchange, requested, probes, unknown_start))
    else:
        ingest = asyncio.run(_heartbeat(exchange, requested, newest, probes, unknown_start, int(beat_minute)))
    yield dg.Output(ingest)
    # The IO manager has committed by now: the checks judge what is stored.
    closed_until = max((r.closed_until_ms for r in ingest.results.values()), default=0)
    if closed_until == 0:  # every fetch failed: judge up to the last closed minute by our clock
        now = int(time.time() * 1000)
        closed_until = now - now % MINUTE_MS
    with store.open() as candles:
        yield from evaluate(
            candles,
            ingest,
            requested,
            closed_until_ms=closed_until,
            freshness_minutes=settings.freshness_minutes,
        )


async def _backfill(
    exchange: ExchangeResource,
    requested: dict[str, list[date]],
    probes: dict[str, list[Hole]],
    unknown_start: list[str],
) -> Ingest:
    async with exchange.open() as client:
        first_candles = await _first_candles(client, unknown_start)
        results = _merge_probes(await fetch_days(client, requested), await _probe_all(client, probes))
    for symbol, result in results.items():
        days = requested[symbol]
        backfill_log.info(
            "%s: %d closed candles for %s..%s in %d requests (exchange clock %s)",
            symbol,
            len(result.candles),
            days[0],
            days[-1],
            result.requests,
            iso_utc(result.server_time_ms),
        )
        for reason in result.failures:
            backfill_log.error("%s: part of the range could not be fetched (%s)", symbol, reason)
    return Ingest(results, first_candles)


async def _heartbeat(
    exchange: ExchangeResource,
    requested: dict[str, list[date]],
    newest: dict[str, int | None],
    probes: dict[str, list[Hole]],
    unknown_start: list[str],
    minute_ms: int,
) -> Ingest:
    if not requested:
        raise dg.Failure("no registered symbol in this beat's range")
    windows = beat_windows(requested, newest, minute_ms)
    async with exchange.open(Lane.BEAT) as client:
        # The run starts about a minute early: ask the slow questions while the minute is still open.
        first_candles = await _first_candles(client, unknown_start)
        probed = await _probe_all(client, probes)
        server_ms = await wait_until_closed(client, minute_ms, Settings.load().heartbeat_buffer_seconds)
        results = await fetch_windows(client, windows, server_ms)
    if all(r.failures for r in results.values()):
        raise dg.Failure(
            description=f"beat {iso_utc(minute_ms)}: every symbol failed",
            metadata={"failed": dg.MetadataValue.json({s: r.failures for s, r in results.items()})},
        )
    results = _merge_probes(results, probed)
    for symbol, result in results.items():
        for reason in result.failures:
            beat_log.error("%s: not stored this beat, retried on the next one (%s)", symbol, reason)
    return Ingest(results, first_candles, beat_minute=minute_ms)


async def _probe_all(client: CcxtExchange, probes: dict[str, list[Hole]]) -> dict[str, list[FetchResult]]:
    """Ask again for exactly each unexplained hole's window; a second empty answer, long enough
    after the first, is what makes a hole the exchange's own."""
    return {
        symbol: [await _probe(client, symbol, h) for h in holes] for symbol, holes in probes.items() if holes
    }


def _merge_probes(
    results: dict[str, FetchResult], probed: dict[str, list[FetchResult]]
) -> dict[str, FetchResult]:
    """Each symbol's main window first, then its re-asks (the store records holes in that order)."""
    return {s: merge_results([r, *probed.get(s, [])]) for s, r in results.items()}


async def _probe(client: CcxtExchange, symbol: str, hole: Hole) -> FetchResult:
    try:
        return await client.fetch_candles(symbol, hole.start, hole.end + MINUTE_MS)
    except Exception as exc:  # a failed re-ask keeps the hole unexplained; it must not fail the run
        return FetchResult.failed(hole.start, hole.end + MINUTE_MS, f"{type(exc).__name__}: {exc}")


async def _first_candles(client: CcxtExchange, symbols: list[str]) -> dict[str, int | None]:
    """Where each symbol's history begins on the exchange (asked once per symbol, then stored)."""
    found: dict[str, int | None] = {}
    for symbol in symbols:
        try:
            found[symbol] = await client.first_candle_ms(symbol)
        except Exception as exc:  # an unknown start only means early minutes count as holes
            backfill_log.warning(
                "%s: could not ask where its history begins (%s); asking again next run", symbol, exc
            )
    return found


def _rollup_asset(timeframe: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"ohlcv_{timeframe}",
        partitions_def=candle_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        io_manager_key="rollup_io_manager",
        group_name="candles",
        kinds={"duckdb", "sqlite"},
        metadata={"timeframe": timeframe},
        ins={"candles": dg.AssetIn("ohlcv_1m")},
        description=f"{timeframe} candles rolled up from the 1-minute candles with DuckDB: first open, "
        "max high, min low, last close, summed volume; every bucket of the days appears, and one "
        "missing minutes is marked incomplete (`minutes`, `complete`), never hidden.",
    )
    def rollup_asset(context: dg.AssetExecutionContext, candles: pd.DataFrame) -> pd.DataFrame:
        now = int(time.time() * 1000)
        closed_until = now - now % MINUTE_MS
        frames = []
        for symbol, days in days_by_symbol(context.partition_keys).items():
            own = candles[candles[SYMBOL_COLUMN] == symbol]
            for first, last in contiguous_day_runs(days):
                start, end = day_window(first)[0], min(day_window(last)[1], closed_until)
                if end > start:
                    in_run = own[(own["timestamp"] >= start) & (own["timestamp"] < end)]
                    frames.append(rollup(in_run, timeframe, start, end).assign(**{SYMBOL_COLUMN: symbol}))
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=[*ROLLUP_COLUMNS, SYMBOL_COLUMN])
        )

    return rollup_asset


ohlcv_5m, ohlcv_1h, ohlcv_1d = (_rollup_asset(t) for t in ROLLUP_TIMEFRAMES)
ROLLUP_ASSETS = [ohlcv_5m, ohlcv_1h, ohlcv_1d]


@dg.asset(
    deps=[ohlcv_1m],
    group_name="charts",
    kinds={"plotly", "html"},
    description="One interactive HTML page: all symbols on a log axis (hourly rollups over CHART_DAYS), "
    "then candlesticks + volume per symbol over CHART_WINDOW_HOURS; the exchange's own holes shaded.",
)
def price_chart(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    settings = Settings.load()
    settings.install_logs()
    charts: list[SymbolChart] = []
    with store.open() as candles:
        symbols = sorted(candles.active_symbols())
        newest = [t for t in candles.newest_candles(symbols).values() if t is not None]
        if not newest:
            raise dg.Failure("no candles stored yet; add a symbol first")
        end = max(newest) + MINUTE_MS  # the data's own end: a chart of history is a chart too
        start = end - end % DAY_MS - (settings.chart_days - 1) * DAY_MS
        recent_start = end - settings.chart_window_hours * 60 * MINUTE_MS
        for symbol in symbols:
            minutes = candles.read_candles(symbol, start, end)
            charts.append(
                SymbolChart(
                    symbol,
                    overview=rollup(minutes, "1h", start, end),
                    recent=minutes[minutes["timestamp"] >= recent_start],
                    holes=candles.holes(symbol, start, end),
                )
            )
    path = settings.charts_dir / "price_chart.html"
    size = write_page(build_figure(charts, title=f"tradebeat — up to {iso_utc(end - MINUTE_MS)}"), path)
    chart_log.info("chart of %d symbols written to %s (%d bytes)", len(charts), path, size)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "open": dg.MetadataValue.url(path.resolve().as_uri()),
            "page_bytes": size,
            "symbols": len(charts),
            "preview": dg.MetadataValue.md(_preview(charts)),
        }
    )


def _preview(charts: list[SymbolChart]) -> str:
    lines = ["| symbol | last close | change over the window |", "|---|---|---|"]
    for c in charts:
        closes = c.recent["close"].dropna()
        if len(closes):
            change = (closes.iloc[-1] / closes.iloc[0] - 1) * 100
            lines.append(f"| {c.symbol} | {closes.iloc[-1]:,.2f} | {change:+.2f}% |")
        else:
            lines.append(f"| {c.symbol} | - | - |")
    return "\n".join(lines)
