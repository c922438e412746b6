"""The candle column contract and the pure functions over it (no I/O, no Dagster).

One definition of the columns: the store's schema, the exchange parser and the IO manager all use
`CANDLE_COLUMNS`, so a column added here is added everywhere or fails loudly.
"""

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

MINUTE_MS = 60_000
DAY_MS = 86_400_000

# Binance opened its spot market on 2017-07-14; nothing before it can exist.
EXCHANGE_EPOCH = date(2017, 7, 14)

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
OPTIONAL_COLUMNS = CANDLE_COLUMNS[6:]
# Field index of each column in a Binance kline row; field 6 is the close time, 11 is unused.
KLINE_FIELDS = dict(zip(CANDLE_COLUMNS, (0, 1, 2, 3, 4, 5, 7, 8, 9, 10), strict=True))
KLINE_CLOSE_TIME = 6

_SYMBOL_RE = re.compile(r"[A-Z0-9]{1,20}/[A-Z0-9]{1,20}")
SYMBOL_FORM = "a ccxt spot symbol BASE/QUOTE such as BTC/USDT"


class SymbolError(ValueError):
    """A string that is not a ccxt unified spot symbol."""


class MalformedAnswer(ValueError):
    """The exchange answered something that is not a list of well-formed klines."""


def normalize_symbol(raw: str) -> str:
    """Upper-case and trim a symbol, refusing anything but BASE/QUOTE so it is safe as a key."""
    if not isinstance(raw, str):
        raise SymbolError(f"symbol must be text, expected {SYMBOL_FORM}")
    symbol = raw.strip().upper()
    if not _SYMBOL_RE.fullmatch(symbol):
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        hint = " (derivatives symbols with ':' are not supported)" if ":" in symbol else ""
        raise SymbolError(f"invalid symbol {shown!r}{hint}: expected {SYMBOL_FORM}")
    return symbol


def empty_candles() -> pd.DataFrame:
    """A frame with the contract's columns and dtypes and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in CANDLE_COLUMNS})


def _dtype(column: str) -> Any:
    if column == "timestamp":
        return "int64"
    if column == "trades":
        return "Int64"
    return "float64"


def parse_klines(answer: Any, *, where: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Turn a raw `/api/v3/klines` answer into contract columns plus each row's close time.

    Raises `MalformedAnswer` naming what is wrong; nothing of a bad answer is ever returned.
    """
    if not isinstance(answer, list):
        kind = "text that is not JSON" if isinstance(answer, str | bytes) else type(answer).__name__
        raise MalformedAnswer(f"{where}: expected a JSON list of klines, got {kind}")
    if not answer:
        return empty_candles(), np.empty(0, dtype=np.int64)
    for i, row in enumerate(answer):
        if not isinstance(row, list) or len(row) < 11:
            raise MalformedAnswer(f"{where}: kline #{i} is not a row of at least 11 fields: {row!r:.120}")
    if any(len(row) != len(answer[0]) for row in answer):
        width = max(len(row) for row in answer)
        answer = [[*row, *([None] * (width - len(row)))] for row in answer]
    table = np.array(answer, dtype=object)
    columns = {c: _numeric_column(table[:, f], c, where) for c, f in KLINE_FIELDS.items()}
    try:
        close_times = table[:, KLINE_CLOSE_TIME].astype(np.int64)
    except (TypeError, ValueError):
        raise MalformedAnswer(f"{where}: a kline has no numeric close time (field 6)") from None
    return pd.DataFrame(columns), close_times


def _numeric_column(values: np.ndarray, column: str, where: str) -> Any:
    """One column as numbers; the fast path is numpy's own conversion of the decimal strings."""
    try:
        numbers = values.astype(np.int64 if column == "timestamp" else np.float64)
    except (TypeError, ValueError, OverflowError):
        numbers = None
    if numbers is None or not np.isfinite(numbers).all():
        # numpy turns None and "nan" into NaN: tell a missing optional value from a bad one.
        numbers = _numeric_column_checked(values, column, where)
    return pd.Series(numbers).astype("Int64").array if column == "trades" else numbers


def _numeric_column_checked(values: np.ndarray, column: str, where: str) -> np.ndarray:
    """Value by value: None only where the column is optional, otherwise finite numbers."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        if value is None:
            if column in REQUIRED_COLUMNS:
                raise MalformedAnswer(f"{where}: kline #{i} has no {column}")
            out[i] = np.nan
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise MalformedAnswer(f"{where}: kline #{i} has a non-numeric {column}: {value!r:.40}") from None
        if not np.isfinite(number) or (isinstance(value, str) and value.strip().lower() in _NAN_TEXT):
            kind = "non-numeric" if isinstance(value, str) else "non-finite"
            raise MalformedAnswer(f"{where}: kline #{i} has a {kind} {column}: {value!r:.40}")
        out[i] = number
    return out.astype(np.int64) if column == "timestamp" else out


_NAN_TEXT = {"nan", "inf", "-inf", "infinity", "-infinity", "+inf"}


def clean_candles(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate pages into one frame sorted by time with one row per minute (last answer wins)."""
    parts = [f for f in frames if len(f)]
    if not parts:
        return empty_candles()
    candles = pd.concat(parts, ignore_index=True)
    candles = candles.drop_duplicates("timestamp", keep="last").sort_values("timestamp")
    return candles.reset_index(drop=True)


def day_window(day: date) -> tuple[int, int]:
    """Epoch-ms [start, end) of a UTC day."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return start, start + DAY_MS


def parse_day(text: str) -> date:
    """A `YYYY-MM-DD` string as a date, with a message that names the expected form."""
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"invalid date {text!r}: expected YYYY-MM-DD") from None


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def contiguous_day_runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """Group days into runs of consecutive days, so each run is fetched as one window."""
    ordered = sorted(set(days))
    runs: list[tuple[date, date]] = []
    for day in ordered:
        if runs and day - runs[-1][1] == timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def missing_minutes(timestamps: Sequence[int] | np.ndarray, start_ms: int, end_ms: int) -> int:
    """How many minute open times in [start_ms, end_ms) have no candle."""
    if end_ms <= start_ms:
        return 0
    expected = (end_ms - start_ms) // MINUTE_MS
    ts = np.asarray(timestamps, dtype=np.int64)
    present = np.count_nonzero((ts >= start_ms) & (ts < end_ms))
    return int(expected - present)


def utc_day(ms: int) -> date:
    """The UTC day an epoch-ms instant falls on."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def iso_utc(ms: int) -> str:
    """Epoch ms as `2026-01-02T03:04:05Z`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
