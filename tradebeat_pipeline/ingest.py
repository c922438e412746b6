"""One `ohlcv_1m` run apart from Dagster: plan it from the store (which symbols, which windows, which
holes to ask about again), fetch it over an `Exchange`, and hand back a `Batch` that the IO manager
writes in one transaction and the checks judge from the write's own report.

A backfill fetches its whole months, one window per run of months and symbol, all symbols at once.
A heartbeat fetches only what each symbol lacks up to its minute, after waiting for that minute to
close, and its write and checks cost what it fetched, never a rescan of the month. Both ask again
about unexplained holes in their months and learn where a symbol's history begins on the exchange
when the store does not know yet.
"""

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradebeat_pipeline import progress
from tradebeat_pipeline.candles import SYMBOL_COLUMN, with_symbols
from tradebeat_pipeline.exchange import Exchange, FetchResult, gather_or_cancel, merge_results
from tradebeat_pipeline.heartbeat import beat_windows, fetch_windows, wait_until_closed
from tradebeat_pipeline.quality import (
    FETCH_FAILED,
    PENDING,
    UNEXPLAINED,
    Coverage,
    GapKind,
    GapReport,
    Hole,
    holes_to_probe,
)
from tradebeat_pipeline.store import CandleStore, SymbolWrite, UpsertResult
from tradebeat_pipeline.timewindows import (
    MINUTE_MS,
    iso_utc,
    last_closed_minute,
    merge_windows,
    month_key,
    month_window,
    month_windows,
    span,
)
from tradebeat_pipeline.timewindows import now_ms as current_ms

if TYPE_CHECKING:
    from tradebeat_pipeline.archive import ArchiveReader

backfill_log = logging.getLogger("tradebeat.backfill")
# The source name of candles the REST API served (the archives name theirs in `archive`).
SOURCE_REST = "rest"
beat_log = logging.getLogger("tradebeat.heartbeat")

# Unexplained holes a heartbeat asks about again, per symbol per beat (it has a minute to spare).
BEAT_PROBES_PER_SYMBOL = 3


class IngestError(RuntimeError):
    """The run cannot do what it was asked (nothing registered, every symbol failed)."""


class NotRegistered(IngestError):
    """A backfill over symbols the store does not know: they must be added first."""


@dataclass(frozen=True)
class RunPlan:
    """What one run will fetch, decided from the store before any request is sent."""

    requested: dict[str, list[date]]  # registered symbols, each with its months in order
    skipped: list[str]  # partitions whose symbol the sensor has not registered yet (beats only)
    newest: dict[str, int | None]  # each symbol's newest stored candle
    probes: dict[str, list[Hole]]  # unexplained holes to ask about again, within the run's months
    unknown_start: list[str]  # symbols whose first candle on the exchange is not known yet
    beat_minute: int | None = None  # set for a heartbeat: the minute it stores
    listed: dict[str, int | None] = field(default_factory=dict)  # each symbol's first candle, when known

    @property
    def is_beat(self) -> bool:
        return self.beat_minute is not None


def plan_run(
    store: CandleStore, requested: dict[str, list[date]], *, beat_minute: int | None, now_ms: int
) -> RunPlan:
    """Plan a run over `requested` (symbol -> months). A backfill refuses unregistered symbols; a beat
    skips them (a partition the symbols sensor has not validated yet)."""
    active = store.active_symbols()
    unregistered = sorted(set(requested) - active)
    if unregistered and beat_minute is None:
        raise NotRegistered(
            f"not registered in the store: {', '.join(unregistered)}; "
            "add them with `tradebeat symbols add` (or wait for the symbols sensor)"
        )
    registered = {s: days for s, days in requested.items() if s in active}
    first_candles = store.first_candles(list(registered))
    # A backfill refetches its whole days anyway; only a pending hole needs the exact re-ask.
    kinds: tuple[GapKind, ...] = (PENDING,) if beat_minute is None else (PENDING, FETCH_FAILED)
    limit = None if beat_minute is None else BEAT_PROBES_PER_SYMBOL
    probes: dict[str, list[Hole]] = {}
    for symbol, months in registered.items():
        lo, hi = span(month_windows(months))
        due = holes_to_probe(store.holes(symbol, lo, hi), kinds, now_ms=now_ms, limit=limit)
        # A hole reaching past the run's months is asked about only within them.
        probes[symbol] = [replace(h, start=max(h.start, lo), end=min(h.end, hi - MINUTE_MS)) for h in due]
    return RunPlan(
        requested=registered,
        skipped=unregistered,
        newest=store.newest_candles(list(registered)),
        probes=probes,
        unknown_start=[s for s in registered if first_candles[s] is None],
        beat_minute=beat_minute,
        listed=first_candles,
    )


@dataclass(frozen=True)
class WriteReport:
    """What the write of a batch did, and the gap accounting of the run's windows right after it: the
    checks and the run's metadata read this instead of the store."""

    upserts: dict[str, UpsertResult]
    gaps: dict[str, list[GapReport]]  # per symbol, one report per judged window (closed minutes)
    newest: dict[str, int | None]  # each symbol's newest stored candle inside its windows
    committed_ms: int
    windows: dict[str, list[tuple[int, int]]]  # the judged windows themselves (`Batch.windows()`)
    # A beat judges only what it fetched; holes recorded elsewhere in its months still count.
    holes_elsewhere: dict[str, list[Hole]] = field(default_factory=dict)

    @property
    def total(self) -> UpsertResult:
        return sum(self.upserts.values(), UpsertResult())

    def missing_minutes(self) -> dict[str, int]:
        """Closed minutes of each symbol's judged windows with no stored candle (explained or not),
        plus the recorded holes elsewhere in its months."""
        return {
            s: sum(r.expected - r.stored for r in reports)
            + sum(h.minutes for h in self.holes_elsewhere.get(s, []))
            for s, reports in self.gaps.items()
        }


@dataclass
class Batch:
    """What one run fetched, for the IO manager to store in one transaction: per symbol its candles
    and what each fetch covered (the holes it revealed), plus where each symbol's history begins on
    the exchange when the run had to ask. The IO manager records its `report` once written."""

    requested: dict[str, list[date]]
    results: dict[str, FetchResult]
    first_candles: dict[str, int | None] = field(default_factory=dict)
    beat_minute: int | None = None
    report: WriteReport | None = None
    # A backfill's provenance: per symbol and month the candles each source gave (archive-monthly,
    # archive-daily, rest), the archive files verified (name -> sha256) and those refused (why).
    sources: dict[str, dict[date, dict[str, int]]] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    refused_files: list[str] = field(default_factory=list)
    # When the archived months were written as they arrived (`StreamedBackfill`): per symbol what
    # those writes did not carry, the only part `writes` still hands the store.
    remaining: dict[str, FetchResult] | None = None

    @cached_property
    def candles(self) -> pd.DataFrame:
        """Every symbol's candles in one frame with a `symbol` column (built once)."""
        return with_symbols({s: r.candles for s, r in self.results.items()})

    @property
    def failed(self) -> list[str]:
        return sorted(s for s, r in self.results.items() if r.failures)

    @property
    def closed_until_ms(self) -> int:
        """Every minute opening before this had closed when the run fetched (by the exchange's clock;
        by ours when every fetch failed)."""
        closed = max((r.closed_until_ms for r in self.results.values()), default=0)
        return closed or last_closed_minute()

    def windows(self) -> dict[str, list[tuple[int, int]]]:
        """Per fetched symbol, the windows of closed minutes the checks judge: a backfill's whole
        months; a beat's fetched windows only, so its cost stays that of the minutes it fetched."""
        until = self.closed_until_ms
        if self.beat_minute is None:
            return {s: month_windows(self.requested[s], until_ms=until) for s in self.results}
        return {s: fetched_windows(r, until) for s, r in self.results.items()}

    def writes(self) -> list[SymbolWrite]:
        """The batch as the store's writes; a row or fetch outside the run's own partitions is a bug
        and stops the write before anything is stored."""
        results = self.results if self.remaining is None else self.remaining
        # Each symbol's own frame, as fetched: a history of millions of rows is not copied again.
        return [
            checked_write(
                SymbolWrite(symbol, result.candles, result.coverage, self.first_candles.get(symbol)),
                self.requested,
            )
            for symbol, result in results.items()
        ]


def checked_write(write: SymbolWrite, requested: dict[str, list[date]]) -> SymbolWrite:
    """`write`, once its candles and fetched windows are known to lie inside the run's partitions."""
    refuse_coverage_outside(write.symbol, write.coverage, requested)
    refuse_candles_outside(write.symbol, write.candles, requested)
    return write


# A backfill's fetch, handed the callback that takes each archived month as it arrives.
BackfillFetch = Callable[[Callable[[SymbolWrite], None]], Coroutine[Any, Any, Batch]]


class StreamedBackfill:
    """A backfill whose archived months are written while later files still download.

    The fetch (`fetch_backfill` with `on_month`) runs on a thread and event loop of its own; `writes`,
    consumed inside the store's one transaction, yields each month as it arrives, then what is left.
    So the download and the write overlap, and still all of it lands or none of it does: a failed
    fetch raises inside the transaction. `batch` is the whole fetch once `writes` is exhausted.
    """

    def __init__(
        self,
        requested: dict[str, list[date]],
        fetch: BackfillFetch,
    ) -> None:
        self.requested = requested
        self._arrived: queue.SimpleQueue[SymbolWrite | Batch | BaseException] = queue.SimpleQueue()
        self._batch: Batch | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Batch] | None = None
        self._thread = threading.Thread(target=self._run, args=(fetch,), name="backfill-fetch", daemon=True)
        self._thread.start()

    @property
    def batch(self) -> Batch:
        if self._batch is None:
            raise RuntimeError("the backfill's writes were not consumed yet")
        return self._batch

    def writes(self) -> Generator[SymbolWrite, None, None]:
        try:
            while True:
                item = self._arrived.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Batch):
                    self._batch = item
                    yield from item.writes()
                    return
                yield checked_write(item, self.requested)
        finally:
            if self._batch is None:
                self.cancel()

    def cancel(self) -> None:
        """Stop the fetch (the write failed or was abandoned) and wait for its thread."""
        self._stop.set()
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already closed: nothing to stop
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join()

    def _run(self, fetch: BackfillFetch) -> None:
        try:
            self._arrived.put(asyncio.run(self._fetch(fetch)))
        except BaseException as exc:  # handed to the writing thread, which raises it
            self._arrived.put(exc)

    async def _fetch(self, fetch: BackfillFetch) -> Batch:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._stop.is_set():
            raise asyncio.CancelledError
        return await fetch(self._arrived.put)


def write(store: CandleStore, batch: Batch | StreamedBackfill, *, now_ms: int) -> WriteReport:
    """Store a batch in one transaction (its rows ingested at `now_ms`), then account for the closed
    minutes of its windows once: the report the checks and the metadata share."""
    # The run's symbols, announced: a store that locks them first still writes a stream as it arrives.
    upserts = store.ingest(batch.writes(), now_ms=now_ms, symbols=list(batch.requested))
    if isinstance(batch, StreamedBackfill):
        batch = batch.batch
    committed_ms = current_ms()
    windows = batch.windows()
    gaps = {s: [store.gap_report(s, a, b) for a, b in w] for s, w in windows.items()}
    newest = {s: store.newest_candles([s], before_ms=w[-1][1])[s] if w else None for s, w in windows.items()}
    elsewhere: dict[str, list[Hole]] = {}
    if batch.beat_minute is not None:
        for symbol, judged in windows.items():
            recorded = store.holes(symbol, *span(month_windows(batch.requested[symbol])))
            elsewhere[symbol] = [h for h in recorded if h.kind in UNEXPLAINED and _outside(h, judged)]
    report = WriteReport(upserts, gaps, newest, committed_ms, windows, elsewhere)
    batch.report = report
    return report


def split_by_symbol(
    candles: pd.DataFrame, requested: dict[str, list[date]]
) -> list[tuple[str, pd.DataFrame]]:
    """Per-symbol batches; a row outside the run's own partitions is a bug and stops the write."""
    batches: list[tuple[str, pd.DataFrame]] = []
    if candles.empty:
        return batches
    unknown = set(candles[SYMBOL_COLUMN].unique()) - set(requested)
    if unknown:
        raise ValueError(f"candles for symbols outside this run's partitions: {sorted(unknown)}")
    for symbol, frame in candles.groupby(SYMBOL_COLUMN, sort=False):
        refuse_candles_outside(str(symbol), frame, requested)
        batches.append((str(symbol), frame.drop(columns=SYMBOL_COLUMN)))
    return batches


def refuse_candles_outside(symbol: str, candles: pd.DataFrame, requested: dict[str, list[date]]) -> None:
    """A candle outside the run's own partitions is a bug: it stops the write before anything is stored."""
    ts = candles["timestamp"].to_numpy()
    inside = np.zeros(len(ts), dtype=bool)
    for lo, hi in month_windows(requested[symbol]):
        inside |= (ts >= lo) & (ts < hi)
    if not inside.all():
        first = int(ts[~inside][0])
        raise ValueError(
            f"{symbol}: candle at {iso_utc(first)} lies outside this run's partitions; nothing was written"
        )


def refuse_coverage_outside(
    symbol: str, coverage: Iterable[Coverage], requested: dict[str, list[date]]
) -> None:
    """A fetched window reaching outside the run's partitions would rewrite holes it does not own."""
    days = requested.get(symbol)
    if days is None:
        raise ValueError(f"{symbol}: fetched, but not among this run's partitions; nothing was written")
    windows = month_windows(days)
    for cov in coverage:
        if not any(lo <= cov.start and cov.end <= hi for lo, hi in windows):
            raise ValueError(
                f"{symbol}: a fetch of {iso_utc(cov.start)}..{iso_utc(cov.end)} lies outside this "
                "run's partitions; nothing was written"
            )


def expected_minutes(months: Iterable[date], now_ms: int | None = None) -> int:
    """Minutes that have closed (by the local clock) within these months."""
    until = last_closed_minute(now_ms)
    return sum((b - a) // MINUTE_MS for a, b in month_windows(months, until_ms=until))


def fetched_windows(result: FetchResult, until_ms: int) -> list[tuple[int, int]]:
    """The windows a fetch covered (its main window and re-asks), merged, cut at `until_ms`."""
    return merge_windows((c.start, min(c.end, until_ms)) for c in result.coverage)


def _outside(hole: Hole, windows: list[tuple[int, int]]) -> bool:
    """No minute of the hole lies in any of the windows."""
    return all(hole.end < a or hole.start >= b for a, b in windows)


# -- fetching ---------------------------------------------------------------------------------


async def fetch_backfill(
    exchange: Exchange,
    plan: RunPlan,
    archives: "ArchiveReader | None" = None,
    on_month: Callable[[SymbolWrite], None] | None = None,
) -> Batch:
    """A backfill: every symbol's whole months (up to now), then its re-asks. With `archives`
    (their base set), closed history comes from Binance's archive files and REST serves only what
    they lack; without, everything comes from REST.

    With `on_month`, each archived month is handed over as a complete write (its candles and
    coverage) as soon as it is fetched, and the batch's `remaining` holds only what those did not."""
    progress.begin("candles fetched", total=sum(expected_minutes(days) for days in plan.requested.values()))
    first_candles = await first_candles_of(exchange, plan.unknown_start)
    sources: dict[str, dict[date, dict[str, int]]] = {}
    checksums: dict[str, str] = {}
    refused: list[str] = []
    remaining: dict[str, FetchResult] | None = None
    if archives is None or archives.base is None:
        fetched = await fetch_months(exchange, plan.requested)
        sources = {s: rest_sources(r, plan.requested[s]) for s, r in fetched.items()}
    else:
        from tradebeat_pipeline.history import fetch_history

        now = await exchange.server_time_ms()  # the exchange's clock decides what has closed
        symbols = list(plan.requested)
        histories = await gather_or_cancel(
            fetch_history(
                exchange,
                archives,
                s,
                plan.requested[s],
                listed_ms=plan.listed.get(s) or first_candles.get(s),
                now_ms=now,
                on_month=None if on_month is None else _handing_over(on_month, s, first_candles.get(s)),
            )
            for s in symbols
        )
        fetched = {s: h.result for s, h in zip(symbols, histories, strict=True)}
        if on_month is not None:
            remaining = {s: h.rest for s, h in zip(symbols, histories, strict=True)}
        for s, h in zip(symbols, histories, strict=True):
            sources[s] = h.sources
            checksums.update(h.checksums)
            refused += [f"{s}: {r}" for r in h.refused]
    probed = await probe_all(exchange, plan.probes)
    results = _merge_probes(fetched, probed)
    for symbol, result in results.items():
        months = plan.requested[symbol]
        backfill_log.info(
            "%s: %d closed candles for %s..%s in %d requests (exchange clock %s)",
            symbol,
            len(result.candles),
            month_key(months[0]),
            month_key(months[-1]),
            result.requests,
            iso_utc(result.server_time_ms),
        )
        for reason in result.failures:
            backfill_log.error("%s: part of the range could not be fetched (%s)", symbol, reason)
    return Batch(
        plan.requested,
        results,
        first_candles,
        sources=sources,
        checksums=checksums,
        refused_files=refused,
        remaining=None if remaining is None else _merge_probes(remaining, probed),
    )


def _handing_over(
    on_month: Callable[[SymbolWrite], None], symbol: str, first_candle_ms: int | None
) -> Callable[[FetchResult], None]:
    def hand_over(part: FetchResult) -> None:
        on_month(SymbolWrite(symbol, part.candles, part.coverage, first_candle_ms))

    return hand_over


def rest_sources(result: FetchResult, months: list[date]) -> dict[date, dict[str, int]]:
    """Per month, the candles of a REST-only fetch."""
    ts = result.candles["timestamp"].to_numpy(dtype=np.int64)
    counts = {m: int(((ts >= a) & (ts < b)).sum()) for m in months for a, b in [month_window(m)]}
    return {m: {SOURCE_REST: n} if n else {} for m, n in counts.items()}


async def fetch_beat(exchange: Exchange, plan: RunPlan, *, buffer_s: float) -> Batch:
    """A heartbeat: what each symbol lacks up to the beat's minute, once it has closed by both clocks.
    One failing symbol costs only itself; every symbol failing fails the beat."""
    assert plan.beat_minute is not None
    minute_ms = plan.beat_minute
    if not plan.requested:
        raise IngestError("no registered symbol in this beat's range")
    windows = beat_windows(plan.requested, plan.newest, minute_ms)
    # Ask the slow questions while the minute may still be open.
    first_candles = await first_candles_of(exchange, plan.unknown_start)
    probed = await probe_all(exchange, plan.probes)
    server_ms = await wait_until_closed(exchange, minute_ms, buffer_s)
    results = await fetch_windows(exchange, windows, server_ms)
    if all(r.failures for r in results.values()):
        reasons = {s: r.failures for s, r in results.items()}
        raise IngestError(f"beat {iso_utc(minute_ms)}: every symbol failed: {reasons}")
    results = _merge_probes(results, probed)
    for symbol, result in results.items():
        for reason in result.failures:
            beat_log.error("%s: not stored this beat, retried on the next one (%s)", symbol, reason)
    return Batch(plan.requested, results, first_candles, beat_minute=minute_ms)


async def fetch_months(exchange: Exchange, requested: dict[str, list[date]]) -> dict[str, FetchResult]:
    """Fetch whole UTC months per symbol, each contiguous run of months as one window, all at once."""

    async def one_symbol(months: list[date], symbol: str) -> FetchResult:
        windows = month_windows(months)
        return merge_results(await gather_or_cancel(exchange.fetch_candles(symbol, a, b) for a, b in windows))

    symbols = list(requested)
    results = await gather_or_cancel(one_symbol(requested[s], s) for s in symbols)
    return dict(zip(symbols, results, strict=True))


async def probe_all(exchange: Exchange, probes: dict[str, list[Hole]]) -> dict[str, list[FetchResult]]:
    """Ask again for exactly each unexplained hole's window; a second empty answer, long enough
    after the first, is what makes a hole the exchange's own."""
    return {
        symbol: [await _probe(exchange, symbol, h) for h in holes]
        for symbol, holes in probes.items()
        if holes
    }


def _merge_probes(
    results: dict[str, FetchResult], probed: dict[str, list[FetchResult]]
) -> dict[str, FetchResult]:
    """Each symbol's main window first, then its re-asks (the store records holes in that order)."""
    return {s: merge_results([r, *probed.get(s, [])]) for s, r in results.items()}


async def _probe(exchange: Exchange, symbol: str, hole: Hole) -> FetchResult:
    try:
        return await exchange.fetch_candles(symbol, hole.start, hole.end + MINUTE_MS)
    except Exception as exc:  # a failed re-ask keeps the hole unexplained; it must not fail the run
        return FetchResult.failed(hole.start, hole.end + MINUTE_MS, f"{type(exc).__name__}: {exc}")


async def first_candles_of(exchange: Exchange, symbols: list[str]) -> dict[str, int | None]:
    """Where each symbol's history begins on the exchange (asked once per symbol, then stored)."""
    found: dict[str, int | None] = {}
    for symbol in symbols:
        try:
            found[symbol] = await exchange.first_candle_ms(symbol)
        except Exception as exc:  # an unknown start only means early minutes count as holes
            backfill_log.warning(
                "%s: could not ask where its history begins (%s); asking again next run", symbol, exc
            )
    return found
