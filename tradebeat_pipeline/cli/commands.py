"""`tradebeat`: manage symbols, backfill history as one Dagster run, account for gaps, serve the
sandbox exchange.

Exit codes: 0 done, 1 the work failed (exchange, store or run; `gaps`: unexplained holes remain),
2 the input was refused.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import dagster as dg

from tradebeat_pipeline import health
from tradebeat_pipeline.budget import WINDOW_S, BudgetUse, Lane, WeightBudget, ledger_path
from tradebeat_pipeline.definitions import resources
from tradebeat_pipeline.defs.assets import ROLLUP_ASSETS, ohlcv_1m
from tradebeat_pipeline.defs.checks import GAPS_EXPLAINED, OHLC_VALID
from tradebeat_pipeline.defs.partitions import BEAT_MINUTE_TAG, KIND_TAG, SYMBOLS_PARTITIONS_NAME, range_tags
from tradebeat_pipeline.defs.resources import ExchangeResource
from tradebeat_pipeline.exchange import ExchangeFailure
from tradebeat_pipeline.quality import UNEXPLAINED, GapReport
from tradebeat_pipeline.rollups import TIMEFRAMES, export_parquet, rollup
from tradebeat_pipeline.settings import DEFAULT_DAGSTER_HOME, PROJECT_DIR, Settings, SettingsError
from tradebeat_pipeline.store.sqlite import SQLiteStore, StoreError, UnknownSymbol
from tradebeat_pipeline.symbols import SymbolError, normalize_symbol
from tradebeat_pipeline.timewindows import (
    DAY_MS,
    EXCHANGE_EPOCH,
    MINUTE_MS,
    day_window,
    iso_utc,
    parse_day,
    utc_day,
)

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
log = logging.getLogger("tradebeat.cli")


class Refused(Exception):
    """Input tradebeat will not act on; the message says why."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        words = list(sys.argv[1:] if argv is None else argv)
        if exc.code not in (0, None) and words[:1] == ["status"]:
            return int(health.Health.UNKNOWN)  # a monitor must never read a usage error as "down"
        raise
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_REFUSED
    # For `status`, anything that stops the check itself means "cannot tell", never "down".
    unknown = int(health.Health.UNKNOWN) if args.run is status_command else None
    try:
        settings = Settings.load()
        _configure_logging(settings)
        log.info("tradebeat %s", " ".join(argv if argv is not None else sys.argv[1:]))
        return int(args.run(args, settings))
    except (Refused, SymbolError, SettingsError) as exc:
        print(f"tradebeat: {exc}", file=sys.stderr)
        return unknown or EXIT_REFUSED
    except (ExchangeFailure, StoreError) as exc:
        print(f"tradebeat: {exc}", file=sys.stderr)
        return unknown or EXIT_FAILED


def _configure_logging(settings: Settings) -> None:
    """tradebeat's loggers at LOG_LEVEL to logs/<component>.log, warnings also to the console."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # the console gets problems; the files get everything
    settings.install_logs()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradebeat", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    symbols = commands.add_parser("symbols", help="add, list or remove symbols")
    symbol_commands = symbols.add_subparsers(title="symbols commands")
    add = symbol_commands.add_parser("add", help="register symbols (validated against the exchange)")
    add.add_argument("symbols", nargs="+", metavar="SYMBOL", help="e.g. BTC/USDT")
    add.set_defaults(run=symbols_add)
    listing = symbol_commands.add_parser("list", help="list symbols (active ones unless told otherwise)")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="active and inactive symbols")
    which.add_argument("--inactive", action="store_true", help="only removed (inactive) symbols")
    listing.add_argument("--json", action="store_true", help="one JSON array on one line")
    listing.set_defaults(run=symbols_list)
    remove = symbol_commands.add_parser("remove", help="stop tracking a symbol (its data is kept)")
    remove.add_argument("symbol", metavar="SYMBOL")
    remove.set_defaults(run=symbols_remove)

    backfill = commands.add_parser("backfill", help="load whole UTC days as ONE Dagster run")
    backfill.add_argument("symbol", metavar="SYMBOL")
    backfill.add_argument("--start", required=True, metavar="YYYY-MM-DD")
    backfill.add_argument("--end", required=True, metavar="YYYY-MM-DD", help="inclusive")
    backfill.add_argument(
        "--rollups",
        action="store_true",
        help="also compute the 5m/1h/1d rollups of those days in the same run (costs Dagster "
        "bookkeeping for three more assets per day)",
    )
    backfill.set_defaults(run=backfill_command)

    status = commands.add_parser(
        "status",
        help="health check: exit 0 healthy, 1 degraded, 2 down, 3 cannot tell",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on one line")
    status.set_defaults(run=status_command)

    gaps = commands.add_parser(
        "gaps", help="account for every minute of a range: stored, or a hole and why it is there"
    )
    gaps.add_argument("symbol", metavar="SYMBOL")
    gaps.add_argument("--start", required=True, metavar="YYYY-MM-DD")
    gaps.add_argument("--end", required=True, metavar="YYYY-MM-DD", help="inclusive")
    gaps.add_argument("--json", action="store_true", help="one JSON object on one line")
    gaps.add_argument(
        "--repair", action="store_true", help="refetch the days with unexplained holes as ONE run first"
    )
    gaps.set_defaults(run=gaps_command)

    export = commands.add_parser("export", help="write candles or rollups as zstd Parquet (DuckDB)")
    export.add_argument("symbol", metavar="SYMBOL")
    export.add_argument("--start", required=True, metavar="YYYY-MM-DD")
    export.add_argument("--end", required=True, metavar="YYYY-MM-DD", help="inclusive")
    export.add_argument("--timeframe", choices=list(TIMEFRAMES), default="1m")
    export.add_argument("--out", required=True, type=Path, metavar="FILE.parquet")
    export.set_defaults(run=export_command)

    demo = commands.add_parser(
        "demo", help="run everything offline: sandbox exchange (live replay) + Dagster UI and daemon"
    )
    demo.add_argument("--port", type=int, default=3000, help="Dagster UI port (127.0.0.1)")
    demo.add_argument("--exchange-port", type=int, default=18081, help="sandbox exchange port")
    demo.add_argument("--symbols", default="BTC/USDT,ETH/USDT,SOL/USDT", help="comma-separated")
    demo.set_defaults(run=demo_command)

    sandbox = commands.add_parser("sandbox", help="serve the offline Binance-compatible exchange")
    sandbox.add_argument("--port", type=int, default=18081)
    sandbox.add_argument("--now", metavar="ISO-8601", help="historical mode: the exchange's fixed clock")
    sandbox.add_argument(
        "--replay",
        action="store_true",
        help="live replay: recorded minutes mapped onto the wall clock",
    )
    sandbox.add_argument(
        "--weight-limit",
        type=int,
        default=6000,
        help="REQUEST_WEIGHT per minute the sandbox declares and enforces",
    )
    sandbox.add_argument(
        "--synthetic-markets",
        type=int,
        default=0,
        metavar="N",
        help="also list N made-up markets S000/USDT.. (for many-symbol benchmarks)",
    )
    sandbox.set_defaults(run=sandbox_command)
    return parser


def instance() -> dg.DagsterInstance:
    """The Dagster instance in DAGSTER_HOME (the project's dagster_home/ unless set); use it in a
    `with` block so it is closed (an instance left open lingers in Dagster's process-wide state)."""
    if not os.environ.get("DAGSTER_HOME"):
        DEFAULT_DAGSTER_HOME.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(DEFAULT_DAGSTER_HOME)
    return dg.DagsterInstance.get()


def _symbols(raw: Sequence[str]) -> list[str]:
    symbols = [normalize_symbol(s) for s in raw]
    return list(dict.fromkeys(symbols))


async def _validate_on_exchange(symbols: Sequence[str]) -> None:
    async with ExchangeResource().open() as exchange:
        for symbol in symbols:
            await exchange.check_symbol(symbol)


def symbols_add(args: argparse.Namespace, settings: Settings) -> int:
    symbols = _symbols(args.symbols)
    try:
        asyncio.run(_validate_on_exchange(symbols))  # all or nothing: validate every one first
    except ExchangeFailure as exc:
        raise Refused(f"{exc}; no symbol was added") from exc
    with SQLiteStore(settings.db_path) as store:
        for symbol in symbols:
            store.register_symbol(symbol)
    with instance() as dagster:
        known = set(dagster.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
        dagster.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [s for s in symbols if s not in known])
    for symbol in symbols:
        print(f"added {symbol}")
    return EXIT_OK


def symbols_list(args: argparse.Namespace, settings: Settings) -> int:
    active = None if args.all else not args.inactive
    with SQLiteStore(settings.db_path) as store:
        rows = store.list_symbols(active=active)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "symbol": r.symbol,
                        "active": r.is_active,
                        "registered": r.created_at,
                        "first_candle": None if r.first_candle is None else iso_utc(r.first_candle),
                        "last_candle": None if r.last_candle is None else iso_utc(r.last_candle),
                        "candles": r.candles,
                    }
                    for r in rows
                ],
                separators=(",", ":"),
            )
        )
        return EXIT_OK
    print(
        f"{'symbol':<14} {'active':<6} {'registered':<20} {'first candle':<20} "
        f"{'last candle':<20} {'candles':>9}"
    )
    for r in rows:
        first = iso_utc(r.first_candle) if r.first_candle is not None else "-"
        last = iso_utc(r.last_candle) if r.last_candle is not None else "-"
        print(
            f"{r.symbol:<14} {'yes' if r.is_active else 'no':<6} {r.created_at:<20} {first:<20} "
            f"{last:<20} {r.candles:>9}"
        )
    return EXIT_OK


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """Health as a monitoring plugin reports it; any doubt is UNKNOWN (3), never HEALTHY."""
    now_s = health.clock()
    now_ms = int(now_s * 1000)
    if not settings.db_path.exists():
        print(f"tradebeat: UNKNOWN: DB_PATH {settings.db_path} does not exist", file=sys.stderr)
        return int(health.Health.UNKNOWN)
    try:
        with SQLiteStore(settings.db_path) as store:
            symbols = [health.symbol_health(store, s, now_ms) for s in sorted(store.active_symbols())]
        with instance() as dagster:
            beats = [
                health.BeatRun(
                    status=r.dagster_run.status.value,
                    created_s=r.create_timestamp.timestamp(),
                    minute=_beat_minute(r.dagster_run.tags.get(BEAT_MINUTE_TAG)),
                )
                for r in dagster.get_run_records(
                    filters=dg.RunsFilter(tags={KIND_TAG: "heartbeat"}), limit=10
                )
            ]
            heartbeats = [h.timestamp for h in dagster.get_daemon_heartbeats().values()]
        ledger = ledger_path(settings.db_path, settings.api_url)
        budget = WeightBudget(ledger, 0, Lane.BULK, clock=health.clock).use() if ledger.exists() else None
    except (StoreError, sqlite3.Error, dg.DagsterError, OSError) as exc:
        print(f"tradebeat: UNKNOWN: {exc}", file=sys.stderr)
        return int(health.Health.UNKNOWN)
    report = health.judge(
        symbols,
        now_s=now_s,
        freshness_minutes=settings.freshness_minutes,
        daemon_heartbeat_s=max(heartbeats, default=None),
        beats=beats,
    )
    if args.json:
        out = report.as_json()
        out["rate_budget"] = None if budget is None else asdict(budget)
        print(json.dumps(out, separators=(",", ":")))
    else:
        _print_status(report)
        _print_budget(budget)
    return int(report.health)


def _print_budget(use: BudgetUse | None) -> None:
    """The shared request-weight budget: why a backfill may be going slowly."""
    if use is None:
        print("rate budget: no request sent yet")
        return
    line = (
        f"rate budget: {use.beat + use.bulk:,} of {use.per_minute:,.0f} weight in the last {WINDOW_S} s "
        f"(heartbeat {use.beat:,}, backfills and the rest {use.bulk:,})"
    )
    if use.paused_for_s > 0:
        line += f"; the exchange paused every request for {use.paused_for_s:.0f}s more (Retry-After)"
    print(line)


def _beat_minute(tag: str | None) -> str | None:
    return iso_utc(int(tag)) if tag is not None and tag.isdigit() else None


def _print_status(report: health.Report) -> None:
    print(f"tradebeat {report.health.name} at {report.now}" + "".join(f"\n  - {r}" for r in report.reasons))
    daemon = (
        "no heartbeat"
        if report.daemon_heartbeat_age_s is None
        else f"last heartbeat {report.daemon_heartbeat_age_s:.0f}s ago"
    )
    beat = report.last_beat
    last = "none" if beat is None else f"{beat.status} for minute {beat.minute or '-'}"
    print(f"daemon: {daemon}; last beat: {last}")
    print(
        f"{'symbol':<14} {'newest candle':<21} {'complete through':<21} {'lag min':>7} "
        f"{'today':>6} {'unexplained 24h':>15}"
    )
    for s in report.symbols:
        lag = "-" if s.lag_minutes is None else f"{s.lag_minutes}{'*' if s.lag_explained else ''}"
        print(
            f"{s.symbol:<14} {s.newest_candle or '-':<21} {s.complete_through or '-':<21} {lag:>7} "
            f"{s.candles_today:>6} {s.unexplained_minutes_24h:>15}"
        )
    if any(s.lag_explained for s in report.symbols):
        print("* the exchange itself has no candles for the lagging minutes")


def symbols_remove(args: argparse.Namespace, settings: Settings) -> int:
    symbol = normalize_symbol(args.symbol)
    with SQLiteStore(settings.db_path) as store:
        if symbol not in store.active_symbols():
            raise Refused(f"{symbol} is not an active symbol; nothing was changed")
        store.deactivate_symbol(symbol)
    with instance() as dagster:
        if dagster.has_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol):
            dagster.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol)
    print(f"removed {symbol} (its candles are kept)")
    return EXIT_OK


def backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    symbol = normalize_symbol(args.symbol)
    start, end = _day_range(args.start, args.end)
    with SQLiteStore(settings.db_path) as store:
        if symbol not in store.active_symbols():
            raise Refused(f"{symbol} is not registered; run `tradebeat symbols add {symbol}` first")
    with instance() as dagster:
        if not dagster.has_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol):
            raise Refused(f"{symbol} has no Dagster partition; run `tradebeat symbols add {symbol}`")
        first_ms = asyncio.run(_first_candle(symbol))
        if first_ms is None:
            print(f"{symbol}: the exchange has no candles at all; nothing to backfill")
            return EXIT_OK
        first_day = utc_day(first_ms)
        if end < first_day:
            print(
                f"{symbol}: the exchange's first candle is {iso_utc(first_ms)}; "
                f"{start}..{end} lies before it, nothing to backfill"
            )
            return EXIT_OK
        if start < first_day:
            print(
                f"{symbol}: the exchange's first candle is {iso_utc(first_ms)}; "
                f"skipping {start}..{first_day - timedelta(days=1)}"
            )
            start = first_day
        return run_backfill(dagster, symbol, start, end, rollups=args.rollups)


def run_backfill(
    dagster: dg.DagsterInstance,
    symbol: str,
    start: date,
    end: date,
    *,
    rollups: bool = False,
    out: TextIO | None = None,
) -> int:
    """Materialize days start..end of one symbol as ONE run recorded in the instance (its rollups
    too when asked: each asset adds Dagster's per-partition bookkeeping, ~60 ms a day)."""
    out = out or sys.stdout
    days = (end - start).days + 1
    print(f"{symbol}: backfilling {start}..{end} ({days} day{'s' * (days != 1)}) as one run", file=out)
    result = dg.materialize(
        [ohlcv_1m, *ROLLUP_ASSETS] if rollups else [ohlcv_1m],
        instance=dagster,
        resources=resources(),
        tags={**range_tags((start, symbol), (end, symbol)), "tradebeat/kind": "backfill"},
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
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
    metadata: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        if event.asset_key == ohlcv_1m.key:
            metadata = {k: v.value for k, v in event.materialization.metadata.items()}
            break
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    gaps = checks[GAPS_EXPLAINED].metadata
    explained = gaps["explained_minutes"].value
    print(
        f"{symbol}: run {result.run_id} stored {metadata.get('inserted', 0)} new, "
        f"{metadata.get('corrected', 0)} corrected, {metadata.get('unchanged', 0)} unchanged "
        f"candles; {explained} minutes the exchange itself has no candles for",
        file=out,
    )
    if not checks[OHLC_VALID].passed:
        violations = checks[OHLC_VALID].metadata["violations"].value
        print(
            f"tradebeat: warning: {symbol}: {violations} impossible candles stored as the exchange "
            "sent them (see the ohlc_valid check in the Dagster UI)",
            file=sys.stderr,
        )
    if not checks[GAPS_EXPLAINED].passed:
        reasons = metadata.get("fetch_failures") or []
        print(
            f"tradebeat: {symbol}: {gaps['unexplained_minutes'].value} minutes of {start}..{end} could not "
            f"be fetched{': ' + ' | '.join(reasons) if reasons else ''}; "
            f"`tradebeat gaps {symbol} --start {start} --end {end} --repair` asks again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def gaps_command(args: argparse.Namespace, settings: Settings) -> int:
    symbol = normalize_symbol(args.symbol)
    start, end = _day_range(args.start, args.end)
    with SQLiteStore(settings.db_path) as store:
        report = _gap_report(store, symbol, start, end)
    if args.repair and report.unexplained:
        with SQLiteStore(settings.db_path) as store:
            if symbol not in store.active_symbols():
                raise Refused(f"{symbol} is not active; add it again to repair its holes")
        first = utc_day(min(h.start for h in report.holes if h.kind in UNEXPLAINED))
        last = utc_day(max(h.end for h in report.holes if h.kind in UNEXPLAINED))
        with instance() as dagster:
            # In JSON mode stdout carries only the report.
            run_backfill(
                dagster, symbol, first, last, rollups=True, out=sys.stderr if args.json else sys.stdout
            )
        with SQLiteStore(settings.db_path) as store:
            report = _gap_report(store, symbol, start, end)
    if args.json:
        print(json.dumps(report.as_json(), separators=(",", ":")))
    else:
        _print_gaps(report, start, end)
    return EXIT_OK if report.unexplained == 0 else EXIT_FAILED


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    """Stored 1-minute candles of the range, rolled up on the fly for 5m/1h/1d (same code as the
    rollup assets), so an export is never staler than the candles."""
    symbol = normalize_symbol(args.symbol)
    start, end = _day_range(args.start, args.end)
    if args.out.suffix != ".parquet":
        raise Refused(f"--out {args.out}: expected a .parquet file name")
    now = int(time.time() * 1000)
    window = (day_window(start)[0], min(day_window(end)[1], now - now % MINUTE_MS))
    with SQLiteStore(settings.db_path) as store:
        try:
            candles = store.read_candles(symbol, *window)
        except UnknownSymbol as exc:
            raise Refused(str(exc)) from None
    frame = candles if args.timeframe == "1m" else rollup(candles, args.timeframe, *window)
    size = export_parquet(frame, args.out)
    print(
        f"{symbol}: {len(frame)} {args.timeframe} rows {start}..{end} written to {args.out} ({size:,} bytes)"
    )
    return EXIT_OK


def _gap_report(store: SQLiteStore, symbol: str, start: date, end: date) -> GapReport:
    now = int(time.time() * 1000)
    try:
        return store.gap_report(symbol, day_window(start)[0], min(day_window(end)[1], now - now % MINUTE_MS))
    except UnknownSymbol as exc:
        raise Refused(str(exc)) from None


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


async def _first_candle(symbol: str) -> int | None:
    async with ExchangeResource().open() as exchange:
        return await exchange.first_candle_ms(symbol)


def _day_range(start_text: str, end_text: str, today: date | None = None) -> tuple[date, date]:
    try:
        start, end = parse_day(start_text), parse_day(end_text)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    today = today or datetime.now(UTC).date()
    if start > end:
        raise Refused(f"--start {start} is after --end {end}")
    if start < EXCHANGE_EPOCH:
        raise Refused(f"--start {start} is before {EXCHANGE_EPOCH}, when Binance spot trading began")
    if end > today:
        raise Refused(f"--end {end} is in the future (today is {today} UTC)")
    return start, end


def sandbox_command(args: argparse.Namespace, settings: Settings) -> int:
    from tradebeat_pipeline.sandbox.market_data import historical_markets, replay_markets
    from tradebeat_pipeline.sandbox.server import Clock, Sandbox, serve_forever

    if args.replay and args.now:
        raise Refused("--now (historical mode) and --replay (live replay) exclude each other")
    if args.replay:
        now = int(datetime.now(UTC).timestamp() * 1000)
        anchor = now - now % DAY_MS - 30 * DAY_MS  # history reaches back 30 days
        sandbox = Sandbox(
            replay_markets(anchor, args.synthetic_markets), Clock(), weight_limit=args.weight_limit
        )
    else:
        fixed = _parse_instant(args.now) if args.now else None
        sandbox = Sandbox(
            historical_markets(args.synthetic_markets), Clock(fixed), weight_limit=args.weight_limit
        )
    print(
        f"sandbox exchange on http://127.0.0.1:{args.port} "
        f"({'live replay' if args.replay else 'historical'}); Ctrl-C stops it",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(sandbox, "127.0.0.1", args.port))
    return EXIT_OK


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    """Sandbox in live replay + `dagster dev`, with a demo database and Dagster home of their own so
    replayed candles never mix with real ones. Ctrl-C stops both and every process they started."""
    home = DEFAULT_DAGSTER_HOME / "demo"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_DAGSTER_HOME / "dagster.yaml", home / "dagster.yaml")
    exchange_url = f"http://127.0.0.1:{args.exchange_port}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DB_PATH": str(PROJECT_DIR / "data" / "demo.sqlite"),
        "BINANCE_API_URL": exchange_url,
        "BINANCE_API_KEY": "",  # never send real keys to the sandbox
        "BINANCE_SECRET_KEY": "",
        "SYMBOLS": args.symbols,
        "TRADEBEAT_ENV_FILE": str(home / "no.env"),  # the project's .env is for real Binance
    }
    processes: list[subprocess.Popen[bytes]] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # `kill` stops it as Ctrl-C does
        signal.signal(signum, _interrupt)
    try:
        processes.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "tradebeat_pipeline.cli",
                    "sandbox",
                    "--replay",
                    "--synthetic-markets",
                    "20",  # S000/USDT..S019/USDT, for adding symbols from the UI
                    "--port",
                    str(args.exchange_port),
                ],
                env,
                cwd=home,
            )
        )
        _wait_for_port(args.exchange_port, processes[0])
        dagster = str(Path(sys.executable).with_name("dagster"))
        # cwd is the demo home: `dagster dev` loads a .env from its cwd, and the project's is for Binance.
        processes.append(
            _start(
                [
                    dagster,
                    "dev",
                    "-w",
                    str(PROJECT_DIR / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(args.port),
                ],
                env,
                cwd=home,
            )
        )
        print(
            f"tradebeat demo: sandbox exchange {exchange_url} (live replay of recorded candles), "
            f"symbols {args.symbols}; Dagster UI on http://127.0.0.1:{args.port} once it has "
            "started. Ctrl-C stops everything.\n"
            f"Its health, from another shell in {PROJECT_DIR}:\n"
            f"  DAGSTER_HOME={home} DB_PATH={env['DB_PATH']} BINANCE_API_URL={exchange_url} "
            "uv run tradebeat status",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
    finally:
        _stop(processes)
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start(argv: list[str], env: dict[str, str], cwd: Path) -> "subprocess.Popen[bytes]":
    # A session of its own, so stopping it reaches every process it started.
    return subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)  # noqa: S603 (our own argv)


def _wait_for_port(port: int, process: "subprocess.Popen[bytes]", timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Refused(f"the sandbox exchange exited (is port {port} in use? try --exchange-port)")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise Refused(f"the sandbox exchange did not listen on port {port} within {timeout_s:.0f}s")


def _stop(processes: list["subprocess.Popen[bytes]"]) -> None:
    """SIGINT each process group (dagster dev shuts its children down), then SIGKILL stragglers."""
    for process in reversed(processes):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
    for process in reversed(processes):
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its group
        process.wait()


def _parse_instant(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"--now {text!r}: expected ISO-8601 UTC such as 2020-01-03T12:00:30Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


if __name__ == "__main__":
    sys.exit(main())
