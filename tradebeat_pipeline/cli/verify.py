"""`tradebeat verify`: prove that the stored candles of a range are exactly what Binance published in
its kline archives, candle by candle and bit for bit, and with `--repair` put the archive's values
back where a stored minute differs or is missing.

The archives are downloaded again (checksum-verified, through `archive.read_month`) and compared with
what the store holds on every day a file covers. A day no file covers cannot be proven: not published
yet (or never) is said and is no failure; a refused file (bad checksum, corrupt zip, failed download)
is named and fails the verification, since the store cannot be proven there. Extra stored minutes
(stored, not in the archive) are reported and never deleted: the archive may lack what the API served.
"""

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pandas as pd

from tradebeat_pipeline import progress
from tradebeat_pipeline.candles import CANDLE_COLUMNS, clean_candles
from tradebeat_pipeline.cli.history import first_candle_on_exchange
from tradebeat_pipeline.errors import Refused
from tradebeat_pipeline.exchange.binance import market_id
from tradebeat_pipeline.quality import runs_of
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import CandleStore, UpsertResult, open_store
from tradebeat_pipeline.timewindows import (
    DAY_MS,
    MINUTE_MS,
    contiguous_day_runs,
    day_window,
    iso_utc,
    month_of,
    months_between,
    next_month,
    now_ms,
    utc_day,
)

if TYPE_CHECKING:
    from tradebeat_pipeline.archive import ArchiveReader, ArchiveRefused, MonthArchive

EXIT_OK, EXIT_FAILED = 0, 1
SHOWN = 20  # differing minutes and missing/extra runs listed; the counts are always complete
VALUE_COLUMNS = CANDLE_COLUMNS[1:]
# Months downloaded and compared at once: enough to keep the reader's parallel downloads busy,
# few enough that a multi-year range never holds more than a few months' frames.
MONTHS_IN_FLIGHT = 8
NOT_PUBLISHED = "not published"
NOT_CLOSED = "not closed yet"
log = logging.getLogger("tradebeat.cli")


@dataclass(frozen=True)
class Difference:
    """One stored minute whose values are not the archive's: (column, stored, archive) per column."""

    minute: int
    columns: tuple[tuple[str, Any, Any], ...]


@dataclass(frozen=True)
class RefusedFile:
    """A published file that could not be trusted, and the days of the range it leaves unproven."""

    name: str
    reason: str
    days: tuple[date, ...]


@dataclass
class Verification:
    """The range compared: what was proven, what differs, and what could not be verified."""

    symbol: str
    start: date
    end: date
    verified_days: list[date] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # verified file name -> sha256
    archive_minutes: int = 0
    stored_minutes: int = 0
    differing: int = 0
    differences: list[Difference] = field(default_factory=list)  # the first SHOWN
    missing: list[np.ndarray] = field(default_factory=list)  # open times in the archive, not stored
    extra: list[np.ndarray] = field(default_factory=list)  # open times stored, not in the archive
    unverifiable: dict[date, str] = field(default_factory=dict)  # day -> reason
    refused: list[RefusedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    to_repair: list[pd.DataFrame] = field(default_factory=list)  # the archive's rows of those minutes
    repaired: UpsertResult | None = None

    def missing_times(self) -> np.ndarray:
        return _times(self.missing)

    def extra_times(self) -> np.ndarray:
        return _times(self.extra)

    def remaining(self) -> int:
        """Minutes still not identical: all of them, or after a repair the ones it could not write
        (the store judged them unchanged) and the extra ones, which are never deleted."""
        extra = len(self.extra_times())
        if self.repaired is None:
            return self.differing + len(self.missing_times()) + extra
        return self.repaired.unchanged + extra

    def identical(self) -> bool:
        """Exit 0: something was verified, no file was refused, every verified minute is the same."""
        return bool(self.verified_days) and not self.refused and self.remaining() == 0


def verify(args: argparse.Namespace, settings: Settings) -> int:
    """Compare the stored range with the archives; `--repair` upserts the archive's values of the
    differing and missing minutes in one transaction. Exit 0 identical, 1 not."""
    symbol: str = args.symbol
    start: date = args.start
    end: date = args.end
    if settings.archive_url is None:
        raise Refused(
            "the archives are off (BINANCE_ARCHIVE_URL=off): there is nothing to verify against; "
            "set BINANCE_ARCHIVE_URL to https://data.binance.vision or a mirror"
        )
    notes = sys.stderr if args.json else sys.stdout  # in JSON mode stdout carries only the report
    with open_store(settings) as store:
        store.candle_span(symbol)  # an unregistered symbol is refused here
        first_ms = store.first_candles([symbol])[symbol]
        if first_ms is None:
            first_ms = asyncio.run(first_candle_on_exchange(symbol))
        start = _within_history(symbol, start, end, first_ms, notes)
        with progress.shown():
            report = asyncio.run(_compare(settings, store, symbol, start, end))
        if args.repair:
            _repair(store, report, notes)
    if args.json:
        print(json.dumps(as_json(report), separators=(",", ":")))
    else:
        print_report(report, sys.stdout)
    return EXIT_OK if report.identical() else EXIT_FAILED


def _within_history(symbol: str, start: date, end: date, first_ms: int | None, out: TextIO) -> date:
    """The range's start, moved to the exchange's first candle when it begins before it; a range
    wholly before it is refused (there is no data to verify)."""
    if first_ms is None:
        raise Refused(f"the exchange has no candles for {symbol}: there is nothing to verify")
    listed = utc_day(first_ms)
    if end < listed:
        raise Refused(
            f"{symbol}: the exchange's first candle is {iso_utc(first_ms)}; {start}..{end} lies before it"
        )
    if start < listed:
        print(
            f"{symbol}: the exchange's first candle is {iso_utc(first_ms)}; verifying from {listed}", file=out
        )
        return listed
    return start


# -- comparing --------------------------------------------------------------------------------


async def _compare(
    settings: Settings, store: CandleStore, symbol: str, start: date, end: date
) -> Verification:
    """Every month of the range read from the archives and compared as it arrives."""
    from tradebeat_pipeline.archive import ArchiveReader

    report = Verification(symbol, start, end)
    months = months_between(month_of(start), month_of(end))
    progress.begin(f"{symbol}: months verified against the archives", len(months))
    in_flight = asyncio.Semaphore(MONTHS_IN_FLIGHT)
    now = now_ms()
    async with ArchiveReader(
        settings.archive_url,
        attempts=settings.retry_attempts,
        backoff_s=settings.retry_backoff_seconds,
        timeout_s=settings.timeout_seconds,
    ) as reader:

        async def one(month: date) -> None:
            async with in_flight:
                archive = await _read_month(reader, symbol, month, now)
                # The comparison runs on the loop between downloads: the store is used by one
                # thread, and the month's frames are dropped as soon as it is compared.
                compare_month(store, archive, start, end, report)
                progress.advance(1)

        async with asyncio.TaskGroup() as group:
            for month in months:
                group.create_task(one(month))
    report.differences.sort(key=lambda d: d.minute)
    del report.differences[SHOWN:]
    report.verified_days.sort()
    report.refused.sort(key=lambda r: (r.days[0], r.name))
    return report


async def _read_month(reader: "ArchiveReader", symbol: str, month: date, now: int) -> "MonthArchive":
    from tradebeat_pipeline.archive import read_month

    return await read_month(reader, market_id(symbol), month, now_ms=now)


def compare_month(
    store: CandleStore, archive: "MonthArchive", start: date, end: date, report: Verification
) -> None:
    """Add one month's days of the range to the report: compared where a verified file covers them,
    otherwise named with the reason they cannot be verified."""
    first = archive.month
    days = [d for d in _days(first, next_month(first)) if start <= d <= end]
    if not days:
        return
    closed = set(archive.days)
    verified = [d for d in days if d in archive.sources]
    unproven = {d for d in days if d in closed and d not in archive.sources}
    for refusal in archive.refused:
        _take_refusal(refusal, days, unproven, report)
    refused_days = {d for r in report.refused for d in r.days}
    for day in days:
        if day not in closed:
            report.unverifiable[day] = NOT_CLOSED
        elif day in unproven and day not in refused_days:
            report.unverifiable[day] = NOT_PUBLISHED
    report.files.update(_files_used(archive, set(verified)))
    if not verified:
        return
    report.verified_days += verified
    lo, hi = day_window(days[0])[0], day_window(days[-1])[1]
    archived = _on_days(archive.candles, verified)
    stored = _on_days(store.read_candles(report.symbol, lo, hi), verified)
    report.archive_minutes += len(archived)
    report.stored_minutes += len(stored)
    diff = compare_candles(stored, archived)
    report.differing += len(diff.differing)
    report.differences += diff.first_differences
    report.missing.append(diff.missing)
    report.extra.append(diff.extra)
    wanted = np.concatenate([diff.differing, diff.missing])
    if len(wanted):
        report.to_repair.append(archived[archived["timestamp"].isin(wanted)])


def _take_refusal(
    refusal: "ArchiveRefused", days: list[date], unproven: set[date], report: Verification
) -> None:
    """A refused file fails the verification only where no other file proved its days."""
    covered = [d for d in refusal.file.days() if d in days]
    left = tuple(d for d in covered if d in unproven)
    if left:
        report.refused.append(RefusedFile(refusal.file.name, refusal.reason, left))
    elif covered:
        report.notes.append(
            f"{refusal.file.name} refused ({refusal.reason}); its days were verified from the daily files"
        )


def _files_used(archive: "MonthArchive", verified: set[date]) -> dict[str, str]:
    """The verified files (name -> sha256) holding at least one verified day of the range."""
    month_name = f"{archive.market}-1m-{archive.month:%Y-%m}.zip"
    used = {}
    for name, sha256 in archive.checksums.items():
        if name == month_name or any(name == f"{archive.market}-1m-{d:%Y-%m-%d}.zip" for d in verified):
            used[name] = sha256
    return used


def _on_days(candles: pd.DataFrame, days: Iterable[date]) -> pd.DataFrame:
    starts = np.array([day_window(d)[0] for d in days], dtype=np.int64)
    ts = candles["timestamp"].to_numpy(dtype=np.int64)
    return candles[np.isin(ts - ts % DAY_MS, starts)].reset_index(drop=True)


@dataclass(frozen=True)
class CandleDiff:
    """Stored candles against the archive's: open times differing, missing (archive only) and extra
    (stored only), and the first differing minutes with their columns."""

    differing: np.ndarray
    missing: np.ndarray
    extra: np.ndarray
    first_differences: list[Difference]


def compare_candles(stored: pd.DataFrame, archived: pd.DataFrame, shown: int = SHOWN) -> CandleDiff:
    """Exact comparison on every contract column: floats bit for bit, a missing value (NULL) equal
    only to a missing value."""
    stored, archived = clean_candles([stored]), clean_candles([archived])
    merged = archived.merge(
        stored, on="timestamp", how="outer", suffixes=("_archive", "_stored"), indicator=True
    )
    merged = merged.sort_values("timestamp", ignore_index=True)
    ts = merged["timestamp"].to_numpy(dtype=np.int64)
    side = merged["_merge"].to_numpy()
    both = side == "both"
    same_by_column = {c: _same(merged[f"{c}_archive"], merged[f"{c}_stored"]) | ~both for c in VALUE_COLUMNS}
    differs = ~np.logical_and.reduce(list(same_by_column.values()))
    first = []
    for i in np.flatnonzero(differs)[:shown]:
        columns = tuple(
            (c, _value(merged.at[i, f"{c}_stored"]), _value(merged.at[i, f"{c}_archive"]))
            for c in VALUE_COLUMNS
            if not same_by_column[c][i]
        )
        first.append(Difference(int(ts[i]), columns))
    return CandleDiff(ts[differs], ts[side == "left_only"], ts[side == "right_only"], first)


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Equal values, bit for bit, or both missing."""
    missing_a, missing_b = a.isna().to_numpy(), b.isna().to_numpy()
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        bits_a = a.to_numpy(dtype=np.float64).view(np.int64)
        bits_b = b.to_numpy(dtype=np.float64).view(np.int64)
        equal = bits_a == bits_b
    else:
        equal = (a.fillna(0).to_numpy(dtype=np.int64) == b.fillna(0).to_numpy(dtype=np.int64)) & ~missing_a
    return np.asarray((missing_a & missing_b) | (equal & ~missing_a & ~missing_b), dtype=bool)


def _value(v: Any) -> Any:
    """A cell as JSON can carry it: a float (exact), an int, or None for a missing value."""
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.integer | int):
        return int(v)
    return float(v)


def _times(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def _days(first: date, end: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((end - first).days)]


# -- repairing --------------------------------------------------------------------------------


def _repair(store: CandleStore, report: Verification, out: TextIO) -> None:
    """Upsert the archive's values of the differing and missing minutes in ONE transaction; each
    corrected minute gets a new `ingested_at` and is logged as a correction by the store."""
    rows = clean_candles(report.to_repair)
    if rows.empty:
        report.repaired = UpsertResult()
        print(f"{report.symbol}: no differing or missing minute to repair", file=out)
    else:
        result = store.upsert_candles([(report.symbol, rows)])[report.symbol]
        report.repaired = result
        log.warning(
            "verify --repair %s: %d missing minutes inserted, %d differing minutes corrected from the "
            "archives (%s..%s)",
            report.symbol,
            result.inserted,
            result.updated,
            iso_utc(int(rows["timestamp"].iloc[0])),
            iso_utc(int(rows["timestamp"].iloc[-1])),
        )
        print(
            f"{report.symbol}: repaired from the archives: {result.inserted} missing minutes inserted, "
            f"{result.updated} differing minutes corrected (new ingested_at, logged as corrections)",
            file=out,
        )
    extra = len(report.extra_times())
    if extra:
        print(
            f"{report.symbol}: {extra} extra stored minutes kept (never deleted: the archive may lack "
            "what the API served)",
            file=out,
        )


# -- reporting --------------------------------------------------------------------------------


def _day_runs(days: dict[date, str]) -> list[tuple[date, date, str]]:
    """Unverifiable days as runs of consecutive days with the same reason."""
    runs: list[tuple[date, date, str]] = []
    for reason in sorted(set(days.values())):
        runs += [(a, b, reason) for a, b in contiguous_day_runs(d for d, r in days.items() if r == reason)]
    return sorted(runs)


def as_json(report: Verification) -> dict[str, Any]:
    """The report as one JSON object (counts complete; lists cut at the first SHOWN)."""
    missing, extra = report.missing_times(), report.extra_times()
    repaired = report.repaired
    return {
        "symbol": report.symbol,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "identical": report.identical(),
        "verified_days": len(report.verified_days),
        "files": dict(sorted(report.files.items())),
        "archive_minutes": report.archive_minutes,
        "stored_minutes": report.stored_minutes,
        "differing": report.differing,
        "missing": len(missing),
        "extra": len(extra),
        "differences": [
            {
                "minute": iso_utc(d.minute),
                "columns": {c: {"stored": s, "archive": a} for c, s, a in d.columns},
            }
            for d in report.differences
        ],
        "missing_runs": [_run_json(a, b) for a, b in runs_of(missing)[:SHOWN]],
        "extra_runs": [_run_json(a, b) for a, b in runs_of(extra)[:SHOWN]],
        "not_verifiable": [
            {"start": a.isoformat(), "end": b.isoformat(), "reason": r}
            for a, b, r in _day_runs(report.unverifiable)
        ],
        "refused": [
            {"file": r.name, "reason": r.reason, "days": [d.isoformat() for d in r.days]}
            for r in report.refused
        ],
        "notes": report.notes,
        "repaired": None
        if repaired is None
        else {"inserted": repaired.inserted, "corrected": repaired.updated, "unchanged": repaired.unchanged},
    }


def _run_json(first: int, last: int) -> dict[str, Any]:
    return {"start": iso_utc(first), "end": iso_utc(last), "minutes": (last - first) // MINUTE_MS + 1}


def print_report(report: Verification, out: TextIO) -> None:
    """The report for people: counts, the first differences and runs, what could not be verified."""
    missing, extra = report.missing_times(), report.extra_times()
    days = len(report.verified_days)
    print(f"{report.symbol} {report.start}..{report.end} against the archives", file=out)
    print(
        f"verified {days} day{'s' * (days != 1)} from {len(report.files)} checksum-verified "
        f"file{'s' * (len(report.files) != 1)}: {report.archive_minutes} minutes in the archives, "
        f"{report.stored_minutes} stored",
        file=out,
    )
    print(f"differing {report.differing}, missing {len(missing)}, extra {len(extra)}", file=out)
    if report.differences:
        print(f"differing minutes{_first(report.differing)}:", file=out)
        print(f"  {'minute':<21} {'column':<23} {'stored':>22} {'archive':>22}", file=out)
        for d in report.differences:
            for column, stored, archived in d.columns:
                print(
                    f"  {iso_utc(d.minute):<21} {column:<23} {_shown(stored):>22} {_shown(archived):>22}",
                    file=out,
                )
    for title, times in (
        ("missing (in the archives, not stored)", missing),
        ("extra (stored, not in the archives; kept)", extra),
    ):
        runs = runs_of(times)
        if runs:
            print(f"{title}{_first(len(runs), 'runs')}:", file=out)
            for a, b in runs[:SHOWN]:
                print(f"  {iso_utc(a)}..{iso_utc(b)}  {(b - a) // MINUTE_MS + 1} minutes", file=out)
    for first_day, last_day, reason in _day_runs(report.unverifiable):
        print(f"not verifiable: {first_day}..{last_day} ({reason})", file=out)
    for r in report.refused:
        unproven = ", ".join(f"{a}..{b}" for a, b in contiguous_day_runs(r.days))
        print(f"refused: {r.name}: {r.reason} (unproven: {unproven})", file=out)
    for note in report.notes:
        print(f"note: {note}", file=out)
    print(_verdict(report), file=out)


def _verdict(report: Verification) -> str:
    if report.identical():
        after = (
            " after the repair"
            if report.repaired is not None and report.repaired.inserted + report.repaired.updated
            else ""
        )
        return f"IDENTICAL{after}: every verified minute is the archive's, bit for bit"
    if not report.verified_days:
        return "NOT VERIFIED: no day of the range is covered by a verified archive file"
    reasons = []
    if report.remaining():
        left = " after the repair" if report.repaired is not None else ""
        reasons.append(f"{report.remaining()} minutes differ, are missing or are extra{left}")
    if report.refused:
        reasons.append(f"{len(report.refused)} refused file(s) leave days unproven")
    return "NOT IDENTICAL: " + "; ".join(reasons)


def _first(count: int, what: str = "") -> str:
    if count <= SHOWN:
        return ""
    return f" (first {SHOWN} of {count}{' ' + what if what else ''})"


def _shown(value: Any) -> str:
    return "NULL" if value is None else repr(value)
