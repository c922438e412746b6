"""The minute heartbeat's logic, apart from Dagster: which months a beat covers, which minutes each
symbol needs, waiting for the minute to close, and fetching every symbol without one failure
stopping the others."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date

from tradebeat_pipeline.exchange import Exchange, FetchResult, gather_or_cancel
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS, month_of, month_window, month_windows, span

log = logging.getLogger("tradebeat.heartbeat")

# Closed minutes fetched again on every beat, so an exchange correction of a recent candle is seen.
REFETCH_MINUTES = 3
# After downtime a beat fetches at most this many missed days; older holes are a backfill's job.
MAX_CATCH_UP_DAYS = 7
# How long a beat waits past the buffer for an exchange whose clock is behind ours.
MAX_EXCHANGE_LAG_S = 30.0


def catch_up_from(minute_ms: int) -> int:
    """The oldest minute a beat for `minute_ms` fetches after downtime: MAX_CATCH_UP_DAYS before it."""
    return minute_ms - MAX_CATCH_UP_DAYS * DAY_MS


def beat_months(minute_ms: int, oldest_newest_ms: int | None) -> tuple[date, date]:
    """Months a beat for `minute_ms` covers: its own, the previous one while the refetched minutes
    or the stalest symbol's newest candle lie there (bounded by MAX_CATCH_UP_DAYS)."""
    first = minute_ms - REFETCH_MINUTES * MINUTE_MS
    if oldest_newest_ms is not None and oldest_newest_ms < minute_ms:
        first = min(first, oldest_newest_ms)
    return month_of(max(first, catch_up_from(minute_ms))), month_of(minute_ms)


def beat_windows(
    requested: dict[str, list[date]], newest: dict[str, int | None], minute_ms: int
) -> dict[str, tuple[int, int]]:
    """Per symbol, [start, end) open times to fetch: every minute not yet stored up to the beat's
    minute, plus the last few stored ones again; never outside the run's own months, nor further
    back than MAX_CATCH_UP_DAYS (older holes are a backfill's job)."""
    windows: dict[str, tuple[int, int]] = {}
    end = minute_ms + MINUTE_MS
    for symbol, months in requested.items():
        first_allowed, last_allowed = span(month_windows(months))
        stored = newest.get(symbol)
        if stored is None:
            start = month_window(month_of(minute_ms))[0]
        else:
            start = stored + MINUTE_MS - REFETCH_MINUTES * MINUTE_MS
        start = max(start, first_allowed, catch_up_from(minute_ms))
        windows[symbol] = (start, min(end, last_allowed))
    return windows


async def wait_until_closed(
    exchange: Exchange,
    minute_ms: int,
    buffer_s: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> int:
    """Sleep until `buffer_s` after the minute closes by our clock, then until the exchange agrees;
    returns the exchange's time, so every symbol's fetch judges closed candles by it."""
    close_ms = minute_ms + MINUTE_MS
    wait = (close_ms / 1000 + buffer_s) - clock()
    if wait > 0:
        await sleep(wait)
    deadline = clock() + MAX_EXCHANGE_LAG_S
    while True:
        server_ms = await exchange.server_time_ms()
        behind = close_ms - server_ms
        if behind <= 0 or clock() >= deadline:
            return server_ms
        log.info("exchange clock is %.1fs behind the minute's close; waiting", behind / 1000)
        await sleep(behind / 1000 + 0.2)


async def fetch_windows(
    exchange: Exchange, windows: dict[str, tuple[int, int]], now_ms: int | None = None
) -> dict[str, FetchResult]:
    """Fetch every symbol's window at once; a symbol that fails gets a result that says so (its
    window becomes a `fetch_failed` hole), and the others keep their candles. With `now_ms`, the
    exchange's clock is not asked again per symbol (a third of a beat's request weight)."""

    async def one(symbol: str, start: int, end: int) -> tuple[str, FetchResult]:
        try:
            return symbol, await exchange.fetch_candles(symbol, start, end, now_ms)
        except Exception as exc:  # one symbol's failure must not cost the others their candles
            return symbol, FetchResult.failed(start, end, f"{type(exc).__name__}: {exc}")

    pairs = await gather_or_cancel(one(s, a, b) for s, (a, b) in windows.items() if b > a)
    return dict(pairs)
