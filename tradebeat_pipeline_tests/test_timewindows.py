"""Time windows: UTC days in epoch ms, runs of days as one window, the last closed minute."""

from datetime import date

from tradebeat_pipeline.timewindows import (
    MINUTE_MS,
    contiguous_day_runs,
    day_window,
    day_windows,
    last_closed_minute,
)
from tradebeat_pipeline_tests.conftest import ms


def test_consecutive_days_form_one_window() -> None:
    days = [date(2020, 1, 3), date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 5)]
    assert contiguous_day_runs(days) == [
        (date(2020, 1, 1), date(2020, 1, 3)),
        (date(2020, 1, 5), date(2020, 1, 5)),
    ]


def test_a_day_window_is_the_utc_day_in_epoch_ms() -> None:
    assert day_window(date(2020, 1, 1)) == (1577836800000, 1577923200000)


def test_days_become_as_few_windows_as_possible_cut_at_a_given_instant() -> None:
    days = [date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 5)]
    cut = ms("2020-01-05T00:10:00Z")
    assert day_windows(days, until_ms=cut) == [
        (ms("2020-01-01T00:00:00Z"), ms("2020-01-03T00:00:00Z")),
        (ms("2020-01-05T00:00:00Z"), cut),
    ]
    assert day_windows([date(2020, 1, 6)], until_ms=cut) == []


def test_the_last_closed_minute_ends_where_the_open_one_begins() -> None:
    assert last_closed_minute(ms("2020-01-01T00:10:59.999Z")) == ms("2020-01-01T00:10:00Z")
    assert last_closed_minute(ms("2020-01-01T00:10:00Z")) % MINUTE_MS == 0
