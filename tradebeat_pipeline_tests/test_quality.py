"""Holes told apart and candles judged, as pure functions over answers and frames."""

import numpy as np
import pandas as pd

from tradebeat_pipeline.quality import (
    CONFIRM_AFTER_MS,
    EXCHANGE,
    FETCH_FAILED,
    PENDING,
    Coverage,
    Hole,
    check_ohlc,
    classify,
    gap_report,
    holes_to_probe,
    merge_adjacent,
    missing_runs,
    outside,
)
from tradebeat_pipeline_tests.conftest import ms

M = 60_000
T0 = ms("2023-03-24T12:00:00Z")
NOW = ms("2026-01-01T00:00:00Z")


def minutes(*ranges: tuple[int, int]) -> np.ndarray:
    """Open times of minutes a..b (inclusive, in minutes after T0) for each range."""
    return np.array([T0 + i * M for a, b in ranges for i in range(a, b + 1)], dtype=np.int64)


def never_stored(ms: int) -> bool:
    return False


def always_stored(ms: int) -> bool:
    return True


def test_missing_runs_are_the_minutes_without_a_candle_first_and_last_inclusive() -> None:
    ts = minutes((0, 9), (20, 29))
    assert missing_runs(ts, T0, T0 + 40 * M) == [(T0 + 10 * M, T0 + 19 * M), (T0 + 30 * M, T0 + 39 * M)]
    assert missing_runs(ts, T0 - 2 * M, T0 + 10 * M) == [(T0 - 2 * M, T0 - M)]
    assert missing_runs(minutes((0, 9)), T0, T0 + 10 * M) == []


def test_a_hole_inside_one_answer_is_the_exchanges() -> None:
    coverage = Coverage(T0, T0 + 30 * M, spans=((T0, T0 + 29 * M),))
    (hole,) = classify([(T0 + 10 * M, T0 + 19 * M)], coverage, [], is_stored=never_stored, now_ms=NOW)
    assert (hole.kind, hole.minutes, hole.detected_at) == (EXCHANGE, 10, NOW)


def test_a_hole_at_the_edge_of_the_answers_is_pending() -> None:
    # Candles on both sides, but from two different answers: not proof.
    coverage = Coverage(T0, T0 + 30 * M, spans=((T0, T0 + 9 * M), (T0 + 20 * M, T0 + 29 * M)))
    (hole,) = classify([(T0 + 10 * M, T0 + 19 * M)], coverage, [], is_stored=always_stored, now_ms=NOW)
    assert hole.kind == PENDING


def test_a_hole_where_requests_failed_is_fetch_failed_even_inside_an_answer() -> None:
    coverage = Coverage(
        T0,
        T0 + 30 * M,
        spans=((T0, T0 + 29 * M),),
        failed=((T0 + 15 * M, T0 + 16 * M, "http 500"),),
    )
    (hole,) = classify([(T0 + 10 * M, T0 + 19 * M)], coverage, [], is_stored=never_stored, now_ms=NOW)
    assert hole.kind == FETCH_FAILED


def test_two_empty_answers_for_exactly_the_hole_five_minutes_apart_make_it_the_exchanges() -> None:
    start, end = T0 + 10 * M, T0 + 19 * M
    exact = Coverage(start, end + M)
    first_seen = Hole(start, end, PENDING, NOW - CONFIRM_AFTER_MS)
    (hole,) = classify([(start, end)], exact, [first_seen], is_stored=always_stored, now_ms=NOW)
    assert hole.kind == EXCHANGE


def test_a_second_empty_answer_too_soon_leaves_the_hole_pending_and_keeps_its_first_sighting() -> None:
    start, end = T0 + 10 * M, T0 + 19 * M
    first_seen = Hole(start, end, PENDING, NOW - CONFIRM_AFTER_MS + 1)
    (hole,) = classify(
        [(start, end)], Coverage(start, end + M), [first_seen], is_stored=always_stored, now_ms=NOW
    )
    assert (hole.kind, hole.detected_at) == (PENDING, first_seen.detected_at)


def test_empty_answers_do_not_confirm_a_hole_without_candles_on_both_sides() -> None:
    start, end = T0 + 10 * M, T0 + 19 * M
    first_seen = Hole(start, end, PENDING, NOW - 2 * CONFIRM_AFTER_MS)
    (hole,) = classify(
        [(start, end)],
        Coverage(start, end + M),
        [first_seen],
        is_stored=lambda t: t < start,  # nothing stored after it: the exchange may simply be behind
        now_ms=NOW,
    )
    assert hole.kind == PENDING


def test_a_wider_refetch_does_not_count_as_asking_for_exactly_the_hole() -> None:
    start, end = T0 + 10 * M, T0 + 19 * M
    first_seen = Hole(start, end, PENDING, NOW - 2 * CONFIRM_AFTER_MS)
    (hole,) = classify(
        [(start, end)], Coverage(start, end + 2 * M), [first_seen], is_stored=always_stored, now_ms=NOW
    )
    assert hole.kind == PENDING


def test_recorded_holes_outside_a_refetched_window_are_kept_trimmed() -> None:
    recorded = [Hole(T0, T0 + 20 * M, PENDING, 1)]
    kept = outside(recorded, T0 + 5 * M, T0 + 10 * M)
    assert kept == [Hole(T0, T0 + 4 * M, PENDING, 1), Hole(T0 + 10 * M, T0 + 20 * M, PENDING, 1)]


def test_touching_holes_of_one_kind_become_one_and_keep_the_first_sighting() -> None:
    holes = [Hole(T0, T0 + 4 * M, EXCHANGE, 5), Hole(T0 + 5 * M, T0 + 9 * M, EXCHANGE, 3)]
    assert merge_adjacent(holes) == [Hole(T0, T0 + 9 * M, EXCHANGE, 3)]
    mixed = [Hole(T0, T0 + 4 * M, EXCHANGE, 5), Hole(T0 + 5 * M, T0 + 9 * M, PENDING, 3)]
    assert merge_adjacent(mixed) == mixed


def test_a_gap_report_counts_never_fetched_minutes_as_fetch_failed() -> None:
    ts = minutes((0, 9), (40, 59))
    recorded = [Hole(T0 + 20 * M, T0 + 29 * M, EXCHANGE, 1)]
    report = gap_report("BTC/USDT", T0, T0 + 60 * M, ts, recorded, halted=3)
    assert [(h.start, h.end, h.kind) for h in report.holes] == [
        (T0 + 10 * M, T0 + 19 * M, FETCH_FAILED),
        (T0 + 20 * M, T0 + 29 * M, EXCHANGE),
        (T0 + 30 * M, T0 + 39 * M, FETCH_FAILED),
    ]
    assert (report.expected, report.stored, report.halted) == (60, 30, 3)
    assert (report.explained, report.unexplained) == (10, 20)


def test_a_recorded_hole_whose_minutes_were_stored_since_is_not_reported() -> None:
    report = gap_report(
        "BTC/USDT", T0, T0 + 10 * M, minutes((0, 9)), [Hole(T0, T0 + 9 * M, PENDING)], halted=0
    )
    assert report.holes == []
    assert report.stored == 10


def test_only_unexplained_holes_seen_long_enough_ago_are_asked_again_oldest_first() -> None:
    holes = [
        Hole(T0, T0, PENDING, NOW - CONFIRM_AFTER_MS),
        Hole(T0 + M * 2, T0 + M * 2, FETCH_FAILED, NOW - 2 * CONFIRM_AFTER_MS),
        Hole(T0 + M * 4, T0 + M * 4, PENDING, NOW - 1),
        Hole(T0 + M * 6, T0 + M * 6, EXCHANGE, 0),
    ]
    due = holes_to_probe(holes, (PENDING, FETCH_FAILED), now_ms=NOW)
    assert [h.start for h in due] == [T0 + M * 2, T0]
    assert holes_to_probe(holes, (PENDING,), now_ms=NOW, limit=1) == [holes[0]]


def candles(rows: list[tuple[int, float, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])


def test_impossible_candles_are_named_with_their_problem() -> None:
    frame = candles(
        [
            (T0, 10, 11, 9, 10.5, 1),
            (T0 + M, 10, 9, 11, 10, 1),  # high < low
            (T0 + 2 * M, 10, 11, 9, 10, -5),  # negative volume
            (T0 + 3 * M + 7, 10, 11, 9, 10, 1),  # not on a minute boundary
            (T0 + 4 * M, 10, 12, 9, 13, 1),  # high below close
            (T0 + 5 * M, 0, 11, 0, 10, 1),  # zero price
            (T0 + 6 * M, float("nan"), 11, 9, 10, 1),
        ]
    )
    report = check_ohlc(frame)
    assert not report.passed
    problems = dict(zip(report.violations["timestamp"], report.violations["problem"], strict=True))
    assert set(problems) == set(frame["timestamp"].iloc[1:])
    assert "high < low" in problems[T0 + M]
    assert problems[T0 + 2 * M] == "volume < 0"
    assert problems[T0 + 3 * M + 7] == "timestamp not on a minute boundary"
    assert problems[T0 + 4 * M] == "high < max(open, close)"
    assert "price <= 0" in problems[T0 + 5 * M]
    assert "NaN value" in problems[T0 + 6 * M]


def test_flat_zero_volume_minutes_are_valid_and_reported_as_halted_runs() -> None:
    frame = candles(
        [
            (T0, 10, 10, 10, 10, 0),
            (T0 + M, 10, 10, 10, 10, 0),
            (T0 + 2 * M, 10, 11, 9, 10, 3),
            (T0 + 3 * M, 10, 10, 10, 10, 0),
            (T0 + 4 * M, 10, 10, 10, 10, 0.5),  # flat but traded: not halted
        ]
    )
    report = check_ohlc(frame)
    assert report.passed
    assert report.halted == [(T0, T0 + M), (T0 + 3 * M, T0 + 3 * M)]
    assert report.halted_minutes == 3


def test_missing_runs_counts_only_minutes_inside_the_window() -> None:
    ts = pd.Series([0, 60_000, 180_000, 600_000]).to_numpy()
    assert missing_runs(ts, 0, 240_000) == [(120_000, 120_000)]  # one minute missing
