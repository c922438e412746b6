"""Candle store speed: a full-history write (empty range, identical rewrite, 1 % corrected; and the
empty range again as a backfill streams it, month by month) and a symbol-year read, through the
`CandleStore` interface every caller uses.

    uv run python benchmarks/store_speed.py [--years 8.4] [--postgres]

The write is what a full-history backfill hands the store: ONE `ingest` call (one transaction) of
one symbol's 1-minute candles from 2017-08-17 to the end of 2025 (~4.4 M), with one coverage window
per month, plus the real 2023-03-24 halt as a hole; "month by month" hands the same candles as 101
parts, one per month, to one `ingest` that announced its symbol (as `ingest.StreamedBackfill` does).
The read is `read_candles` of 2025 (525,600 rows) into the contract frame, best of three.
`--postgres` runs the same against a throwaway PostgreSQL cluster started from Debian's binaries by
the tests' own start-up (tradebeat_pipeline_tests/pg_cluster.py), with the server's durability left
on (the tests switch it off). Targets: write ≥ 400,000 candles/s into an empty range, ≥ 250,000/s for
an identical rewrite, PostgreSQL at least as fast as SQLite; read ≥ 600,000 rows/s (SQLite) and
≥ 1,000,000 rows/s (PostgreSQL).
"""

import argparse
import functools
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.quality import Coverage
from tradebeat_pipeline.store import CandleStore, SymbolWrite, open_store
from tradebeat_pipeline.timewindows import MINUTE_MS, month_of, month_window, months_between
from tradebeat_pipeline_tests.pg_cluster import ClusterUnavailable, running_cluster

SYMBOL = "SYN/USDT"
STREAMED = "SYN2/USDT"  # the same candles again, written month by month into an empty range
FIRST = 1_502_928_000_000  # 2017-08-17T00:00Z, Binance's first BTC/USDT candle
LAST_MONTH = date(2025, 12, 1)
YEAR_2025 = (1_735_689_600_000, 1_767_225_600_000)
HALT = (1_679_661_600_000, 1_679_666_340_000)  # 2023-03-24 12:40..13:59 UTC: no candles at all
_T = TypeVar("_T")


def synthetic(start: int, end: int, seed: int = 7) -> pd.DataFrame:
    """Every minute of [start, end) but the halt: a random walk with every column the exchange sends."""
    ts = np.arange(start, end, MINUTE_MS, dtype=np.int64)
    ts = ts[(ts < HALT[0]) | (ts > HALT[1])]
    n = len(ts)
    rng = np.random.default_rng(seed)
    close = 4_000.0 * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate(([4_000.0], close[:-1]))
    spread = np.abs(rng.normal(0, 0.0005, n)) * close
    volume = rng.gamma(2.0, 5.0, n).round(5)
    taker = (volume * rng.uniform(0, 1, n)).round(5)
    return pd.DataFrame(
        {
            "timestamp": ts,
            "open": open_.round(2),
            "high": (np.maximum(open_, close) + spread).round(2),
            "low": (np.minimum(open_, close) - spread).round(2),
            "close": close.round(2),
            "volume": volume,
            "quote_volume": (volume * close).round(8),
            "trades": pd.array(rng.integers(1, 5_000, n), dtype="Int64"),
            "taker_buy_volume": taker,
            "taker_buy_quote_volume": (taker * close).round(8),
        }
    )[list(CANDLE_COLUMNS)]


def history(first: int) -> tuple[pd.DataFrame, list[Coverage]]:
    """The candles from `first` to the end of LAST_MONTH and one coverage window per month."""
    windows = [month_window(m) for m in months_between(month_of(first), LAST_MONTH)]
    start, end = max(first, windows[0][0]), windows[-1][1]
    candles = synthetic(start, end)
    ts = candles["timestamp"].to_numpy()
    coverage = []
    for a, b in windows:
        inside = ts[(ts >= max(a, start)) & (ts < b)]
        coverage.append(Coverage(max(a, start), b, spans=((int(inside[0]), int(inside[-1])),)))
    return candles, coverage


def corrected(candles: pd.DataFrame, share: float) -> pd.DataFrame:
    """The same candles with `share` of them revised by the exchange (a new close)."""
    revised = candles.copy()
    rows = np.random.default_rng(11).choice(len(revised), int(len(revised) * share), replace=False)
    revised.loc[rows, "close"] = revised.loc[rows, "close"] + 0.01
    return revised


@dataclass(frozen=True)
class Timing:
    """Wall seconds (what the budget counts) and this process's CPU seconds (what the store itself
    costs; steadier on a shared machine)."""

    wall: float
    cpu: float


def timed(work: Callable[[], _T]) -> tuple[Timing, _T]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def rate(count: int, timing: Timing, unit: str) -> str:
    return (
        f"{timing.wall:6.2f} s {count / timing.wall:>10,.0f} {unit}/s   "
        f"(cpu {timing.cpu:6.2f} s {count / timing.cpu:>10,.0f}/s)"
    )


def monthly(
    symbol: str, candles: pd.DataFrame, coverage: list[Coverage], first: int
) -> Iterator[SymbolWrite]:
    """The candles as a backfill streams them: one part per month, its own coverage window."""
    ts = candles["timestamp"].to_numpy()
    for cov in coverage:
        inside = (ts >= cov.start) & (ts < cov.end)
        yield SymbolWrite(symbol, candles[inside].reset_index(drop=True), [cov], first_candle_ms=first)


def run(name: str, open_it: Callable[[], CandleStore], first: int) -> None:
    candles, coverage = history(first)
    n = len(candles)
    print(f"{name}: {n:,} candles, {len(coverage)} monthly windows, one ingest each")
    with open_it() as store:
        store.register_symbol(SYMBOL)
        store.register_symbol(STREAMED)
        cases: list[tuple[str, str, Callable[[], Iterable[SymbolWrite]]]] = [
            ("empty range", SYMBOL, lambda: [SymbolWrite(SYMBOL, candles, coverage, first)]),
            ("identical rewrite", SYMBOL, lambda: [SymbolWrite(SYMBOL, candles, coverage, first)]),
            (
                "1 % corrected",
                SYMBOL,
                lambda: [SymbolWrite(SYMBOL, corrected(candles, 0.01), coverage, first)],
            ),
            ("empty, by month", STREAMED, lambda: monthly(STREAMED, candles, coverage, first)),
        ]
        for i, (case, symbol, writes) in enumerate(cases):
            ingest = functools.partial(store.ingest, writes(), now_ms=1_000 + i, symbols=[symbol])
            timing, results = timed(ingest)
            r = results[symbol]
            print(
                f"  write {case:<18} {rate(n, timing, 'candles')}  inserted {r.inserted:,}, "
                f"updated {r.updated:,}, unchanged {r.unchanged:,}, holes {len(r.holes)}"
            )
        reads = [timed(functools.partial(store.read_candles, SYMBOL, *YEAR_2025)) for _ in range(3)]
        best, frame = min(reads, key=lambda read: read[0].wall)
        print(
            f"  read  one symbol-year      {rate(len(frame), best, 'rows')}  best of 3, {len(frame):,} rows"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--years", type=float, default=None, help="only the last YEARS of history")
    parser.add_argument("--postgres", action="store_true", help="also measure a throwaway PostgreSQL")
    args = parser.parse_args()
    logging.getLogger("tradebeat.store").setLevel(logging.ERROR)  # the 1 % corrections' warning
    first = FIRST
    if args.years is not None:
        first = max(FIRST, month_window(LAST_MONTH)[1] - int(args.years * 365 * 1440) * MINUTE_MS)
    with tempfile.TemporaryDirectory() as tmp:
        run("SQLite", lambda: open_store(Path(tmp) / "candles.sqlite"), first)
    if args.postgres:
        try:
            with running_cluster(durable=True, prefix="tradebeat-pg-bench-") as server:
                run("PostgreSQL", lambda: open_store(Path("unused"), database_url=server.url()), first)
        except ClusterUnavailable as exc:
            raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
