"""Binance's wire format: a `/api/v3/klines` answer (or an archive's CSV rows, which hold the same
twelve fields) turned into the candle column contract, refusing anything malformed whole."""

from typing import Any

import numpy as np
import pandas as pd

from tradebeat_pipeline.candles import CANDLE_COLUMNS, REQUIRED_COLUMNS, empty_candles

# Field index of each column in a Binance kline row; field 6 is the close time, 11 is unused.
KLINE_FIELDS = dict(zip(CANDLE_COLUMNS, (0, 1, 2, 3, 4, 5, 7, 8, 9, 10), strict=True))
KLINE_CLOSE_TIME = 6
_NAN_TEXT = {"nan", "inf", "-inf", "infinity", "-infinity", "+inf"}


class MalformedAnswer(ValueError):
    """The exchange answered something that is not a list of well-formed klines."""


def market_id(symbol: str) -> str:
    """Binance's id of a spot market (`BTC/USDT` -> `BTCUSDT`): what its klines endpoint and its
    archive file names use. Binance spot ids are the base and quote codes joined."""
    return symbol.replace("/", "")


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
