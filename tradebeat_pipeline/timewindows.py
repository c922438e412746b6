"""Time as the pipeline counts it: epoch milliseconds, UTC minutes and days, and the windows of a
run's partitions (standard library only, so the CLI can validate a range before anything heavy loads).

Every window is half-open, [start, end), in epoch ms; a candle is named by its open time.
"""

import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

MINUTE_MS = 60_000
DAY_MS = 86_400_000

# Binance opened its spot market on 2017-07-14; nothing before it can exist.
EXCHANGE_EPOCH = date(2017, 7, 14)
# The first month a partition can name.
FIRST_MONTH = date(2017, 7, 1)


def now_ms() -> int:
    """The local clock in epoch ms."""
    return int(time.time() * 1000)


def last_closed_minute(at_ms: int | None = None) -> int:
    """The end of the last closed minute at `at_ms` (now when None): every minute opening before it
    has closed by the local clock."""
    at = now_ms() if at_ms is None else at_ms
    return at - at % MINUTE_MS


def day_window(day: date) -> tuple[int, int]:
    """Epoch-ms [start, end) of a UTC day."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return start, start + DAY_MS


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


def day_windows(days: Iterable[date], *, until_ms: int | None = None) -> list[tuple[int, int]]:
    """The days as as few [start, end) windows as possible (one per run of consecutive days), each
    cut at `until_ms` when given; windows left empty by the cut are dropped."""
    windows = [(day_window(a)[0], day_window(b)[1]) for a, b in contiguous_day_runs(days)]
    if until_ms is not None:
        windows = [(a, min(b, until_ms)) for a, b in windows]
    return [(a, b) for a, b in windows if b > a]


# -- months: the partitions' period (a month is named by its first day) ------------------------


def month_of(day_or_ms: date | int) -> date:
    """The month (its first day) an instant or a day falls in."""
    day = utc_day(day_or_ms) if isinstance(day_or_ms, int) else day_or_ms
    return day.replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_window(month: date) -> tuple[int, int]:
    """Epoch-ms [start, end) of a UTC month."""
    return day_window(month)[0], day_window(next_month(month))[0]


def months_between(first: date, last: date) -> list[date]:
    """Every month from the one holding `first` to the one holding `last`, both included."""
    months, month = [], month_of(first)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


def month_windows(months: Iterable[date], *, until_ms: int | None = None) -> list[tuple[int, int]]:
    """The months as as few [start, end) windows as possible (one per run of consecutive months),
    each cut at `until_ms` when given; windows left empty by the cut are dropped."""
    windows: list[tuple[int, int]] = []
    for start, end in sorted(month_window(m) for m in set(months)):
        if windows and windows[-1][1] == start:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    if until_ms is not None:
        windows = [(a, min(b, until_ms)) for a, b in windows]
    return [(a, b) for a, b in windows if b > a]


def month_key(month: date) -> str:
    """A month as its partition key, `YYYY-MM`."""
    return f"{month.year:04d}-{month.month:02d}"


def parse_month(text: str) -> date:
    """A `YYYY-MM` key as its month's first day."""
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except (TypeError, ValueError):
        raise ValueError(f"invalid month {text!r}: expected YYYY-MM") from None


def parse_day_or_month(text: str, *, end: bool = False) -> tuple[date, bool]:
    """`YYYY-MM-DD`, or `YYYY-MM` meaning its first day (its last day when `end`); and whether the
    text named a whole month."""
    if len(text) == 7:
        try:
            month = parse_month(text)
        except ValueError:
            raise ValueError(f"invalid date {text!r}: expected YYYY-MM or YYYY-MM-DD") from None
        return (next_month(month) - timedelta(days=1) if end else month), True
    try:
        return parse_day(text), False
    except ValueError:
        raise ValueError(f"invalid date {text!r}: expected YYYY-MM or YYYY-MM-DD") from None


def merge_windows(windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) windows as the fewest sorted ones covering the same instants (overlapping or
    touching ones joined, empty ones dropped)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def span(windows: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The smallest window holding all of `windows`."""
    ordered = list(windows)
    return min(a for a, _ in ordered), max(b for _, b in ordered)


def utc_day(ms: int) -> date:
    """The UTC day an epoch-ms instant falls on."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def utc_today() -> date:
    return datetime.now(UTC).date()


def iso_utc(ms: int) -> str:
    """Epoch ms as `2026-01-02T03:04:05Z`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_day(text: str) -> date:
    """A `YYYY-MM-DD` string as a date, with a message that names the expected form."""
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"invalid date {text!r}: expected YYYY-MM-DD") from None


def parse_instant(text: str) -> int:
    """An ISO-8601 instant (UTC unless it says otherwise) in epoch ms."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r}: expected ISO-8601 UTC such as 2020-01-03T12:00:30Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
