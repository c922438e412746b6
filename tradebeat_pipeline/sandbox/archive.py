"""Binance's public archive layout (data.binance.vision) built from the sandbox's own market series.

`/data/spot/{monthly,daily}/klines/{MARKET}/1m/{MARKET}-1m-{period}.zip` and its `.CHECKSUM`, as
Binance publishes them: one CSV of 12 columns, no header, open and close times in microseconds for
days from 2025-01-01 on. A daily file is published two days after its day ends (never the current or
the previous day), a monthly one once its last day's file is; a period without candles has no file.
Files are built on first request and cached. Faults make chosen files arrive broken, as a mirror or
a bad upload can, to prove the reader refuses them whole.
"""

import hashlib
import io
import re
import threading
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tradebeat_pipeline.sandbox.market_data import Kline, Series
from tradebeat_pipeline.timewindows import MINUTE_MS, day_window, utc_day

ARCHIVE_FAULT_KINDS = (
    # The file as published is broken (its CHECKSUM matches what is served, except for the first):
    "checksum_mismatch",  # the CHECKSUM holds another digest than the zip's
    "truncated",  # the zip cut in half, as a failed upload leaves it
    "header",  # a header row before the candles (Binance's newer files have one)
    "bad_row",  # one row with a non-numeric open price
    # The answer is:
    "not_found",  # 404, as if not published
    "http_500",
    "slow",  # answers after the sandbox's `slow_s`, past a client's timeout
)
_VARIANTS = ("checksum_mismatch", "truncated", "header", "bad_row")
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)
MICROSECONDS_FROM_MS = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
_FILE = re.compile(
    r"(?P<market>[A-Z0-9]+)-1m-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.zip(?P<checksum>\.CHECKSUM)?"
)
# Files kept built: enough for the tests' months; a benchmark over a whole history keeps them all.
CACHED_FILES = 64


@dataclass(frozen=True)
class ArchiveRequest:
    """One requested archive path: which file, and whether its CHECKSUM was asked for."""

    kind: str  # monthly | daily
    market: str
    period: date  # the day, or the month's first day
    zip_name: str
    checksum: bool

    def window(self) -> tuple[int, int]:
        if self.kind == "daily":
            return day_window(self.period)
        following = date(self.period.year + self.period.month // 12, self.period.month % 12 + 1, 1)
        return day_window(self.period)[0], day_window(following)[0]


def locate(kind: str, market: str, file: str) -> ArchiveRequest | None:
    """The file a request path names, or None when the path is not one Binance would serve."""
    match = _FILE.fullmatch(file)
    if kind not in ("monthly", "daily") or match is None or match["market"] != market:
        return None
    daily = len(match["period"]) == 10
    if daily != (kind == "daily"):
        return None
    try:
        period = date.fromisoformat(match["period"] if daily else match["period"] + "-01")
    except ValueError:
        return None
    zip_name = file.removesuffix(".CHECKSUM")
    return ArchiveRequest(kind, market, period, zip_name, match["checksum"] is not None)


def published(request: ArchiveRequest, now_ms: int) -> bool:
    """Daily files from two days after their day; a monthly file once its last day's file is out."""
    latest = utc_day(now_ms) - timedelta(days=2)
    last_day = utc_day(request.window()[1] - 1)
    return last_day <= latest


def csv_text(rows: list[Kline], variant: str | None = None) -> str:
    """Rows as Binance's archives hold them: microsecond times from 2025 on, missing values empty."""
    lines = [HEADER] if variant == "header" else []
    for row in rows:
        values = list(row)
        open_time = int(str(values[0]))
        if open_time >= MICROSECONDS_FROM_MS:
            values[0], values[6] = open_time * 1000, int(str(values[6])) * 1000 + 999
        lines.append(",".join("" if v is None else str(v) for v in values))
    if variant == "bad_row":
        broken = len(lines) // 2
        fields = lines[broken].split(",")
        fields[1] = "abc"
        lines[broken] = ",".join(fields)
    return "\n".join(lines) + "\n"


def zip_bytes(csv_name: str, text: str, stamp: date) -> bytes:
    """A deterministic zip of one CSV (same rows, same bytes, same checksum)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(csv_name, date_time=(stamp.year, stamp.month, stamp.day, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, text)
    return buffer.getvalue()


@dataclass
class ArchiveFault:
    kind: str
    remaining: int | None  # None: until cleared
    file: str | None = None  # zip name (BTCUSDT-1m-2020-01-01.zip); None = every file


@dataclass
class ArchiveShelf:
    """The sandbox's published files: built on demand and cached, with injected faults and a log."""

    faults: list[ArchiveFault] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)  # requests per path's file name
    max_files: int = CACHED_FILES
    # Where intact files are kept once built, as a real archive's static files (None: memory only).
    # A benchmark over years of history builds them once, not on every run.
    shelf_dir: Path | None = None
    _cache: OrderedDict[tuple[str, str, date, str | None], tuple[bytes, str] | None] = field(
        default_factory=OrderedDict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, kind: str, file: str | None = None, count: int | None = 1) -> None:
        """Serve `file` (every file when None) broken in this way for the next `count` downloads of
        its zip (None: until `clear`); `not_found`, `http_500` and `slow` count every request of it."""
        if kind not in ARCHIVE_FAULT_KINDS:
            raise ValueError(f"unknown archive fault {kind!r}; one of {', '.join(ARCHIVE_FAULT_KINDS)}")
        with self._lock:
            self.faults.append(ArchiveFault(kind, count, file))

    def clear(self) -> None:
        """No faults, no request history (the cache stays: the same rows build the same files)."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def take_fault(self, request: ArchiveRequest) -> str | None:
        """The fault this request is answered with; a broken file's CHECKSUM shows the broken file
        without using up the fault, its zip download uses one."""
        with self._lock:
            name = request.zip_name + (".CHECKSUM" if request.checksum else "")
            self.requests[name] += 1
            for fault in self.faults:
                if fault.file not in (None, request.zip_name):
                    continue
                if fault.remaining is not None and fault.remaining <= 0:
                    continue
                if fault.remaining is not None and (fault.kind not in _VARIANTS or not request.checksum):
                    fault.remaining -= 1
                return fault.kind
            return None

    def build(self, series: Series, request: ArchiveRequest, variant: str | None) -> tuple[bytes, str] | None:
        """(zip bytes, CHECKSUM text) of a file, or None when the period holds no candles."""
        key = (request.market, request.kind, request.period, variant)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        kept = None if variant is not None or self.shelf_dir is None else self.shelf_dir / request.zip_name
        if kept is not None and kept.is_file():
            return self._remember(
                key, (kept.read_bytes(), kept.with_name(kept.name + ".CHECKSUM").read_text())
            )
        start, end = request.window()
        rows = series.klines(start, end - 1, (end - start) // MINUTE_MS)
        built: tuple[bytes, str] | None = None
        if rows:
            stem = request.zip_name.removesuffix(".zip")
            body = zip_bytes(stem + ".csv", csv_text(rows, variant), utc_day(end))
            if variant == "truncated":
                body = body[: len(body) // 2]
            digest = hashlib.sha256(body).hexdigest()
            if variant == "checksum_mismatch":
                digest = hashlib.sha256(body + b"tampered").hexdigest()
            built = body, f"{digest}  {request.zip_name}"
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.with_name(kept.name + ".CHECKSUM").write_text(built[1])
                kept.write_bytes(body)  # last: a file present means its checksum is too
        return self._remember(key, built)

    def _remember(
        self, key: tuple[str, str, date, str | None], built: tuple[bytes, str] | None
    ) -> tuple[bytes, str] | None:
        with self._lock:
            self._cache[key] = built
            while len(self._cache) > self.max_files:
                self._cache.popitem(last=False)
        return built
