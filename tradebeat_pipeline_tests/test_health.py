"""The health verdict behind `tradebeat status`, on a real store with aged data."""

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tradebeat_pipeline.health import (
    BEAT_STALE_S,
    DAEMON_STALE_S,
    BeatRun,
    Health,
    SymbolHealth,
    judge,
    symbol_health,
)
from tradebeat_pipeline.quality import Coverage
from tradebeat_pipeline.store import CandleStore, SymbolWrite, open_store
from tradebeat_pipeline_tests.conftest import ms

M = 60_000
NOW_MS = ms("2026-01-01T12:00:30Z")
NOW_S = NOW_MS / 1000
LAST_CLOSED = ms("2026-01-01T11:59:00Z")


def fine(symbol: str = "BTC/USDT", lag: int = 0) -> SymbolHealth:
    return SymbolHealth(symbol, "t", "t", lag, False, 100, 0)


def beat(age_s: float, status: str = "SUCCESS") -> BeatRun:
    return BeatRun(status, NOW_S - age_s, "t")


def verdict(
    symbols: list[SymbolHealth], daemon_age_s: float | None = 10, beats: list[BeatRun] | None = None
) -> Health:
    return judge(
        symbols,
        now_s=NOW_S,
        freshness_minutes=2,
        daemon_heartbeat_s=None if daemon_age_s is None else NOW_S - daemon_age_s,
        beats=[beat(30)] if beats is None else beats,
    ).health


def test_a_fresh_daemon_recent_beats_and_symbols_within_the_limit_are_healthy() -> None:
    assert verdict([fine(lag=2), fine("ETH/USDT", lag=0)]) == Health.HEALTHY


def test_a_symbol_lagging_past_the_limit_is_degraded_unless_the_exchange_has_no_candles_there() -> None:
    assert verdict([fine(lag=3)]) == Health.DEGRADED
    explained = SymbolHealth("BTC/USDT", "t", "t", 30, True, 100, 0)
    assert verdict([explained]) == Health.HEALTHY


def test_a_recently_failed_beat_is_degraded() -> None:
    assert verdict([fine()], beats=[beat(30), beat(90, "FAILURE")]) == Health.DEGRADED
    assert verdict([fine()], beats=[beat(30), beat(BEAT_STALE_S + 60, "FAILURE")]) == Health.HEALTHY


def test_no_daemon_heartbeat_or_a_stale_one_is_down() -> None:
    assert verdict([fine()], daemon_age_s=None) == Health.DOWN
    assert verdict([fine()], daemon_age_s=DAEMON_STALE_S + 1) == Health.DOWN


def test_a_daemon_heartbeat_written_while_status_reads_is_zero_seconds_old() -> None:
    written = NOW_S + 0.6
    report = judge([fine()], now_s=NOW_S, freshness_minutes=2, daemon_heartbeat_s=written, beats=[beat(30)])
    assert report.daemon_heartbeat_age_s == 0.0


def test_no_beat_for_five_minutes_is_down_even_with_a_live_daemon() -> None:
    assert verdict([fine()], beats=[beat(BEAT_STALE_S + 1)]) == Health.DOWN
    assert verdict([fine()], beats=[]) == Health.DOWN


def test_down_outranks_degraded_and_every_reason_is_listed() -> None:
    report = judge([fine(lag=9)], now_s=NOW_S, freshness_minutes=2, daemon_heartbeat_s=None, beats=[beat(30)])
    assert report.health == Health.DOWN
    assert len(report.reasons) == 2
    assert "BTC/USDT is 9 min behind (limit 2)" in report.reasons


def candles(start: int, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [start + i * M for i in range(n)],
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 3.0,
            "quote_volume": None,
            "trades": pd.array([1] * n, dtype="Int64"),
            "taker_buy_volume": None,
            "taker_buy_quote_volume": None,
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CandleStore]:
    with open_store(tmp_path / "health.sqlite") as s:
        s.register_symbol("BTC/USDT")
        yield s


def test_complete_through_stops_before_the_first_unexplained_hole(store: CandleStore) -> None:
    start = ms("2026-01-01T11:00:00Z")
    batch = pd.concat([candles(start, 30), candles(start + 40 * M, 20)], ignore_index=True)
    store.ingest([SymbolWrite("BTC/USDT", batch, [Coverage(start, LAST_CLOSED + M)])])  # hole: pending
    figures = symbol_health(store, "BTC/USDT", NOW_MS)
    assert figures.complete_through == "2026-01-01T11:29:00Z"
    assert figures.newest_candle == "2026-01-01T11:59:00Z"
    assert (figures.lag_minutes, figures.candles_today, figures.unexplained_minutes_24h) == (0, 50, 10)


def test_an_exchange_hole_does_not_stop_complete_through(store: CandleStore) -> None:
    start = ms("2026-01-01T11:00:00Z")
    batch = pd.concat([candles(start, 30), candles(start + 40 * M, 20)], ignore_index=True)
    answer = Coverage(start, LAST_CLOSED + M, spans=((start, LAST_CLOSED),))  # one answer skipped them
    store.ingest([SymbolWrite("BTC/USDT", batch, [answer])])
    figures = symbol_health(store, "BTC/USDT", NOW_MS)
    assert figures.complete_through == "2026-01-01T11:59:00Z"
    assert figures.unexplained_minutes_24h == 0


def test_lag_is_counted_from_the_last_closed_minute(store: CandleStore) -> None:
    store.ingest([SymbolWrite("BTC/USDT", candles(ms("2026-01-01T11:00:00Z"), 50), [])])
    figures = symbol_health(store, "BTC/USDT", NOW_MS)
    assert (figures.newest_candle, figures.lag_minutes, figures.lag_explained) == (
        "2026-01-01T11:49:00Z",
        10,
        False,
    )


def test_a_symbol_without_candles_has_no_figures(store: CandleStore) -> None:
    figures = symbol_health(store, "BTC/USDT", NOW_MS)
    assert (figures.newest_candle, figures.lag_minutes, figures.candles_today) == (None, None, 0)
    assert verdict([figures]) == Health.DEGRADED


def test_a_cancelled_beat_is_no_failure_but_a_failed_one_still_is() -> None:
    # Dagster ends a run CANCELED only when asked to (a clean stop of the demo, the UI's Terminate);
    # a beat that timed out or lost its worker is failed by run monitoring, and still counts.
    assert verdict([fine()], beats=[beat(30, "CANCELED"), beat(90, "CANCELED")]) == Health.HEALTHY
    assert verdict([fine()], beats=[beat(30, "CANCELED"), beat(90, "FAILURE")]) == Health.DEGRADED
