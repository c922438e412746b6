"""`tradebeat`: manage symbols, backfill history as one Dagster run, account for gaps, export, check
health, serve the sandbox exchange, run the demo or the UI for real use (`dev`).

Exit codes: 0 done, 1 the work failed (exchange, store or run; `gaps`: unexplained holes remain),
2 the input was refused; `status` answers 0-3 like a monitoring plugin.

This module parses and validates the command line with the standard library only: each command's
module (and with it Dagster, ccxt or pandas) is imported only once its input is known to be good, so
`--help` and a mistyped symbol answer at once.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from tradebeat_pipeline.errors import Failed, Refused
from tradebeat_pipeline.symbols import normalize_symbol
from tradebeat_pipeline.timewindows import (
    EXCHANGE_EPOCH,
    FIRST_MONTH,
    month_of,
    parse_day,
    parse_day_or_month,
    parse_instant,
    utc_today,
)

if TYPE_CHECKING:
    from tradebeat_pipeline.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNKNOWN = 0, 1, 2, 3
TIMEFRAMES = ("1m", "5m", "1h", "1d")  # checked against rollups.TIMEFRAMES by a test
log = logging.getLogger("tradebeat.cli")

Command = Callable[[argparse.Namespace, "Settings"], int]


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:
        if exc.code not in (0, None) and words[:1] == ["status"]:
            return EXIT_UNKNOWN  # a monitor must never read a usage error as "down"
        raise
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_REFUSED
    # For `status`, anything that stops the check itself means "cannot tell", never "down".
    unknown = EXIT_UNKNOWN if args.run.endswith(":status") else None
    try:
        args.validate(args)
        from tradebeat_pipeline.settings import Settings

        settings = Settings.load()
        _configure_logging(settings)
        log.info("tradebeat %s", " ".join(words))
        return int(_command(args.run)(args, settings))
    except Refused as exc:
        print(f"tradebeat: {exc}", file=sys.stderr)
        return unknown or EXIT_REFUSED
    except Failed as exc:
        print(f"tradebeat: {exc}", file=sys.stderr)
        return unknown or EXIT_FAILED


def _command(path: str) -> Command:
    """`module:function` of a command, imported now that its input is known to be good."""
    module, _, name = path.partition(":")
    command: Command = getattr(importlib.import_module(f"tradebeat_pipeline.cli.{module}"), name)
    return command


def _configure_logging(settings: "Settings") -> None:
    """tradebeat's loggers at LOG_LEVEL to logs/<component>.log, warnings also to the console."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # the console gets problems; the files get everything
    settings.install_logs()


# -- validation: standard library only, before any command module is imported ------------------


def _nothing(args: argparse.Namespace) -> None:
    return None


def _symbol(args: argparse.Namespace) -> None:
    args.symbol = normalize_symbol(args.symbol)


def _symbol_list(args: argparse.Namespace) -> None:
    args.symbols = list(dict.fromkeys(normalize_symbol(s) for s in args.symbols))


def _symbol_and_range(args: argparse.Namespace) -> None:
    _symbol(args)
    args.start, args.end = day_range(args.start, args.end)


def _export(args: argparse.Namespace) -> None:
    _symbol_and_range(args)
    if args.out.suffix != ".parquet":
        raise Refused(f"--out {args.out}: expected a .parquet file name")


def _sandbox(args: argparse.Namespace) -> None:
    if args.replay and args.now:
        raise Refused("--now (historical mode) and --replay (live replay) exclude each other")
    if args.now:
        try:
            args.now = parse_instant(args.now)
        except ValueError as exc:
            raise Refused(f"--now {exc}") from None


def _backfill_range(args: argparse.Namespace) -> None:
    _symbol(args)
    args.start, args.end = history_range(args.start, args.end)


def history_range(start_text: str, end_text: str, today: date | None = None) -> tuple[date, date]:
    """--start/--end of a backfill, each `YYYY-MM` (a whole month) or `YYYY-MM-DD`: in order, from
    Binance's first month to the current one (UTC). Returns the first and the last day they name."""
    try:
        (start, start_is_month), (end, end_is_month) = (
            parse_day_or_month(start_text),
            parse_day_or_month(end_text, end=True),
        )
    except ValueError as exc:
        raise Refused(str(exc)) from None
    today = today or utc_today()
    if start > end:
        raise Refused(f"--start {start_text} is after --end {end_text}")
    if (month_of(start) if start_is_month else start) < (FIRST_MONTH if start_is_month else EXCHANGE_EPOCH):
        raise Refused(f"--start {start_text} is before {EXCHANGE_EPOCH}, when Binance spot trading began")
    if (month_of(end) > month_of(today)) if end_is_month else (end > today):
        raise Refused(f"--end {end_text} is in the future (today is {today} UTC)")
    return start, min(end, today)


def day_range(start_text: str, end_text: str, today: date | None = None) -> tuple[date, date]:
    """--start/--end as dates: well formed, in order, from Binance's first day to today (UTC)."""
    try:
        start, end = parse_day(start_text), parse_day(end_text)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    today = today or utc_today()
    if start > end:
        raise Refused(f"--start {start} is after --end {end}")
    if start < EXCHANGE_EPOCH:
        raise Refused(f"--start {start} is before {EXCHANGE_EPOCH}, when Binance spot trading began")
    if end > today:
        raise Refused(f"--end {end} is in the future (today is {today} UTC)")
    return start, end


# -- the command line ------------------------------------------------------------------------


# argparse names the type of add_subparsers() only privately; annotations alone use it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradebeat", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(title="commands")
    _symbol_commands(commands)
    _history_commands(commands)
    _service_commands(commands)
    return parser


def command(
    group: Subcommands,
    name: str,
    run: str,
    validate: Callable[[argparse.Namespace], None] = _nothing,
    help: str = "",
) -> argparse.ArgumentParser:
    """A command: `run` names its function as `module:function` under `cli/`, imported only once
    `validate` has accepted the arguments."""
    sub = group.add_parser(name, help=help)
    sub.set_defaults(run=run, validate=validate)
    return sub


def _symbol_commands(commands: Subcommands) -> None:
    symbols = commands.add_parser("symbols", help="add, list or remove symbols")
    symbol_commands = symbols.add_subparsers(title="symbols commands")
    add = command(
        symbol_commands,
        "add",
        "symbols:add",
        _symbol_list,
        help="register symbols (validated on the exchange)",
    )
    add.add_argument("symbols", nargs="+", metavar="SYMBOL", help="e.g. BTC/USDT")
    listing = command(
        symbol_commands, "list", "symbols:list_", help="list symbols (active ones unless told otherwise)"
    )
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="active and inactive symbols")
    which.add_argument("--inactive", action="store_true", help="only removed (inactive) symbols")
    listing.add_argument("--json", action="store_true", help="one JSON array on one line")
    remove = command(
        symbol_commands, "remove", "symbols:remove", _symbol, help="stop tracking a symbol (its data is kept)"
    )
    remove.add_argument("symbol", metavar="SYMBOL")


def _history_commands(commands: Subcommands) -> None:
    backfill = command(
        commands,
        "backfill",
        "history:backfill",
        _backfill_range,
        help="load the whole UTC months covering a range as ONE Dagster run",
    )
    _range_arguments(backfill, "YYYY-MM[-DD]")
    backfill.add_argument(
        "--rollups",
        action="store_true",
        help="also compute the 5m/1h/1d rollups of those months in the same run (costs Dagster "
        "bookkeeping for three more assets per month)",
    )

    status = command(
        commands,
        "status",
        "status:status",
        help="health check: exit 0 healthy, 1 degraded, 2 down, 3 cannot tell",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on one line")

    gaps = command(
        commands,
        "gaps",
        "history:gaps",
        _symbol_and_range,
        help="account for every minute of a range: stored, or a hole and why it is there",
    )
    _range_arguments(gaps)
    gaps.add_argument("--json", action="store_true", help="one JSON object on one line")
    gaps.add_argument(
        "--repair", action="store_true", help="refetch the days with unexplained holes as ONE run first"
    )

    verify = command(
        commands,
        "verify",
        "verify:verify",
        _backfill_range,
        help="compare the stored candles of a range, bit for bit, with Binance's checksum-verified "
        "archives: exit 0 identical, 1 not (a refused archive file, or no day verifiable, is 1 too: "
        "the store cannot be proven there); days not yet published are reported, not failed",
    )
    verify.description = (
        "Download the archives' checksums and files for the range again and compare them, candle by "
        "candle and bit for bit on every column, with the store. Exit 0: identical. Exit 1: a minute "
        "differs, is missing or is extra; or an archive file was refused (bad checksum, corrupt, failed "
        "download), or no day could be verified, since the store cannot be proven there. Days whose "
        "file is not published yet are reported as not verifiable and fail nothing."
    )
    _range_arguments(verify, "YYYY-MM[-DD]")
    verify.add_argument("--json", action="store_true", help="one JSON object on one line")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="upsert the archive's values of the differing and missing minutes in one transaction "
        "(a correction: new ingested_at, logged); extra stored minutes are reported, never deleted, "
        "since the archive may lack what the API served",
    )

    export = command(
        commands, "export", "export:export", _export, help="write candles or rollups as zstd Parquet (DuckDB)"
    )
    _range_arguments(export)
    export.add_argument("--timeframe", choices=TIMEFRAMES, default="1m")
    export.add_argument("--out", required=True, type=Path, metavar="FILE.parquet")


def _service_commands(commands: Subcommands) -> None:
    demo = command(
        commands,
        "demo",
        "demo:demo",
        help="run everything offline: sandbox exchange (live replay) + Dagster UI and daemon",
    )
    _ui_arguments(demo)
    demo.add_argument("--exchange-port", type=int, default=18081, help="sandbox exchange port")
    demo.add_argument("--symbols", default="BTC/USDT,ETH/USDT,SOL/USDT", help="comma-separated")

    dev = command(
        commands,
        "dev",
        "demo:dev",
        help="run the Dagster UI and daemon for real use: the project's DAGSTER_HOME, charts served",
    )
    _ui_arguments(dev)

    sandbox = command(
        commands, "sandbox", "demo:sandbox", _sandbox, help="serve the offline Binance-compatible exchange"
    )
    sandbox.add_argument("--port", type=int, default=18081)
    sandbox.add_argument("--now", metavar="ISO-8601", help="historical mode: the exchange's fixed clock")
    sandbox.add_argument(
        "--replay", action="store_true", help="live replay: recorded minutes mapped onto the wall clock"
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


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    """The ports of what `demo` and `dev` serve: the Dagster UI and the chart pages."""
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (127.0.0.1)")
    parser.add_argument(
        "--charts-port", type=int, default=None, help="port serving the chart pages (default CHARTS_PORT)"
    )


def _range_arguments(parser: argparse.ArgumentParser, form: str = "YYYY-MM-DD") -> None:
    parser.add_argument("symbol", metavar="SYMBOL")
    parser.add_argument("--start", required=True, metavar=form)
    parser.add_argument("--end", required=True, metavar=form, help="inclusive")
