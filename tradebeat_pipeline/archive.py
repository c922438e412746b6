"""Binance's public kline archives (data.binance.vision): daily and monthly zip files of 1m candles.

A month of history is one file here instead of 45 REST pages, and these requests carry no request
weight (another host, no budget), so history is read from the archives first and only the days no
file covers are asked of the REST API. No Dagster and no ccxt inside.

Every file is taken whole or not at all: the download (streamed to a temporary file) must match the
sha256 of its `.CHECKSUM` before one row is parsed, and a corrupt zip or a malformed row refuses the
whole file (`ArchiveRefused`, naming it and why), so the caller fetches those days from REST instead.
Plain rows are read by `exchange.kline_csv` (vectorised, ~1 M candles/s, bit-identical to the REST
parser by construction and by test); any other row goes through the REST parser (`parse_klines`)
itself. Either way a candle read from an archive and the same candle from the API are the same row
of the same frame, to the last bit.
"""

import asyncio
import calendar
import hashlib
import logging
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import numpy as np
import pandas as pd
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_exponential

from tradebeat_pipeline.candles import clean_candles, empty_candles
from tradebeat_pipeline.exchange.binance import MalformedAnswer, parse_klines
from tradebeat_pipeline.exchange.kline_csv import parse_kline_csv
from tradebeat_pipeline.settings import default
from tradebeat_pipeline.timewindows import MINUTE_MS, day_window

log = logging.getLogger("tradebeat.archive")

ArchiveKind = Literal["monthly", "daily"]
SOURCE_MONTHLY = "archive-monthly"
SOURCE_DAILY = "archive-daily"
# Spot archives hold open and close times in microseconds from 2025-01-01 on. An epoch-ms time reaches
# 10^14 only in the year 5138 and an epoch-µs time was past it in 1973, so the magnitude tells them apart.
MICROSECONDS_ABOVE = 10**14
ARCHIVE_COLUMNS = 12
# Binance's header row, when a file has one: names only, no digits.
_HEADER_FIELD = re.compile(r"[A-Za-z_ ]+")
_MARKET = re.compile(r"[A-Z0-9]+")
_CHECKSUM = re.compile(r"([0-9a-fA-F]{64})\s+\*?(\S+)")
_CHECKSUM_MAX_BYTES = 4096
_CHUNK_BYTES = 1 << 16
# The longest wait between two tries of a download (the wait doubles up to it, as for REST).
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class ArchiveFile:
    """One published file: a month or a day of one market's 1m candles, and where it lives."""

    kind: ArchiveKind
    market: str  # exchange id, e.g. BTCUSDT
    period: date  # the day, or the first day of the month
    url: str
    checksum_url: str
    name: str  # BTCUSDT-1m-2020-01-01.zip

    def window(self) -> tuple[int, int]:
        """Epoch-ms [start, end) of the candles the file may hold."""
        if self.kind == "daily":
            return day_window(self.period)
        return day_window(self.period)[0], day_window(_next_month(self.period))[0]

    def days(self) -> list[date]:
        """The UTC days the file covers."""
        if self.kind == "daily":
            return [self.period]
        return _days_of_month(self.period)


def archive_urls(base: str, market: str, month: date) -> ArchiveFile:
    """The monthly file of `market` (exchange id) for the month holding `month`."""
    first = month.replace(day=1)
    return _file(base, "monthly", market, first, f"{first:%Y-%m}")


def daily_archive_urls(base: str, market: str, day: date) -> ArchiveFile:
    """The daily file of `market` (exchange id) for `day`."""
    return _file(base, "daily", market, day, f"{day:%Y-%m-%d}")


def _file(base: str, kind: ArchiveKind, market: str, period: date, stamp: str) -> ArchiveFile:
    if not _MARKET.fullmatch(market):
        raise ValueError(f"archive market must be an exchange id such as BTCUSDT, got {market!r}")
    name = f"{market}-1m-{stamp}.zip"
    url = f"{base.rstrip('/')}/data/spot/{kind}/klines/{market}/1m/{name}"
    return ArchiveFile(kind, market, period, url, url + ".CHECKSUM", name)


class ArchiveRefused(Exception):
    """A published file that cannot be trusted whole (bad checksum, corrupt zip, malformed row, failed
    download): none of its candles are used and its days go to the REST API."""

    def __init__(self, file: ArchiveFile, reason: str) -> None:
        super().__init__(f"{file.name}: {reason}")
        self.file = file
        self.reason = reason


@dataclass(frozen=True)
class ArchiveResult:
    """A verified, parsed file: its candles (the contract's columns, ms open times) and its sha256."""

    file: ArchiveFile
    candles: pd.DataFrame
    sha256: str
    rows: int


# -- verifying and parsing a file on disk ---------------------------------------------------------


def parse_checksum(text: str, file: ArchiveFile) -> str:
    """The sha256 a `.CHECKSUM` publishes for `file` (`<hex>  <name>`), refusing anything else."""
    match = _CHECKSUM.fullmatch(text.strip())
    if match is None:
        raise ArchiveRefused(file, f"its CHECKSUM is not '<sha256>  <name>': {text.strip()!r:.120}")
    if match.group(2) != file.name:
        raise ArchiveRefused(file, f"its CHECKSUM names another file ({match.group(2)})")
    return match.group(1).lower()


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_archive(path: Path, file: ArchiveFile, checksum_text: str) -> ArchiveResult:
    """A zip on disk verified against its CHECKSUM's text, then parsed (raises `ArchiveRefused`)."""
    expected = parse_checksum(checksum_text, file)
    return _verified(path, file, expected, sha256_of(path))


def _verified(path: Path, file: ArchiveFile, expected: str, actual: str) -> ArchiveResult:
    """Parse only a file whose sha256 is the published one."""
    if actual != expected:
        raise ArchiveRefused(file, f"sha256 {actual} does not match its CHECKSUM ({expected})")
    candles, rows = parse_archive_zip(path, file)
    return ArchiveResult(file, candles, actual, rows)


def parse_archive_zip(path: Path, file: ArchiveFile) -> tuple[pd.DataFrame, int]:
    """The candles of the one CSV in a zip, and its data rows (raises `ArchiveRefused`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1 or not members[0].filename.endswith(".csv"):
                names = ", ".join(m.filename for m in members) or "nothing"
                raise ArchiveRefused(file, f"expected one CSV in the zip, found {names}")
            data = archive.read(members[0])  # checks the member's CRC
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise ArchiveRefused(file, f"not a readable zip ({type(exc).__name__}: {exc})") from None
    return parse_archive_bytes(data, file)


def parse_archive_bytes(data: bytes, file: ArchiveFile) -> tuple[pd.DataFrame, int]:
    """An archive CSV's bytes onto the candle contract, read whole without decoding (`parse_kline_csv`).

    A header row is skipped; times in microseconds become milliseconds; every open time must be a
    minute inside the file's period, increasing. Rows that are not plain digits (a sign, a space, a
    missing required value, a wrong field count) go to the REST parser, whose verdict stands. Anything
    malformed refuses the whole file.
    """
    if not data.isascii():
        try:
            data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ArchiveRefused(file, f"the CSV is not plain text ({exc})") from None
    # The rows between a header and the trailing newlines, each ending in one; copied only when
    # the file has a header or not exactly one newline at its end.
    end = len(data)
    while end and data[end - 1] == ord("\n"):
        end -= 1
    first = data.find(b"\n", 0, end)
    names = data[: end if first < 0 else first].decode("ascii").split(",")
    start = 0
    if len(names) == ARCHIVE_COLUMNS and all(_HEADER_FIELD.fullmatch(f) for f in names):
        start = end if first < 0 else first + 1
    if start >= end:
        return empty_candles(), 0
    body = data if start == 0 and end == len(data) - 1 else data[start:end] + b"\n"
    try:
        parsed = parse_kline_csv(body, where=file.name)
    except MalformedAnswer as exc:
        raise ArchiveRefused(file, str(exc).removeprefix(f"{file.name}: ")) from None
    if parsed is None:
        return _parse_through_rest(data.decode("ascii"), file)
    return _in_milliseconds_checked(file, *parsed)


def parse_archive_csv(text: str, file: ArchiveFile) -> tuple[pd.DataFrame, int]:
    """Archive CSV text onto the candle contract, as `parse_archive_bytes` reads its bytes."""
    if text.isascii():
        return parse_archive_bytes(text.encode("ascii"), file)
    return _parse_through_rest(text, file)


def _parse_through_rest(text: str, file: ArchiveFile) -> tuple[pd.DataFrame, int]:
    """Archive CSV rows through the REST parser one by one: the reference, and the word on any row
    that is not plain digits."""
    rows = [line.split(",") for line in text.splitlines()]
    while rows and rows[-1] == [""]:
        rows.pop()
    if rows and len(rows[0]) == ARCHIVE_COLUMNS and all(_HEADER_FIELD.fullmatch(f) for f in rows[0]):
        rows.pop(0)
    if not rows:
        return empty_candles(), 0
    for i, row in enumerate(rows):
        if len(row) != ARCHIVE_COLUMNS:
            raise ArchiveRefused(file, f"kline #{i} has {len(row)} fields, not {ARCHIVE_COLUMNS}")
    # A field left empty is a value the source lacks, as REST's null: the parser keeps an optional
    # one missing and refuses a required one.
    klines: list[Any] = rows
    if ",," in text or ",\n" in text or ",\r" in text or "\n," in text or text[:1] == "," or text[-1:] == ",":
        klines = [[v or None for v in row] if "" in row else row for row in rows]
    try:
        candles, close_times = parse_klines(klines, where=file.name)
    except MalformedAnswer as exc:
        raise ArchiveRefused(file, str(exc).removeprefix(f"{file.name}: ")) from None
    return _in_milliseconds_checked(file, candles, close_times)


def _in_milliseconds_checked(
    file: ArchiveFile, candles: pd.DataFrame, close_times: np.ndarray
) -> tuple[pd.DataFrame, int]:
    """Microsecond times (all or none) as milliseconds, then `_check_times`."""
    times = candles["timestamp"].to_numpy()
    microseconds = times > MICROSECONDS_ABOVE
    if microseconds.any():
        if not microseconds.all():
            raise ArchiveRefused(file, "open times mix microseconds and milliseconds")
        candles["timestamp"] = times = times // 1000
        close_times = close_times // 1000
    _check_times(file, times, close_times)
    return candles, len(candles)


def _check_times(file: ArchiveFile, times: np.ndarray, close_times: np.ndarray) -> None:
    """Whole minutes, strictly increasing, inside the file's period, each closing within its minute."""
    start, end = file.window()
    for problem, bad in (
        ("is not a whole minute", times % MINUTE_MS != 0),
        ("is outside the file's period", (times < start) | (times >= end)),
        ("does not close within its minute", (close_times < times) | (close_times >= times + MINUTE_MS)),
        ("does not follow the one before", np.r_[False, np.diff(times) <= 0]),
    ):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ArchiveRefused(file, f"kline #{i}: open time {int(times[i])} {problem}")


# -- downloading ----------------------------------------------------------------------------------


class _Transient(Exception):
    """A 5xx or 429 answer, or a body cut short: worth another try."""


async def fetch_file(
    session: aiohttp.ClientSession,
    file: ArchiveFile,
    tmp_dir: Path,
    *,
    attempts: int = default("retry_attempts"),
    backoff_s: float = default("retry_backoff_seconds"),
    timeout_s: float = default("timeout_seconds"),
) -> ArchiveResult | None:
    """Download, verify and parse one file; None when it is not published (404).

    The zip is streamed to a temporary file in `tmp_dir` and hashed on the way, never held in memory.
    5xx answers, 429 and timeouts are retried with doubling backoff; a file that still fails, or fails
    verification or parsing, raises `ArchiveRefused`.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((_Transient, aiohttp.ClientError, TimeoutError)),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff_s, max=MAX_BACKOFF_S),
        before_sleep=lambda state: log.warning(
            "%s: %s (attempt %d/%d), retrying",
            file.name,
            _short(state.outcome.exception() if state.outcome else None),
            state.attempt_number,
            attempts,
        ),
    )
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="archive-") as scratch:
        path = Path(scratch) / file.name
        try:
            checksum: str | None = await retrying(_get_checksum, session, file, timeout)
            if checksum is None:
                return None
            digest: str | None = await retrying(_download, session, file, path, timeout)
        except RetryError as gave_up:
            exc = gave_up.last_attempt.exception()
            raise ArchiveRefused(
                file, f"download failed after {gave_up.last_attempt.attempt_number} attempts ({_short(exc)})"
            ) from exc
        if digest is None:
            return None
        expected = parse_checksum(checksum, file)
        # Parsing a month takes a fraction of a second of CPU: off the event loop, so downloads go on.
        return await asyncio.to_thread(_verified, path, file, expected, digest)


async def _get_checksum(
    session: aiohttp.ClientSession, file: ArchiveFile, timeout: aiohttp.ClientTimeout
) -> str | None:
    async with session.get(file.checksum_url, timeout=timeout) as answer:
        if not _usable(answer, file, "its CHECKSUM"):
            return None
        body = await answer.content.read(_CHECKSUM_MAX_BYTES + 1)
    if len(body) > _CHECKSUM_MAX_BYTES:
        raise ArchiveRefused(file, f"its CHECKSUM is over {_CHECKSUM_MAX_BYTES} bytes")
    return body.decode("ascii", errors="replace")


async def _download(
    session: aiohttp.ClientSession, file: ArchiveFile, path: Path, timeout: aiohttp.ClientTimeout
) -> str | None:
    """Stream the zip to `path`; its sha256, or None when it is not published."""
    digest = hashlib.sha256()
    size = 0
    async with session.get(file.url, timeout=timeout) as answer:
        if not _usable(answer, file, "the zip"):
            return None
        with path.open("wb") as out:
            async for chunk in answer.content.iter_chunked(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if answer.content_length is not None and size != answer.content_length:
            raise _Transient(f"the zip ended after {size} of {answer.content_length} bytes")
    return digest.hexdigest()


def _usable(answer: aiohttp.ClientResponse, file: ArchiveFile, what: str) -> bool:
    """True for 200, False for 404 (not published); raises for the rest."""
    if answer.status == 404:
        return False
    if answer.status >= 500 or answer.status == 429:
        raise _Transient(f"HTTP {answer.status} for {what}")
    if answer.status != 200:
        raise ArchiveRefused(file, f"HTTP {answer.status} for {what}")
    return True


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


class ArchiveReader:
    """Reads archive files over one HTTP session, at most `max_parallel` downloads at a time.

    `base` None means the archives are off: `read_month` then covers nothing and asks nothing.
    """

    def __init__(
        self,
        base: str | None = default("archive_url"),
        *,
        max_parallel: int = 4,
        tmp_dir: Path | None = None,
        attempts: int = default("retry_attempts"),
        backoff_s: float = default("retry_backoff_seconds"),
        timeout_s: float = default("timeout_seconds"),
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.base = base
        self.max_parallel = max_parallel
        self.tmp_dir = Path(tempfile.gettempdir()) if tmp_dir is None else tmp_dir
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self._parallel = asyncio.Semaphore(max_parallel)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ArchiveReader":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def file(self, kind: ArchiveKind, market: str, period: date) -> ArchiveFile:
        """The monthly or daily file of `market` for `period` at this reader's base."""
        if self.base is None:
            raise ValueError("the archives are off (BINANCE_ARCHIVE_URL=off)")
        if kind == "monthly":
            return archive_urls(self.base, market, period)
        return daily_archive_urls(self.base, market, period)

    async def fetch(self, file: ArchiveFile) -> ArchiveResult | None:
        """`fetch_file` with this reader's session, bounds and retries."""
        async with self._parallel:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self.max_parallel), raise_for_status=False
                )
            return await fetch_file(
                self._session,
                file,
                self.tmp_dir,
                attempts=self.attempts,
                backoff_s=self.backoff_s,
                timeout_s=self.timeout_s,
            )


# -- the plan for one month -----------------------------------------------------------------------


@dataclass(frozen=True)
class MonthArchive:
    """What the archives hold of one market's month, and what they leave to the REST API."""

    market: str
    month: date  # its first day
    days: tuple[date, ...]  # the month's days closed at `now_ms`: the ones the archives were asked for
    candles: pd.DataFrame  # sorted by open time; minutes a file lacks are simply absent
    sources: dict[date, str]  # day -> archive-monthly | archive-daily
    uncovered: tuple[date, ...]  # closed days no file covered (not published, or refused): ask REST
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> verified sha256
    refused: tuple[ArchiveRefused, ...] = ()
    not_published: tuple[str, ...] = ()  # file names answered 404


async def read_month(reader: ArchiveReader, market: str, month: date, *, now_ms: int) -> MonthArchive:
    """One month of `market` from the archives: the monthly file once the month is over and it is
    published (and verifies); otherwise the daily files of the month's closed days. Days no file
    covers are named in `uncovered`, so the caller asks REST for exactly those."""
    first = month.replace(day=1)
    days = tuple(d for d in _days_of_month(first) if day_window(d)[1] <= now_ms)
    if reader.base is None or not days:
        return MonthArchive(market, first, days, empty_candles(), {}, days)
    frames: list[pd.DataFrame] = []
    sources: dict[date, str] = {}
    checksums: dict[str, str] = {}
    refused: list[ArchiveRefused] = []
    not_published: list[str] = []

    def take(file: ArchiveFile, outcome: ArchiveResult | ArchiveRefused | None) -> None:
        if isinstance(outcome, ArchiveRefused):
            log.warning("%s refused: %s; its days go to the REST API", file.name, outcome.reason)
            refused.append(outcome)
        elif outcome is None:
            not_published.append(file.name)
        else:
            frames.append(outcome.candles)
            checksums[file.name] = outcome.sha256
            source = SOURCE_MONTHLY if file.kind == "monthly" else SOURCE_DAILY
            sources.update((d, source) for d in file.days())

    if len(days) == len(_days_of_month(first)):  # the month is over
        monthly = reader.file("monthly", market, first)
        take(monthly, await _outcome(reader, monthly))
    daily = [reader.file("daily", market, d) for d in days if d not in sources]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_outcome(reader, f)) for f in daily]
    for file, task in zip(daily, tasks, strict=True):
        take(file, task.result())
    return MonthArchive(
        market,
        first,
        days,
        clean_candles(frames),
        dict(sorted(sources.items())),
        tuple(d for d in days if d not in sources),
        checksums,
        tuple(refused),
        tuple(not_published),
    )


async def _outcome(reader: ArchiveReader, file: ArchiveFile) -> ArchiveResult | ArchiveRefused | None:
    try:
        return await reader.fetch(file)
    except ArchiveRefused as refused:
        return refused


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _days_of_month(month: date) -> list[date]:
    first = month.replace(day=1)
    count = calendar.monthrange(first.year, first.month)[1]
    return [first + timedelta(days=i) for i in range(count)]
