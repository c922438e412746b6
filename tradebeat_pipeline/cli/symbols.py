"""`tradebeat symbols add|list|remove`: the symbols tradebeat tracks, in the store and as Dagster's
dynamic partitions. Dagster and ccxt are imported by the commands that need them (`list` does not)."""

import argparse
import asyncio
import json
from collections.abc import Sequence

from tradebeat_pipeline.errors import Refused
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline.timewindows import iso_utc

EXIT_OK = 0


async def _validate_on_exchange(symbols: Sequence[str]) -> None:
    from tradebeat_pipeline.defs.resources import ExchangeResource

    async with ExchangeResource().open() as exchange:
        for symbol in symbols:
            await exchange.check_symbol(symbol)


def add(args: argparse.Namespace, settings: Settings) -> int:
    """Register symbols, all or nothing: every one is validated on the exchange first."""
    from tradebeat_pipeline.cli.runs import instance
    from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
    from tradebeat_pipeline.exchange import ExchangeFailure

    symbols: list[str] = args.symbols
    try:
        asyncio.run(_validate_on_exchange(symbols))
    except ExchangeFailure as exc:
        raise Refused(f"{exc}; no symbol was added") from exc
    with open_store(settings) as store:
        for symbol in symbols:
            store.register_symbol(symbol)
    with instance() as dagster:
        known = set(dagster.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
        dagster.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [s for s in symbols if s not in known])
    for symbol in symbols:
        print(f"added {symbol}")
    return EXIT_OK


def list_(args: argparse.Namespace, settings: Settings) -> int:
    active = None if args.all else not args.inactive
    with open_store(settings) as store:
        rows = store.list_symbols(active=active)
    if args.json:
        listed = [
            {
                "symbol": r.symbol,
                "active": r.is_active,
                "registered": r.created_at,
                "first_candle": None if r.first_candle is None else iso_utc(r.first_candle),
                "last_candle": None if r.last_candle is None else iso_utc(r.last_candle),
                "candles": r.candles,
            }
            for r in rows
        ]
        print(json.dumps(listed, separators=(",", ":")))
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


def remove(args: argparse.Namespace, settings: Settings) -> int:
    from tradebeat_pipeline.cli.runs import instance
    from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME

    symbol: str = args.symbol
    with open_store(settings) as store:
        if symbol not in store.active_symbols():
            raise Refused(f"{symbol} is not an active symbol; nothing was changed")
        store.deactivate_symbol(symbol)
    with instance() as dagster:
        if dagster.has_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol):
            dagster.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol)
    print(f"removed {symbol} (its candles are kept)")
    return EXIT_OK
