"""Rollups of 1-minute candles to 5m/1h/1d with DuckDB, and Parquet export (no Dagster inside).

DuckDB cannot download its SQLite extension here, so the store hands frames over and DuckDB queries
them in place (a registered pandas frame is scanned without a copy).
"""

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS

TIMEFRAMES: dict[str, int] = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "1h": 60 * MINUTE_MS, "1d": DAY_MS}
ROLLUP_TIMEFRAMES = ("5m", "1h", "1d")
# A bucket's candle: first open, highest high, lowest low, last close, summed volumes, and how many
# of its minutes had a candle. A bucket missing minutes is kept and marked incomplete, never hidden.
ROLLUP_COLUMNS = (*CANDLE_COLUMNS[:8], "minutes", "complete")  # timestamp .. trades, then coverage

_ROLLUP_SQL = """
SELECT (timestamp // $bucket) * $bucket AS timestamp,
       arg_min(open, timestamp) AS open,
       max(high) AS high,
       min(low) AS low,
       arg_max(close, timestamp) AS close,
       sum(volume) AS volume,
       sum(quote_volume) AS quote_volume,
       sum(trades)::BIGINT AS trades,
       count(*)::BIGINT AS minutes
FROM candles
WHERE timestamp >= $start AND timestamp < $end
GROUP BY 1
"""


def rollup(candles: pd.DataFrame, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    """1-minute candles of one symbol rolled up to `timeframe` over [start_ms, end_ms), buckets
    aligned to UTC. Every bucket of the range appears, an empty one too (no prices, 0 minutes), and
    a bucket is complete only when every one of its minutes has a candle: nothing is hidden."""
    import duckdb  # here, not at import: only the runs that roll up pay for it

    bucket = bucket_ms(timeframe)
    start = start_ms - start_ms % bucket
    with duckdb.connect() as con:
        con.register("candles", candles)
        found = con.execute(_ROLLUP_SQL, {"bucket": bucket, "start": start, "end": end_ms}).df()
    frame = found.set_index("timestamp").reindex(pd.RangeIndex(start, end_ms, bucket, name="timestamp"))
    frame = frame.reset_index()
    frame["minutes"] = frame["minutes"].fillna(0).astype("int64")
    frame["complete"] = frame["minutes"] == bucket // MINUTE_MS
    frame["trades"] = frame["trades"].astype("Int64")
    return frame.loc[:, list(ROLLUP_COLUMNS)]


def windows_to_recompute(
    start_ms: int, end_ms: int, *, previous_ms: int | None, changed_days: Iterable[int]
) -> list[tuple[int, int]]:
    """The UTC days of [start_ms, end_ms) a rollup must compute again: all of them the first time;
    after a computation at `previous_ms`, only the days whose candles changed since (`changed_days`,
    their starts) and the days the clock has moved through since (their buckets are new, even the
    empty ones). Days are whole: every bucket of a recomputed day is written again."""
    if previous_ms is None:
        return [(start_ms, end_ms)] if end_ms > start_ms else []
    days = set(changed_days)
    day = max(start_ms, previous_ms - previous_ms % DAY_MS)
    while day < end_ms:
        days.add(day)
        day += DAY_MS
    windows: list[tuple[int, int]] = []
    for first in sorted(d for d in days if start_ms <= d < end_ms):
        last = min(first + DAY_MS, end_ms)
        if windows and windows[-1][1] == first:
            windows[-1] = (windows[-1][0], last)
        else:
            windows.append((first, last))
    return windows


def bucket_ms(timeframe: str) -> int:
    try:
        return TIMEFRAMES[timeframe]
    except KeyError:
        raise ValueError(f"unknown timeframe {timeframe!r}; one of {', '.join(TIMEFRAMES)}") from None


def export_parquet(frame: pd.DataFrame, path: Path) -> int:
    """Write a frame as zstd Parquet with DuckDB; returns the file's size in bytes."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as con:
        con.register("frame", frame)
        # COPY takes no parameter for its target; the path is quoted as a SQL string literal.
        target = "'" + str(path).replace("'", "''") + "'"
        con.execute(
            f"COPY (SELECT * FROM frame ORDER BY timestamp) TO {target} (FORMAT parquet, COMPRESSION zstd)"
        )
    return path.stat().st_size
