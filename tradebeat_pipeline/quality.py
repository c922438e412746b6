"""Data quality, apart from Dagster and SQL: impossible candles, halted minutes, and holes told apart.

A hole is a run of closed minutes with no stored candle. Traders need to know why each one is there:
- `exchange`: the exchange itself has no candle. Known when one answer skips the minutes (candles on
  both sides in the same response), when a verified archive file lacks them and the REST API, asked
  for exactly them, has none either, or when two asks of exactly that window, at least
  `CONFIRM_AFTER_MS` apart, both came back empty while candles are stored on both sides.
- `pending`: an answer had nothing there, once; ask again before believing it.
- `fetch_failed`: the request errored and was never retried successfully (or was never made).
Minutes before a symbol's first candle on the exchange are not holes. Holes are never filled with
invented candles.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from tradebeat_pipeline.timewindows import MINUTE_MS, iso_utc

GapKind = Literal["exchange", "pending", "fetch_failed"]
EXCHANGE: GapKind = "exchange"
PENDING: GapKind = "pending"
FETCH_FAILED: GapKind = "fetch_failed"
GAP_KINDS: tuple[GapKind, ...] = (EXCHANGE, PENDING, FETCH_FAILED)
UNEXPLAINED: tuple[GapKind, ...] = (PENDING, FETCH_FAILED)

# Two empty answers for exactly a hole's window, this far apart, make it an exchange hole.
CONFIRM_AFTER_MS = 5 * MINUTE_MS
# Rows named in a failing check's metadata.
MAX_LISTED = 20


@dataclass(frozen=True)
class Hole:
    """Missing minutes [start, end], both the open times of missing minutes (inclusive)."""

    start: int
    end: int
    kind: GapKind
    detected_at: int = 0

    @property
    def minutes(self) -> int:
        return (self.end - self.start) // MINUTE_MS + 1

    def as_json(self) -> dict[str, object]:
        return {
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "minutes": self.minutes,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Coverage:
    """What one fetch of the window [start, end) learned besides its candles."""

    start: int
    end: int  # exclusive; every minute opening before it had closed when asked
    # (first, last) open time of each non-empty answer: a hole strictly inside one is the exchange's.
    spans: tuple[tuple[int, int], ...] = ()
    # [start, end) sub-windows whose requests failed for good, with the reason.
    failed: tuple[tuple[int, int, str], ...] = ()
    # [start, end) sub-windows two independent sources both answered for without a candle there (a
    # verified archive file lacking minutes, then the REST API asked for exactly them): the
    # exchange's own hole, no second look needed.
    confirmed: tuple[tuple[int, int], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


def failed_coverage(start: int, end: int, reason: str) -> Coverage:
    """A window nothing could be fetched for."""
    return Coverage(start, end, failed=((start, end, reason),))


# -- holes --------------------------------------------------------------------------------------


def missing_runs(timestamps: np.ndarray, start: int, end: int) -> list[tuple[int, int]]:
    """Runs [first, last] of minute open times in [start, end) with no timestamp; sorted input."""
    if end <= start:
        return []
    ts = np.asarray(timestamps, dtype=np.int64)
    ts = ts[(ts >= start) & (ts < end)]
    edges = np.concatenate(([start - MINUTE_MS], ts, [end]))
    steps = np.diff(edges)
    runs: list[tuple[int, int]] = []
    for i in np.flatnonzero(steps > MINUTE_MS):
        runs.append((int(edges[i]) + MINUTE_MS, int(edges[i + 1]) - MINUTE_MS))
    return runs


def classify(
    runs: Iterable[tuple[int, int]],
    coverage: Coverage,
    previous: Sequence[Hole],
    *,
    is_stored: Callable[[int], bool],
    now_ms: int,
) -> list[Hole]:
    """Holes for the missing runs of one fetched window, given the holes recorded before it."""
    holes: list[Hole] = []
    for start, end in runs:
        before = next((h for h in previous if h.start == start), None)
        if any(a < end + MINUTE_MS and start < b for a, b, _ in coverage.failed):
            kind: GapKind = FETCH_FAILED
        elif (
            _inside_one_answer(start, end, coverage)
            or _inside_confirmed(start, end, coverage)
            or _confirmed_empty(start, end, coverage, before, is_stored, now_ms)
        ):
            kind = EXCHANGE
        else:
            kind = PENDING
        if before is not None and before.kind == kind and kind != FETCH_FAILED:
            detected = before.detected_at  # the first sighting, so a pending hole can age
        else:
            detected = now_ms
        holes.append(Hole(start, end, kind, detected))
    return holes


def _inside_one_answer(start: int, end: int, coverage: Coverage) -> bool:
    """One answer has candles on both sides: the exchange itself skipped these minutes."""
    return any(first < start and last > end for first, last in coverage.spans)


def _inside_confirmed(start: int, end: int, coverage: Coverage) -> bool:
    """Both sources were asked for these minutes and neither had a candle."""
    return any(a <= start and end < b for a, b in coverage.confirmed)


def _confirmed_empty(
    start: int,
    end: int,
    coverage: Coverage,
    before: Hole | None,
    is_stored: Callable[[int], bool],
    now_ms: int,
) -> bool:
    """The second empty answer for exactly this window, long enough after the first."""
    exact = coverage.start == start and coverage.end == end + MINUTE_MS
    return (
        exact
        and before is not None
        and before.kind == PENDING
        and before.end == end
        and now_ms - before.detected_at >= CONFIRM_AFTER_MS
        and is_stored(start - MINUTE_MS)
        and is_stored(end + MINUTE_MS)
    )


def outside(holes: Iterable[Hole], start: int, end: int) -> list[Hole]:
    """The parts of recorded holes that lie outside [start, end): a new fetch replaces the inside."""
    kept: list[Hole] = []
    for h in holes:
        if h.start < start:
            kept.append(replace(h, end=min(h.end, start - MINUTE_MS)))
        if h.end >= end:
            kept.append(replace(h, start=max(h.start, end)))
    return kept


def merge_adjacent(holes: Iterable[Hole]) -> list[Hole]:
    """One row for touching holes of one kind (a hole fetched as two windows, e.g. across midnight)."""
    merged: list[Hole] = []
    for h in sorted(holes, key=lambda h: h.start):
        last = merged[-1] if merged else None
        if last is not None and last.kind == h.kind and h.start <= last.end + MINUTE_MS:
            merged[-1] = replace(
                last, end=max(last.end, h.end), detected_at=min(last.detected_at, h.detected_at)
            )
        else:
            merged.append(h)
    return merged


def covered_by_exchange(holes: Iterable[Hole], first: int, last: int) -> bool:
    """Every minute first..last lies in an `exchange` hole: the exchange itself has nothing there."""
    cursor = first
    for h in sorted(holes, key=lambda h: h.start):
        if h.kind == EXCHANGE and h.start <= cursor:
            cursor = max(cursor, h.end + MINUTE_MS)
    return cursor > last


# -- reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GapReport:
    """A symbol's window accounted for minute by minute: expected = stored + explained + unexplained."""

    symbol: str
    start: int
    end: int  # exclusive
    expected: int
    stored: int
    halted: int
    holes: list[Hole] = field(default_factory=list)

    @property
    def explained(self) -> int:
        return sum(h.minutes for h in self.holes if h.kind == EXCHANGE)

    @property
    def unexplained(self) -> int:
        return sum(h.minutes for h in self.holes if h.kind != EXCHANGE)

    def as_json(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "expected": self.expected,
            "stored": self.stored,
            "halted": self.halted,
            "explained": self.explained,
            "unexplained": self.unexplained,
            "holes": [h.as_json() for h in self.holes],
        }


def gap_report(
    symbol: str,
    start: int,
    end: int,
    timestamps: np.ndarray,
    recorded: Sequence[Hole],
    *,
    halted: int,
) -> GapReport:
    """Every missing minute of [start, end) is a recorded hole or, if none covers it, a minute never
    fetched successfully (`fetch_failed`, unexplained)."""
    return gap_report_of_runs(
        symbol, start, end, missing_runs(timestamps, start, end), recorded, halted=halted
    )


def gap_report_of_runs(
    symbol: str,
    start: int,
    end: int,
    runs: Iterable[tuple[int, int]],
    recorded: Sequence[Hole],
    *,
    halted: int,
) -> GapReport:
    """`gap_report` for a store that found the window's missing runs [first, last] itself (without
    handing millions of stored open times to Python)."""
    holes: list[Hole] = []
    for a, b in runs:
        cursor = a
        for h in sorted(recorded, key=lambda h: h.start):
            lo, hi = max(h.start, cursor), min(h.end, b)
            if lo > hi:
                continue
            if lo > cursor:
                holes.append(Hole(cursor, lo - MINUTE_MS, FETCH_FAILED))
            holes.append(replace(h, start=lo, end=hi))
            cursor = hi + MINUTE_MS
        if cursor <= b:
            holes.append(Hole(cursor, b, FETCH_FAILED))
    expected = max(0, (end - start) // MINUTE_MS)
    stored = expected - sum(h.minutes for h in holes)
    return GapReport(symbol, start, end, expected, stored, halted, holes)


# -- candle invariants -------------------------------------------------------------------------


def halted_mask(candles: pd.DataFrame) -> np.ndarray:
    """Flat zero-volume minutes: the exchange was halted, nobody could trade at that price."""
    o, h, lo, c, v = (
        candles[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    return np.asarray((o == h) & (h == lo) & (lo == c) & (v == 0), dtype=bool)


@dataclass(frozen=True)
class OhlcReport:
    rows: int
    violations: pd.DataFrame  # the offending rows, with a `problem` column
    halted: list[tuple[int, int]]  # runs [first, last] of halted minutes

    @property
    def passed(self) -> bool:
        return self.violations.empty

    @property
    def halted_minutes(self) -> int:
        return sum((b - a) // MINUTE_MS + 1 for a, b in self.halted)


def check_ohlc(candles: pd.DataFrame) -> OhlcReport:
    """Impossible candles, named rather than fixed: they are stored as the exchange sent them."""
    o, h, lo, c, v = (
        candles[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    ts = candles["timestamp"].to_numpy(dtype=np.int64)
    problems: list[tuple[np.ndarray, str]] = [
        (np.isnan(np.stack([o, h, lo, c, v])).any(axis=0), "NaN value"),
        ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "price <= 0"),
        (h < np.maximum(o, c), "high < max(open, close)"),
        (lo > np.minimum(o, c), "low > min(open, close)"),
        (h < lo, "high < low"),
        (v < 0, "volume < 0"),
        (ts % MINUTE_MS != 0, "timestamp not on a minute boundary"),
    ]
    reasons = np.full(len(candles), "", dtype=object)
    for mask, text in problems:
        reasons[mask] = np.where(reasons[mask] == "", text, reasons[mask] + "; " + text)
    bad = reasons != ""
    violations = candles.loc[bad].assign(problem=reasons[bad])  # every column, as received
    halted_ts = ts[halted_mask(candles)] if len(candles) else ts
    halted = runs_of(np.sort(halted_ts))
    return OhlcReport(len(candles), violations.reset_index(drop=True), halted)


def runs_of(ts: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive minutes in sorted open times, as (first, last)."""
    if not len(ts):
        return []
    breaks = np.flatnonzero(np.diff(ts) != MINUTE_MS)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(ts) - 1]))
    return [(int(ts[a]), int(ts[b])) for a, b in zip(starts, ends, strict=True)]


def holes_to_probe(
    holes: Iterable[Hole], kinds: Sequence[GapKind], *, now_ms: int, limit: int | None = None
) -> list[Hole]:
    """Unexplained holes worth asking about again: first seen at least CONFIRM_AFTER_MS ago (a
    sooner answer could not confirm anything, and it spares a failing exchange), oldest first."""
    due = [h for h in holes if h.kind in kinds and now_ms - h.detected_at >= CONFIRM_AFTER_MS]
    due.sort(key=lambda h: h.detected_at)
    return due if limit is None else due[:limit]
