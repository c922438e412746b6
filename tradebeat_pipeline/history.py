"""History of one symbol from Binance's public archives first, the REST API only for what they lack.

No Dagster inside. For each month the archives are asked first (`archive.read_month`: the monthly
file once published, else the daily files of its closed days, every file checksum-verified); then
the REST API, through the same `Exchange` as every other fetch (and so the shared request-weight
budget), is asked for:
- the days no file covers (not published yet, or refused whole) and the month's part not closed yet;
- exactly the minutes a verified file lacks, once. A minute both sources lack is the exchange's own
  hole (`Coverage.confirmed`); a minute whose REST ask failed stays `fetch_failed`. Nothing is invented.
Every candle goes through the same parser and column contract, so the store cannot tell the sources
apart; the result says per month how many candles each source gave, and which files were verified.
"""

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from tradebeat_pipeline import progress
from tradebeat_pipeline.archive import SOURCE_MONTHLY, ArchiveReader, MonthArchive, read_month
from tradebeat_pipeline.exchange import Exchange, FetchResult, gather_or_cancel, merge_results
from tradebeat_pipeline.exchange.binance import market_id
from tradebeat_pipeline.ingest import SOURCE_REST
from tradebeat_pipeline.quality import Coverage, missing_runs
from tradebeat_pipeline.timewindows import (
    DAY_MS,
    MINUTE_MS,
    day_window,
    day_windows,
    merge_windows,
    month_key,
    month_window,
    utc_day,
)

log = logging.getLogger("tradebeat.backfill")


@dataclass(frozen=True)
class SymbolHistory:
    """One symbol's months as fetched: the candles and coverage to store, and where they came from."""

    result: FetchResult
    rest: FetchResult  # what no month's part carried (see `fetch_history`)
    sources: dict[date, dict[str, int]]  # month -> source (archive-monthly, archive-daily, rest) -> candles
    checksums: dict[str, str] = field(default_factory=dict)  # archive file name -> verified sha256
    refused: tuple[str, ...] = ()  # "<file>: <reason>" for each archive file refused whole


def rest_windows(archived: Sequence[MonthArchive]) -> list[tuple[int, int]]:
    """What the REST API must serve: the closed days no file covered and each month's part not
    closed yet, as few windows as possible."""
    windows = day_windows(d for m in archived for d in m.uncovered)
    for m in archived:
        start, end = month_window(m.month)
        closed_end = day_window(m.days[-1])[1] if m.days else start
        if closed_end < end:
            windows.append((closed_end, end))
    return merge_windows(windows)


def archive_windows(month: MonthArchive) -> list[tuple[int, int]]:
    """The [start, end) runs of days the month's verified files cover."""
    return day_windows(month.sources)


def lacking(
    candles: pd.DataFrame, windows: Sequence[tuple[int, int]], listed_ms: int | None
) -> list[tuple[int, int]]:
    """[start, end) runs of minutes inside the covered `windows` a file lacks, from the symbol's
    first candle on (before it, there is nothing to lack)."""
    ts = candles["timestamp"].to_numpy(dtype=np.int64)  # a MonthArchive's candles are sorted
    runs: list[tuple[int, int]] = []
    for start, end in windows:
        if listed_ms is not None:
            start = max(start, listed_ms)
        runs += [(a, b + MINUTE_MS) for a, b in missing_runs(ts, start, end)]
    return runs


async def fetch_history(
    exchange: Exchange,
    reader: ArchiveReader,
    symbol: str,
    months: Sequence[date],
    *,
    listed_ms: int | None,
    now_ms: int,
    on_month: Callable[[FetchResult], None] | None = None,
) -> SymbolHistory:
    """`symbol`'s whole `months`, closed by the exchange's clock `now_ms`: archives, then REST.

    Each month's archive files and the REST answers for the minutes they lack make one part, handed
    to `on_month` as soon as it is complete (so its write can begin while later files download);
    the result's `rest` holds what no part carried: the REST windows the files left."""
    market = market_id(symbol)

    async def one_month(month: date) -> tuple[MonthArchive, FetchResult]:
        archive = await _read_month(reader, market, month, now_ms)
        asks = lacking(archive.candles, archive_windows(archive), listed_ms)
        answers = await gather_or_cancel(exchange.fetch_candles(symbol, a, b, now_ms) for a, b in asks)
        part = _month_part(archive, list(zip(asks, answers, strict=True)), now_ms)
        if on_month is not None:
            on_month(part)
        return archive, part

    done = await gather_or_cancel(one_month(m) for m in months)
    archived = [a for a, _ in done]
    windows = rest_windows(archived)
    rest = merge_results(
        await gather_or_cancel(exchange.fetch_candles(symbol, a, b, now_ms) for a, b in windows)
    )
    result = merge_results([*(part for _, part in done), rest])
    sources = _sources(archived, result.candles)
    for m in archived:
        _log_month(symbol, m, sources[m.month])
    return SymbolHistory(
        result,
        rest,
        sources,
        {name: sha for m in archived for name, sha in m.checksums.items()},
        tuple(f"{r.file.name}: {r.reason}" for m in archived for r in m.refused),
    )


def _month_part(
    month: MonthArchive, asked: list[tuple[tuple[int, int], FetchResult]], now_ms: int
) -> FetchResult:
    """One month's archive candles and the REST answers for the minutes they lacked, as one result:
    the answers are folded into the month's coverage, their candles kept."""
    archived = FetchResult(
        month.candles,
        0,
        now_ms,
        max((b for _, b in archive_windows(month)), default=0),
        tuple(_archive_coverage(month, asked)),
    )
    if not asked:
        return archived
    return merge_results(
        [
            archived,
            *(FetchResult(r.candles, r.requests, r.server_time_ms, r.closed_until_ms) for _, r in asked),
        ]
    )


async def _read_month(reader: ArchiveReader, market: str, month: date, now_ms: int) -> MonthArchive:
    archive = await read_month(reader, market, month, now_ms=now_ms)
    progress.advance(len(archive.candles))
    return archive


def _archive_coverage(
    month: MonthArchive, asked: list[tuple[tuple[int, int], FetchResult]]
) -> list[Coverage]:
    """One coverage per run of archived days: each file one answer, plus the REST answers for the
    minutes it lacked; the minutes both lack are confirmed the exchange's."""
    spans = _file_spans(month)
    covs = []
    for start, end in archive_windows(month):
        inside = [(w, r) for w, r in asked if start <= w[0] and w[1] <= end]
        covs.append(
            Coverage(
                start,
                end,
                spans=(
                    *(s for s in spans if start <= s[0] < end),
                    *(s for _, r in inside for c in r.coverage for s in c.spans),
                ),
                failed=tuple(f for _, r in inside for c in r.coverage for f in c.failed),
                confirmed=tuple(w for w, r in inside if not r.failures),
            )
        )
    return covs


def _file_spans(month: MonthArchive) -> list[tuple[int, int]]:
    """(first, last) open time of each verified file's candles: each file is one answer (the
    monthly file, or else one daily file per day)."""
    if not len(month.candles):
        return []
    ts = month.candles["timestamp"].to_numpy(dtype=np.int64)
    if SOURCE_MONTHLY in month.sources.values():
        return [(int(ts[0]), int(ts[-1]))]
    _, first = np.unique(ts // DAY_MS, return_index=True)
    last = np.r_[first[1:], len(ts)] - 1
    return [(int(ts[a]), int(ts[b])) for a, b in zip(first.tolist(), last.tolist(), strict=True)]


def _sources(archived: Sequence[MonthArchive], candles: pd.DataFrame) -> dict[date, dict[str, int]]:
    """Per month, the candles each source gave. REST was asked only for minutes no verified file
    held, so whatever the month holds beyond its files' candles came from REST."""
    ts = np.sort(candles["timestamp"].to_numpy(dtype=np.int64)) if len(candles) else np.empty(0, np.int64)
    by_month: dict[date, dict[str, int]] = {}
    for m in archived:
        counts: Counter[str] = Counter()
        if len(m.candles):
            days, per_day = np.unique(
                m.candles["timestamp"].to_numpy(dtype=np.int64) // DAY_MS, return_counts=True
            )
            for day, count in zip(days.tolist(), per_day.tolist(), strict=True):
                counts[m.sources[utc_day(day * DAY_MS)]] += count
        start, end = month_window(m.month)
        in_month = int(np.searchsorted(ts, end) - np.searchsorted(ts, start))
        if in_month > len(m.candles):
            counts[SOURCE_REST] = in_month - len(m.candles)
        by_month[m.month] = dict(sorted(counts.items()))
    return by_month


def _log_month(symbol: str, month: MonthArchive, sources: dict[str, int]) -> None:
    for refused in month.refused:
        log.warning(
            "%s %s: archive file %s refused (%s); its days come from the REST API",
            symbol,
            month_key(month.month),
            refused.file.name,
            refused.reason,
        )
    shown = ", ".join(f"{n} from {s}" for s, n in sources.items()) or "no candles"
    log.info(
        "%s %s: %s; %d archive file(s) verified, %d not published",
        symbol,
        month_key(month.month),
        shown,
        len(month.checksums),
        len(month.not_published),
    )
