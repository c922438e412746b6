"""Binance kline rows as CSV bytes (the archives' format) read whole with numpy.

`parse_klines` turns each decimal string into a double with Python's `float`: an archive month read
row by row through it went at ~100k candles/s, too slow for a full-history backfill; this reads
~1M/s (`benchmarks/archive_parse.py`). Every field's digits become one integer M at once (eight ASCII
digits per 64-bit word, SWAR), and a value with k digits after its point is M / 10**k. For M < 2**53
and k <= 22 both operands are exact doubles, so the one correctly rounded IEEE division rounds the
exact decimal value: the double `float(text)` gives, to the last bit (Clinger's fast path, the one
CPython's own strtod takes). A field with more digits, or a larger M, goes through `float` one by one.

Only plain rows are read here: twelve fields of digits with at most one point, each row ending in a
newline, every required value present, the times without a point. For anything else (a sign, an
exponent, spaces, `\\r`, a missing value, a row of 11 fields) `parse_kline_csv` returns None and the
caller hands the rows to `parse_klines`, whose verdict (the values, or the refusal and its message)
stands. So the two parsers cannot disagree on a value, only on speed.
"""

from typing import Any

import numpy as np
import pandas as pd

from tradebeat_pipeline.candles import REQUIRED_COLUMNS
from tradebeat_pipeline.exchange.binance import KLINE_CLOSE_TIME, KLINE_FIELDS, MalformedAnswer

ROW_FIELDS = 12
_TIME_FIELDS = [KLINE_FIELDS["timestamp"], KLINE_CLOSE_TIME]  # integers, as `parse_klines` reads them
_REQUIRED_FIELDS = [*(KLINE_FIELDS[c] for c in REQUIRED_COLUMNS), KLINE_CLOSE_TIME]
_DECIMAL_FIELDS = [f for f in KLINE_FIELDS.values() if f not in _TIME_FIELDS]  # read as `float` reads
_TRADES = _DECIMAL_FIELDS.index(KLINE_FIELDS["trades"])
_READ_ORDER = _TIME_FIELDS + _DECIMAL_FIELDS  # field 11 is unused
_COMMA, _POINT, _NEWLINE, _ZERO, _NINE = (ord(c) for c in ",.\n09")
# Rows are read ~3,600 at a time (512 KiB): every array of a chunk stays in the CPU's cache, and none is
# large enough to be mapped fresh from the kernel, page fault by page fault, on every call.
_CHUNK_BYTES = 1 << 19
_WORD = 8  # digits per uint64
_MAX_DIGITS = 2 * _WORD
_EXACT_BELOW = 2**53  # every integer below is an exact double
_POW10 = 10.0 ** np.arange(23)  # 10**22 is the largest exact power of ten
_ZEROS = 0x3030303030303030
# The 16 bytes before a field's end, as two words: the last n bytes are the field's digits, the rest
# belong to the fields before it and are cleared. Row n of the table keeps the last n (little-endian:
# the first byte is the lowest lane).
_LANES = [((1 << (8 * n)) - 1) << (8 * (_WORD - n)) for n in range(_WORD + 1)]
_KEEP = np.array([(_LANES[max(n - _WORD, 0)], _LANES[min(n, _WORD)]) for n in range(17)], np.uint64)
_U8 = np.uint64


def parse_kline_csv(body: bytes, *, where: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """What `parse_klines` gives for these CSV rows, or None when a row is not plain (then ask it).

    `body` is whole rows, each ending in a newline, no header. Raises `MalformedAnswer` for a trade
    count that is not a whole number, which `parse_klines` cannot store either.
    """
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    start = rows = 0
    while start < len(body):
        end = body.find(b"\n", start + _CHUNK_BYTES) + 1 or len(body)
        part = _chunk(body if (start, end) == (0, len(body)) else body[start:end], rows, where)
        if part is None:
            return None
        parts.append(part)
        rows += part[0].shape[1]
        start = end
    if not parts:
        return None
    times = np.concatenate([p[0] for p in parts], axis=1)
    numbers = np.concatenate([p[1] for p in parts], axis=1)
    values = dict(zip(_TIME_FIELDS, times, strict=True)) | dict(zip(_DECIMAL_FIELDS, numbers, strict=True))
    columns: dict[str, Any] = {c: values[f] for c, f in KLINE_FIELDS.items()}
    # What `parse_klines`' astype("Int64") makes of the floats, 1 under the mask included.
    trades = numbers[_TRADES]
    missing = np.isnan(trades)
    columns["trades"] = pd.arrays.IntegerArray(np.where(missing, 1.0, trades).astype(np.int64), missing)
    return pd.DataFrame(columns), values[KLINE_CLOSE_TIME]


def _chunk(text: bytes, first_row: int, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Whole rows: their two times (int64) and nine decimal fields (float64), one row per field."""
    layout = _layout(text)
    if layout is None:
        return None
    ends, unpointed_ends, *per_field = layout
    # One row per read field, times first: the first 7 rows are the required fields.
    digits, decimals, pointed = (a.take(_READ_ORDER, axis=0) for a in per_field)
    if digits[: len(_REQUIRED_FIELDS)].min() == 0 or pointed[:2].any():
        return None  # a missing value or a time with a point: `parse_klines` says what it makes of it
    if (pointed & (digits == 0)).any() or digits[:2].max() > _MAX_DIGITS:
        return None  # "." alone, or a time longer than any time
    integers = _integers(text, unpointed_ends, digits)
    times, exact, decimal_digits = integers[:2].view(np.int64), integers[2:], digits[2:]
    numbers = exact.astype(np.float64)
    numbers /= _POW10.take(decimals[2:], mode="clip")  # clipped: past 22 digits, `float` reads it
    inexact = (decimal_digits > _MAX_DIGITS) | (exact >= _EXACT_BELOW)
    if inexact.any():
        for j, i in np.argwhere(inexact).tolist():
            numbers[j, i] = float(_field(text, ends, i * ROW_FIELDS + _DECIMAL_FIELDS[j]))
        if not np.isfinite(numbers[inexact]).all():
            return None  # 400 digits make inf: `parse_klines` names it
    empty = decimal_digits == 0
    if empty.any():
        numbers[empty] = np.nan  # an empty optional field: the source lacks the value
    trades = numbers[_TRADES]
    whole = np.isnan(trades) | ((trades == np.floor(trades)) & (trades < 2**63))
    if not whole.all():
        row = int(np.flatnonzero(~whole)[0])
        value = _field(text, ends, row * ROW_FIELDS + _DECIMAL_FIELDS[_TRADES]).decode("ascii")
        raise MalformedAnswer(
            f"{where}: kline #{first_row + row} has a trade count that is not whole: {value!r:.40}"
        )
    return times, numbers


def _layout(text: bytes) -> tuple[np.ndarray, ...] | None:
    """Each field's end (the offset of its comma or newline) in the text and in the text without its
    points; and per field and row, its digits, its digits after the point, whether it has a point.
    None unless every row is 12 fields of digits with at most one point."""
    data = np.frombuffer(text, np.uint8)
    if not len(data) or data[-1] != _NEWLINE or data.max() > _NINE:
        return None
    marks = np.flatnonzero(data < _ZERO)  # commas, points, newlines, and whatever should not be there
    kinds = data[marks]
    is_point = kinds == _POINT
    is_newline = kinds == _NEWLINE
    rows = int(np.count_nonzero(is_newline))
    points = int(np.count_nonzero(is_point))
    if points + rows + np.count_nonzero(kinds == _COMMA) != len(kinds):
        return None
    separators = np.flatnonzero(~is_point)
    if len(separators) != rows * ROW_FIELDS or not is_newline[separators[ROW_FIELDS - 1 :: ROW_FIELDS]].all():
        return None  # a row with another number of fields
    at_point = np.flatnonzero(is_point)
    if points and is_point[at_point + 1].any():  # the mark after a point is the end of its field
        return None  # a field with two points
    ends = marks[separators]
    # Minus the points before: separators[i] - i of the marks before field i's end are points.
    unpointed_ends = ends - separators
    unpointed_ends += np.arange(len(separators))
    fields = at_point - np.arange(points)  # the field each point is in
    pointed = np.zeros(len(ends), bool)
    pointed[fields] = True
    decimals = np.zeros(len(ends), np.intp)
    decimals[fields] = ends[fields] - marks[at_point] - 1
    digits = np.empty(len(ends), np.intp)
    digits[0] = ends[0]
    np.subtract(ends[1:], ends[:-1], out=digits[1:])
    digits[1:] -= 1
    digits -= pointed
    return ends, unpointed_ends, *(a.reshape(rows, ROW_FIELDS).T for a in (digits, decimals, pointed))


def _integers(text: bytes, unpointed_ends: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """Per read field (`_READ_ORDER`) and row, the integer its digits make, point dropped (the last
    16 digits: a longer field is read by `float`)."""
    rows = digits.shape[1]
    # 16 "0" bytes first, so even the first field has 16 bytes before its end.
    unpointed = b"0" * _MAX_DIGITS + text.replace(b".", b"")
    windows = np.ndarray((len(unpointed) - _MAX_DIGITS + 1,), "V16", buffer=unpointed, strides=(1,))
    at = unpointed_ends.reshape(rows, ROW_FIELDS).take(_READ_ORDER, axis=1).T.ravel()  # +16 bytes
    words = windows[at].view("<u8")  # per field: the 16th to 9th bytes before its end, the last 8
    words ^= _U8(_ZEROS)  # digits 0-9, without a borrow from the other fields' bytes
    words &= _KEEP.take(digits.ravel(), axis=0, mode="clip").ravel()  # take: ~20x fancy indexing
    _eight_digits(words)
    pairs = words.reshape(-1, 2)
    integers: np.ndarray = pairs[:, 0] * _U8(10**_WORD)
    integers += pairs[:, 1]
    return integers.reshape(len(_READ_ORDER), rows)


def _eight_digits(word: np.ndarray) -> None:
    """In place: each word's 8 digit values (the first in the lowest byte) as their number."""
    pairs = word >> _U8(8)
    word *= _U8(10)
    word += pairs  # each even byte: two digits
    quads = word >> _U8(16)
    quads &= _U8(0x000000FF000000FF)
    quads *= _U8(1 + (10000 << 32))
    word &= _U8(0x000000FF000000FF)
    word *= _U8(100 + (1000000 << 32))
    word += quads
    word >>= _U8(32)


def _field(body: bytes, ends: np.ndarray, index: int) -> bytes:
    start = int(ends[index - 1]) + 1 if index else 0
    return body[start : int(ends[index])]
