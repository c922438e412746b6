"""The candle column contract and the pure functions over it (no I/O, no Dagster).

One definition of the columns: the store's schema, the exchange parser and the IO manager all use
`CANDLE_COLUMNS`, so a column added here is added everywhere or fails loudly.
"""

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

PRICE_COLUMNS = ("open", "high", "low", "close")
# Order matters: it is the order of Binance's kline row (fields 0-5, 7-10) and of the SQL columns.
CANDLE_COLUMNS = (
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_volume",
    "taker_buy_quote_volume",
)
REQUIRED_COLUMNS = CANDLE_COLUMNS[:6]
# A frame holding several symbols' candles names each row's symbol in this column.
SYMBOL_COLUMN = "symbol"


def dtype(column: str) -> Any:
    """The contract's dtype of a candle column: int64 open times, nullable Int64 trade counts."""
    if column == "timestamp":
        return "int64"
    if column == "trades":
        return "Int64"
    return "float64"


def empty_candles() -> pd.DataFrame:
    """A frame with the contract's columns and dtypes and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=dtype(c)) for c in CANDLE_COLUMNS})


def clean_candles(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate pages into one frame sorted by time with one row per minute (last answer wins)."""
    parts = [f for f in frames if len(f)]
    if not parts:
        return empty_candles()
    candles = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    ts = candles["timestamp"].to_numpy()
    if len(ts) < 2 or bool((ts[1:] > ts[:-1]).all()):
        # Already one row per minute in order (a history read month by month): no hashing, no
        # sort, no copy of millions of rows.
        return candles.reset_index(drop=True)
    # A stable sort keeps answers in arrival order within a minute; the last of each minute wins.
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    last = np.r_[ts[1:] != ts[:-1], True]
    return candles.take(order[last]).reset_index(drop=True)


def with_symbols(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Several symbols' candles in one frame with a `symbol` column."""
    parts = [f.assign(**{SYMBOL_COLUMN: s}) for s, f in frames.items()]
    if not parts:
        return empty_candles().assign(**{SYMBOL_COLUMN: pd.Series(dtype="object")})
    return pd.concat(parts, ignore_index=True)
