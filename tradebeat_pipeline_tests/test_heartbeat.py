"""The heartbeat's pure decisions: months covered, minutes fetched, waiting for the close."""

import asyncio
from datetime import date

from tradebeat_pipeline.heartbeat import (
    MAX_CATCH_UP_DAYS,
    beat_months,
    beat_windows,
    wait_until_closed,
)
from tradebeat_pipeline_tests.conftest import ms

MIN = 60_000


JAN, FEB = date(2020, 1, 1), date(2020, 2, 1)


def test_a_beat_covers_only_its_own_month_in_the_middle_of_the_month() -> None:
    assert beat_months(ms("2020-01-15T12:00:00Z"), ms("2020-01-15T11:59:00Z")) == (JAN, JAN)


def test_the_first_beats_of_a_month_also_cover_the_previous_one() -> None:
    assert beat_months(ms("2020-02-01T00:01:00Z"), ms("2020-02-01T00:00:00Z")) == (JAN, FEB)
    assert beat_months(ms("2020-01-31T23:59:00Z"), None) == (JAN, JAN)


def test_after_downtime_a_beat_reaches_back_to_the_stalest_symbol_within_a_bound() -> None:
    assert beat_months(ms("2020-02-03T10:00:00Z"), ms("2020-01-30T08:00:00Z"))[0] == JAN
    first, last = beat_months(ms("2020-03-20T10:00:00Z"), ms("2020-01-01T00:00:00Z"))
    assert (first, last) == (date(2020, 3, 1), date(2020, 3, 1))  # 7 days back is still March
    windows = beat_windows(
        {"BTC/USDT": [JAN, FEB]}, {"BTC/USDT": ms("2019-12-01T00:00:00Z")}, ms("2020-02-05T10:00:00Z")
    )
    assert windows["BTC/USDT"][0] == ms("2020-02-05T10:00:00Z") - MAX_CATCH_UP_DAYS * 1440 * MIN


def test_a_symbol_fetches_what_it_lacks_plus_the_last_three_stored_minutes() -> None:
    minute = ms("2020-01-02T12:00:00Z")
    windows = beat_windows({"BTC/USDT": [JAN]}, {"BTC/USDT": minute - 10 * MIN}, minute)
    assert windows["BTC/USDT"] == (minute - 12 * MIN, minute + MIN)


def test_a_symbol_with_nothing_stored_fetches_its_whole_month_so_far() -> None:
    minute = ms("2020-01-02T12:00:00Z")
    windows = beat_windows({"BTC/USDT": [JAN]}, {"BTC/USDT": None}, minute)
    assert windows["BTC/USDT"] == (ms("2020-01-01T00:00:00Z"), minute + MIN)


def test_a_window_never_leaves_the_runs_months() -> None:
    minute = ms("2020-02-01T00:01:00Z")
    windows = beat_windows({"BTC/USDT": [FEB]}, {"BTC/USDT": ms("2020-01-31T23:50:00Z")}, minute)
    assert windows["BTC/USDT"][0] == ms("2020-02-01T00:00:00Z")


class FakeExchangeClock:
    """Only a clock: the one thing these tests cannot make real."""

    def __init__(self, now: float, exchange_lag_s: float) -> None:
        self.now = now
        self.lag = exchange_lag_s
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def server_time_ms(self) -> int:
        return int((self.now - self.lag) * 1000)


def test_a_beat_waits_for_the_buffer_after_the_close() -> None:
    minute = ms("2020-01-02T12:00:00Z")
    fake = FakeExchangeClock(now=minute / 1000 + 10, exchange_lag_s=0)
    asyncio.run(wait_until_closed(fake, minute, 5.0, sleep=fake.sleep, clock=fake.clock))  # type: ignore[arg-type]
    assert fake.now == minute / 1000 + 65


def test_a_beat_also_waits_for_an_exchange_whose_clock_is_behind() -> None:
    minute = ms("2020-01-02T12:00:00Z")
    fake = FakeExchangeClock(now=minute / 1000 + 65, exchange_lag_s=8)
    asyncio.run(wait_until_closed(fake, minute, 5.0, sleep=fake.sleep, clock=fake.clock))  # type: ignore[arg-type]
    assert fake.now - fake.lag >= minute / 1000 + 60
