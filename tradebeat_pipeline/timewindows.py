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
