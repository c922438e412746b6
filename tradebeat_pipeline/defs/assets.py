"""The candle assets: `ohlcv_1m` (the fetch, planned and done by `ingest`), its rollups, the chart.

Plotly and DuckDB are imported inside the bodies that use them, so a heartbeat run never loads them.
"""

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from tradebeat_pipeline.budget import Lane
from tradebeat_pipeline.candles import SYMBOL_COLUMN
from tradebeat_pipeline.defs.checks import CHECK_SPECS, evaluate
from tradebeat_pipeline.defs.partitions import (
    BEAT_MINUTE_TAG,
    beat_minute_of,
    candle_partitions,
    months_by_symbol,
    partition_key,
)
from tradebeat_pipeline.defs.resources import (
    ArchivesResource,
    ExchangeResource,
    StoreResource,
    run_settings,
)
from tradebeat_pipeline.exchange import Exchange
from tradebeat_pipeline.ingest import (
    Batch,
    IngestError,
    RunPlan,
    StreamedBackfill,
    fetch_backfill,
    fetch_beat,
    plan_run,
)
from tradebeat_pipeline.rollups import ROLLUP_COLUMNS, ROLLUP_TIMEFRAMES, rollup, windows_to_recompute
from tradebeat_pipeline.store import SymbolWrite
from tradebeat_pipeline.timewindows import (
    DAY_MS,
    MINUTE_MS,
    iso_utc,
    last_closed_minute,
    month_window,
    now_ms,
)

if TYPE_CHECKING:
    from tradebeat_pipeline.chart import SymbolChart

# Component loggers: their lines go to logs/<component>.log and, inside runs, to the run's log in
# the UI (`tradebeat` is a managed Python logger of the instance).
beat_log = logging.getLogger("tradebeat.heartbeat")
# How far before a rollup's last materialization its next run looks for changed candles: longer than
# any write that could have overlapped it (a beat's lasts seconds, a backfill's run is its own).
ROLLUP_OVERLAP_MS = 10 * MINUTE_MS
chart_log = logging.getLogger("tradebeat.chart")

# BackfillPolicy.single_run() is marked beta; it is the documented way to load a range as one run.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


@dg.asset(
    partitions_def=candle_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key="candle_io_manager",
    group_name="candles",
    kinds={"sqlite"},
    check_specs=CHECK_SPECS,
)
def ohlcv_1m(
    context: dg.AssetExecutionContext,
    exchange: ExchangeResource,
    archives: ArchivesResource,
    store: StoreResource,
) -> Iterator[dg.Output[Batch] | dg.Output[StreamedBackfill] | dg.AssetCheckResult]:
    """Closed 1-minute OHLCV candles; one partition is one UTC month of one symbol.

    A backfill fetches its whole months (up to now for the current one), all symbols at once (years
    of history are one run): closed days from Binance's checksum-verified archive files, the rest
    from the REST API. A heartbeat fetches only what each symbol lacks
    up to its minute. Both ask again about unexplained holes in their months, and record the holes
    their answers reveal.
    """
    settings = run_settings()
    beat_minute = beat_minute_of(context.run.tags) if BEAT_MINUTE_TAG in context.run.tags else None
    try:
        with store.open() as candles:
            plan = plan_run(
                candles, months_by_symbol(context.partition_keys), beat_minute=beat_minute, now_ms=now_ms()
            )
        for symbol in plan.skipped:  # a partition the symbols sensor has not validated yet
            beat_log.warning("%s: skipped this beat, not registered yet", symbol)
        if plan.is_beat:
            batch = asyncio.run(
                _fetch(
                    exchange,
                    Lane.BEAT,
                    lambda ex: fetch_beat(ex, plan, buffer_s=settings.heartbeat_buffer_seconds),
                )
            )
        else:
            # Fetched on a thread of its own while the IO manager writes the months already here.
            streamed = StreamedBackfill(
                plan.requested, lambda on_month: _backfill(exchange, archives, plan, on_month)
            )
    except IngestError as exc:
        raise dg.Failure(str(exc)) from exc
    if plan.is_beat:
        yield dg.Output(batch)  # the IO manager writes it in one transaction and keeps the report on it
    else:
        yield dg.Output(streamed)
        batch = streamed.batch
    with store.open() as candles:
        yield from evaluate(candles, batch, freshness_minutes=settings.freshness_minutes)


async def _fetch(
    exchange: ExchangeResource, lane: Lane, fetch: Callable[[Exchange], Awaitable[Batch]]
) -> Batch:
    async with exchange.open(lane) as client:
        return await fetch(client)


async def _backfill(
    exchange: ExchangeResource,
    archives: ArchivesResource,
    plan: RunPlan,
    on_month: Callable[[SymbolWrite], None],
) -> Batch:
    async with exchange.open(Lane.BULK) as client, archives.open() as reader:
        return await fetch_backfill(client, plan, reader, on_month)


def _rollup_asset(timeframe: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"ohlcv_{timeframe}",
        partitions_def=candle_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        io_manager_key="rollup_io_manager",
        group_name="candles",
        kinds={"duckdb", "sqlite"},
        metadata={"timeframe": timeframe},
        deps=[ohlcv_1m],
        description=f"{timeframe} candles rolled up from the 1-minute candles with DuckDB: first open, "
        "max high, min low, last close, summed volume; every bucket of the months appears, and one "
        "missing minutes is marked incomplete (`minutes`, `complete`), never hidden. The current "
        "month recomputes only the days whose candles changed since its last rollup.",
    )
    def rollup_asset(context: dg.AssetExecutionContext, store: StoreResource) -> pd.DataFrame:
        until = last_closed_minute()
        frames = []
        with store.open() as candles:
            for symbol, months in months_by_symbol(context.partition_keys).items():
                for month in months:
                    start, end = month_window(month)
                    end = min(end, until)
                    previous = _rolled_up_at(context, month, symbol) if end == until else None
                    changed = [] if previous is None else candles.days_changed(symbol, start, end, previous)
                    for a, b in windows_to_recompute(start, end, previous_ms=previous, changed_days=changed):
                        frames.append(
                            rollup(candles.read_candles(symbol, a, b), timeframe, a, b).assign(
                                **{SYMBOL_COLUMN: symbol}
                            )
                        )
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=[*ROLLUP_COLUMNS, SYMBOL_COLUMN])
        )

    return rollup_asset


def _rolled_up_at(context: dg.AssetExecutionContext, month: date, symbol: str) -> int | None:
    """Since when this rollup partition may be stale: its last materialization (epoch ms) less the
    overlap, or None if it never was materialized."""
    key = str(partition_key(month, symbol))
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1
    ).records
    # A candle written while that rollup ran may carry an earlier ingested_at than its commit.
    return int(records[0].timestamp * 1000) - ROLLUP_OVERLAP_MS if records else None


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
    from tradebeat_pipeline.chart import SymbolChart, build_figure, human_bytes, thumbnail_svg, write_page
    from tradebeat_pipeline.chart_server import CHART_PAGE, chart_url

    settings = run_settings()
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
    path = settings.charts_dir / CHART_PAGE
    size = write_page(build_figure(charts, title=f"tradebeat — up to {iso_utc(end - MINUTE_MS)}"), path)
    thumbnail = path.with_suffix(".svg")
    thumbnail.write_text(thumbnail_svg(charts), encoding="utf-8")
    chart_log.info("chart of %d symbols written to %s (%d bytes)", len(charts), path, size)
    # Served over http by `tradebeat demo` (CHARTS_PORT): a browser opens no file:// link from the UI.
    port = settings.charts_port
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "open": dg.MetadataValue.url(chart_url(port, path.name)),
            "page_bytes": size,
            "page_size": human_bytes(size),
            "symbols": len(charts),
            "preview": dg.MetadataValue.md(_preview(charts, chart_url(port, thumbnail.name))),
        }
    )


def _preview(charts: list["SymbolChart"], thumbnail_url: str) -> str:
    lines = [f"![the chart's overview]({thumbnail_url})", ""]
    lines += ["| symbol | last close | change over the window |", "|---|---|---|"]
    for c in charts:
        closes = c.recent["close"].dropna()
        if len(closes):
            change = (closes.iloc[-1] / closes.iloc[0] - 1) * 100
            lines.append(f"| {c.symbol} | {closes.iloc[-1]:,.2f} | {change:+.2f}% |")
        else:
            lines.append(f"| {c.symbol} | - | - |")
    return "\n".join(lines)
