"""`tradebeat backfill` and `tradebeat gaps`: load whole months of history as ONE Dagster run, and
account for every minute of a day range (repairing its unexplained holes with another run when
asked). Dagster is imported only by what launches a run: a plain `gaps` reads the store alone."""

import argparse
import asyncio
import json
import sys
from datetime import date, timedelta
from typing import TYPE_CHECKING, TextIO

from tradebeat_pipeline import progress
from tradebeat_pipeline.errors import Refused
from tradebeat_pipeline.quality import UNEXPLAINED, GapReport
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import CandleStore, SymbolWrite, open_store
from tradebeat_pipeline.timewindows import (
    day_window,
    iso_utc,
    last_closed_minute,
    month_key,
    month_of,
    months_between,
    next_month,
    utc_today,
)

if TYPE_CHECKING:
    import dagster as dg

EXIT_OK, EXIT_FAILED = 0, 1


def backfill(args: argparse.Namespace, settings: Settings) -> int:
    """The whole months covering --start..--end as ONE run (a month is the partition: loading part
    of one would show it materialized while it is not), saying so when a day range was widened."""
    from tradebeat_pipeline.cli.runs import instance
    from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME

    symbol: str = args.symbol
    start: date = args.start
    end: date = args.end
    with open_store(settings) as store:
        if symbol not in store.active_symbols():
            raise Refused(f"{symbol} is not registered; run `tradebeat symbols add {symbol}` first")
    with instance() as dagster:
        if not dagster.has_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol):
            raise Refused(f"{symbol} has no Dagster partition; run `tradebeat symbols add {symbol}`")
    first, last = month_of(start), month_of(end)
    if start != first or end != min(next_month(last) - timedelta(days=1), utc_today()):
        print(f"{symbol}: {start}..{end} widened to the whole months {month_key(first)}..{month_key(last)}")
    first_ms = known_first_candle(symbol, settings)
    if first_ms is None:
        print(f"{symbol}: the exchange has no candles at all; nothing to backfill")
        return EXIT_OK
    listed = month_of(first_ms)
    if last < listed:
        print(
            f"{symbol}: the exchange's first candle is {iso_utc(first_ms)}; "
            f"{month_key(first)}..{month_key(last)} lies before it, nothing to backfill"
        )
        return EXIT_OK
    if first < listed:
        skipped = months_between(first, listed)[:-1]
        print(
            f"{symbol}: the exchange's first candle is {iso_utc(first_ms)}; "
            f"skipping {month_key(skipped[0])}..{month_key(skipped[-1])}"
        )
        first = listed
    return run_backfill(symbol, first, last, rollups=args.rollups)


def run_backfill(
    symbol: str, first: date, last: date, *, rollups: bool = False, out: TextIO | None = None
) -> int:
    """Months first..last of one symbol as ONE run recorded in the instance, with a progress bar,
    and what it stored (or why it failed) in a few lines."""
    from tradebeat_pipeline.cli.runs import instance, materialize_history

    out = out or sys.stdout
    months = len(months_between(first, last))
    span = f"{month_key(first)}..{month_key(last)} ({months} month{'s' * (months != 1)})"
    print(f"{symbol}: backfilling {span} as one run", file=out)
    with instance() as dagster, progress.shown():
        result = materialize_history(dagster, [symbol], first, last, rollups=rollups)
    return _report(symbol, first, last, result, out)


def _report(symbol: str, start: date, end: date, result: "dg.ExecuteInProcessResult", out: TextIO) -> int:
    """What the run stored, in a few lines; a failed run or unexplained holes exit 1."""
    from tradebeat_pipeline.defs.checks import GAPS_EXPLAINED, OHLC_VALID
    from tradebeat_pipeline.defs.metadata import GapsMetadata, OhlcMetadata, RunMetadata

    if not result.success:
        errors = [
            e.step_failure_data.error.message.strip()
            for e in result.all_events
            if e.is_step_failure and e.step_failure_data.error is not None
        ]
        print(
            f"tradebeat: backfill of {symbol} failed (run {result.run_id}): "
            f"{' | '.join(errors) or 'see the run in the Dagster UI'}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    # One materialization per partition, each with the run's one write's metadata.
    stored = next(
        RunMetadata.read(e.materialization.metadata)
        for e in result.get_asset_materialization_events()
        if e.asset_key is not None and e.asset_key.path == ["ohlcv_1m"]
    )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    gaps = GapsMetadata.read(checks[GAPS_EXPLAINED].metadata)
    print(
        f"{symbol}: run {result.run_id} stored {stored.inserted} new, {stored.corrected} corrected, "
        f"{stored.unchanged} unchanged candles; {gaps.explained_minutes} minutes the exchange itself "
        "has no candles for",
        file=out,
    )
    if not checks[OHLC_VALID].passed:
        ohlc = OhlcMetadata.read(checks[OHLC_VALID].metadata)
        print(
            f"tradebeat: warning: {symbol}: {ohlc.violations} impossible candles stored as the exchange "
            "sent them (see the ohlc_valid check in the Dagster UI)",
            file=sys.stderr,
        )
    if not checks[GAPS_EXPLAINED].passed:
        reasons = ": " + " | ".join(stored.fetch_failures) if stored.fetch_failures else ""
        last_day = min(next_month(end) - timedelta(days=1), utc_today())
        print(
            f"tradebeat: {symbol}: {gaps.unexplained_minutes} minutes of {month_key(start)}.."
            f"{month_key(end)} could not be fetched{reasons}; "
            f"`tradebeat gaps {symbol} --start {start} --end {last_day} --repair` asks again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def known_first_candle(symbol: str, settings: Settings) -> int | None:
    """Where the symbol's history begins: as the store knows it, else asked of the exchange once
    and recorded, so the run this command launches does not ask again."""
    from tradebeat_pipeline.candles import empty_candles

    with open_store(settings) as store:
        known = store.first_candles([symbol])[symbol]
        if known is not None:
            return known
        first_ms = asyncio.run(first_candle_on_exchange(symbol))
        if first_ms is not None:
            store.ingest([SymbolWrite(symbol, empty_candles(), first_candle_ms=first_ms)])
        return first_ms


async def first_candle_on_exchange(symbol: str) -> int | None:
    """Where the symbol's history begins, asked of the exchange (ccxt is imported only here)."""
    from tradebeat_pipeline.defs.resources import ExchangeResource

    async with ExchangeResource().open() as exchange:
        return await exchange.first_candle_ms(symbol)


def gaps(args: argparse.Namespace, settings: Settings) -> int:
    symbol: str = args.symbol
    start: date = args.start
    end: date = args.end
    with open_store(settings) as store:
        report = gap_report(store, symbol, start, end)
        active = symbol in store.active_symbols()
    if args.repair and report.unexplained:
        if not active:
            raise Refused(f"{symbol} is not active; add it again to repair its holes")
        first = month_of(min(h.start for h in report.holes if h.kind in UNEXPLAINED))
        last = month_of(max(h.end for h in report.holes if h.kind in UNEXPLAINED))
        # In JSON mode stdout carries only the report.
        run_backfill(symbol, first, last, rollups=True, out=sys.stderr if args.json else sys.stdout)
        with open_store(settings) as store:
            report = gap_report(store, symbol, start, end)
    if args.json:
        print(json.dumps(report.as_json(), separators=(",", ":")))
    else:
        _print_gaps(report, start, end)
    return EXIT_OK if report.unexplained == 0 else EXIT_FAILED


def gap_report(store: CandleStore, symbol: str, start: date, end: date) -> GapReport:
    """The closed minutes of days start..end accounted for (an unknown symbol is refused)."""
    return store.gap_report(symbol, day_window(start)[0], min(day_window(end)[1], last_closed_minute()))


def _print_gaps(report: GapReport, start: date, end: date) -> None:
    print(f"{report.symbol} {start}..{end}")
    if report.holes:
        print(f"{'start':<21} {'end':<21} {'minutes':>7}  kind")
        for h in report.holes:
            print(f"{iso_utc(h.start):<21} {iso_utc(h.end):<21} {h.minutes:>7}  {h.kind}")
    print(
        f"expected {report.expected}, stored {report.stored}, halted {report.halted}, "
        f"explained {report.explained}, unexplained {report.unexplained}"
    )
