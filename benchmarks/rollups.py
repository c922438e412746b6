"""Analytics figures: store read speed, DuckDB rollup throughput, Parquet size, chart page size.

    uv run python benchmarks/rollups.py [--store postgres]

1. One year of one symbol (525,600 synthetic 1-minute candles) in a real SQLite store: the time to
   read it back as a frame (candles/s, best of 3), and the DuckDB rollup itself to 5m/1h/1d
   (candles/s), measured separately. `--store postgres` writes and reads the same year in a
   PostgreSQL database too, in the same run, on a throwaway server started from Debian's binaries
   with its durability on (`pg_cluster.running_cluster(durable=True)`, the tests' own start-up).
2. Parquet (zstd, via DuckDB) bytes per candle on the real recorded BTC/USDT candles of
   2023-03-16..05-01 (66,087 candles; `benchmarks/data/SOURCES.md`).
3. The chart page for 10 symbols × 30 days, without plotly.js (written once beside it).

Targets: rollup ≥ 5 M candles/s, a year read ≥ 600 k candles/s from SQLite and ≥ 1 M/s from
PostgreSQL, ≤ 27 bytes/candle (freqtrade's feather on real data: 27.7).
"""

import argparse
import contextlib
import gzip
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.chart import SymbolChart, build_figure, write_page
from tradebeat_pipeline.rollups import ROLLUP_TIMEFRAMES, export_parquet, rollup
from tradebeat_pipeline.store import CandleStore, open_store
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS
from tradebeat_pipeline_tests.pg_cluster import fresh_database, running_cluster

YEAR_START = 1_672_531_200_000  # 2023-01-01T00:00Z
YEAR = 365 * 1440
RECORDED = Path(__file__).parent / "data" / "BTCUSDT-1m-2023-03-16_05-01.csv.gz"


def synthetic(n: int, start: int, seed: int = 7, price: float = 20_000.0) -> pd.DataFrame:
    """A random walk with realistic OHLC structure (high ≥ max(open, close), low ≤ min)."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate(([price], close[:-1]))
    spread = np.abs(rng.normal(0, 0.0005, n)) * close
    return pd.DataFrame(
        {
            "timestamp": start + np.arange(n, dtype=np.int64) * MINUTE_MS,
            "open": open_.round(2),
            "high": (np.maximum(open_, close) + spread).round(2),
            "low": (np.minimum(open_, close) - spread).round(2),
            "close": close.round(2),
            "volume": rng.gamma(2.0, 5.0, n).round(5),
            "quote_volume": np.nan,
            "trades": pd.array(rng.integers(1, 500, n), dtype="Int64"),
            "taker_buy_volume": np.nan,
            "taker_buy_quote_volume": np.nan,
        }
    )[list(CANDLE_COLUMNS)]


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return min(times)


def recorded() -> pd.DataFrame:
    with gzip.open(RECORDED, "rt") as f:
        rows = [line.strip().split(",") for line in f]
    frame = pd.DataFrame(
        {
            "timestamp": np.array([int(r[0]) for r in rows], dtype=np.int64),
            **{
                c: np.array([float(r[i]) for r in rows])
                for i, c in enumerate(("open", "high", "low", "close", "volume"), 1)
            },
        }
    )
    return frame


def year_in(name: str, open_it: Callable[[], CandleStore], year: pd.DataFrame) -> pd.DataFrame:
    """Write the year in one transaction, read it back best of 3; print both; the frame read."""
    end = YEAR_START + 365 * DAY_MS
    with open_it() as store:
        store.register_symbol("BTC/USDT")
        t0 = time.perf_counter()
        store.upsert_candles([("BTC/USDT", year)])
        write_s = time.perf_counter() - t0
        read_s = best_of(3, lambda: store.read_candles("BTC/USDT", YEAR_START, end))
        frame = store.read_candles("BTC/USDT", YEAR_START, end)
    assert len(frame) == YEAR
    target = "1,000,000" if name == "PostgreSQL" else "600,000"
    print(f"  {name:<10} write (one transaction)   {write_s:6.2f} s   {YEAR / write_s:>12,.0f} candles/s")
    print(
        f"  {name:<10} read to a frame          {read_s:6.2f} s   {YEAR / read_s:>12,.0f} candles/s   "
        f"(best of 3; target >= {target})"
    )
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="postgres: the year written to and read from PostgreSQL too, beside SQLite",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        year = synthetic(YEAR, YEAR_START)
        print(f"1 year x 1 symbol = {YEAR:,} candles (synthetic; quote and taker volumes NULL)")
        frame = year_in("SQLite", lambda: open_store(Path(tmp) / "bench.sqlite"), year)
        if args.store == "postgres":
            server = stack.enter_context(running_cluster(durable=True, prefix="tradebeat-pg-bench-"))
            url = stack.enter_context(fresh_database(server, "bench"))
            pg_frame = year_in("PostgreSQL", lambda: open_store(Path(tmp) / "unused.sqlite", url), year)
            pd.testing.assert_frame_equal(pg_frame, frame)
        end = YEAR_START + 365 * DAY_MS
        for tf in ROLLUP_TIMEFRAMES:
            rollup_s = best_of(5, lambda tf=tf: rollup(frame, tf, YEAR_START, end))  # type: ignore[misc]
            buckets = len(rollup(frame, tf, YEAR_START, end))
            print(
                f"  DuckDB rollup to {tf:<3}      {rollup_s:6.3f} s   {YEAR / rollup_s:>12,.0f} candles/s   "
                f"({buckets:,} buckets; target >= 5,000,000)"
            )

        real = recorded()
        sizes = {}
        for name, data in (
            ("timestamp + OHLCV", real),
            (
                "full 1m contract (NULL extras)",
                real.assign(
                    quote_volume=np.nan,
                    trades=pd.array([None] * len(real), dtype="Int64"),
                    taker_buy_volume=np.nan,
                    taker_buy_quote_volume=np.nan,
                ),
            ),
        ):
            path = Path(tmp) / "real.parquet"
            sizes[name] = export_parquet(data, path)
        print(f"\nParquet zstd on real BTC/USDT 1m candles 2023-03-16..05-01 ({len(real):,} candles)")
        for name, size in sizes.items():
            print(f"  {name:<32} {size:>10,} bytes   {size / len(real):5.1f} bytes/candle   (target <= 27)")

        now = YEAR_START + 30 * DAY_MS
        charts = []
        for i in range(10):
            minutes = synthetic(30 * 1440, YEAR_START, seed=i, price=10.0 * (i + 1) ** 3)
            charts.append(
                SymbolChart(
                    f"S{i:03d}/USDT",
                    overview=rollup(minutes, "1h", YEAR_START, now),
                    recent=minutes[minutes["timestamp"] >= now - DAY_MS],
                )
            )
        t0 = time.perf_counter()
        page = Path(tmp) / "chart.html"
        size = write_page(build_figure(charts, title="bench"), page)
        js = (Path(tmp) / "plotly.min.js").stat().st_size
        print(
            f"\nchart page, 10 symbols x 30 days (overview hourly, candles 24 h): {size / 1e6:.2f} MB "
            f"(target < 2 MB) + plotly.min.js {js / 1e6:.2f} MB once beside it; built in "
            f"{time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()
