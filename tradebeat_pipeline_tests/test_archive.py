"""The archive reader: real files verified and parsed exactly as the REST API's candles, broken files
refused whole, unpublished files and days named for REST. Real HTTP throughout (the sandbox, or the
bundled real archives served from disk); the REST side is the real ccxt client."""

import asyncio
import io
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from tradebeat_pipeline.archive import (
    MICROSECONDS_ABOVE,
    SOURCE_DAILY,
    SOURCE_MONTHLY,
    ArchiveFile,
    ArchiveReader,
    ArchiveRefused,
    ArchiveResult,
    MonthArchive,
    archive_urls,
    daily_archive_urls,
    parse_archive_bytes,
    parse_archive_csv,
    parse_archive_zip,
    read_archive,
    read_month,
)
from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.exchange.binance import parse_klines
from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange
from tradebeat_pipeline.sandbox.archive import HEADER, locate
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline.timewindows import DAY_MS, day_window
from tradebeat_pipeline_tests.conftest import ms

BUNDLED = Path(__file__).parent / "data" / "binance_vision"
REAL_DAYS = [date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 3)]
NOW = ms("2026-01-01T00:00:00Z")
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def rest_candles(server: SandboxServer, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    """The same minutes over REST from the sandbox, through the real ccxt client."""

    async def fetch() -> pd.DataFrame:
        async with CcxtExchange(api_url=server.url, backoff_s=0.01) as exchange:
            result = await exchange.fetch_candles(symbol, start_ms, end_ms)
        assert not result.failures
        return result.candles

    return run(fetch())


def reader(base: str, tmp_path: Path, **options: Any) -> ArchiveReader:
    return ArchiveReader(base, tmp_dir=tmp_path, backoff_s=0.01, **options)


def month_of(base: str, tmp_path: Path, market: str, month: date, now_ms: int = NOW) -> MonthArchive:
    async def read() -> MonthArchive:
        async with reader(base, tmp_path) as archives:
            return await read_month(archives, market, month, now_ms=now_ms)

    return run(read())


def fetch(base: str, tmp_path: Path, file: ArchiveFile, **options: Any) -> ArchiveResult | None:
    async def get() -> ArchiveResult | None:
        async with reader(base, tmp_path, **options) as archives:
            return await archives.fetch(file)

    return run(get())


@asynccontextmanager
async def bundled_archive_host() -> AsyncIterator[str]:
    """The bundled real daily files at Binance's paths, on 127.0.0.1 (a 404 for anything else)."""
    app = web.Application()
    app.router.add_static("/data/spot/daily/klines/BTCUSDT/1m/", BUNDLED)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def csv_in(zip_body: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_body)) as archive:
        return archive.read(archive.infolist()[0])


def rest_parser_frame(csv: bytes) -> pd.DataFrame:
    """The rows through `parse_klines` one by one, as the REST path reads them (an empty field is
    null), open times in milliseconds."""
    rows = [[v or None for v in line.split(",")] for line in csv.decode("ascii").splitlines()]
    candles, _ = parse_klines(rows, where="reference")
    if (candles["timestamp"] > MICROSECONDS_ABOVE).all():
        candles["timestamp"] //= 1000
    return candles


def assert_same_bits(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal values and dtypes, and every float the same 64 bits (-0.0 is not 0.0 here)."""
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    for column in got.select_dtypes("float64"):
        assert np.array_equal(
            got[column].to_numpy().view(np.int64), expected[column].to_numpy().view(np.int64)
        )


# -- the real archives ----------------------------------------------------------------------------


@pytest.mark.parametrize("day", REAL_DAYS, ids=str)
def test_a_real_daily_archive_verifies_and_parses_into_exactly_the_rest_frame(
    day: date, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    file = daily_archive_urls("https://data.binance.vision", "BTCUSDT", day)
    zip_path = BUNDLED / file.name
    result = read_archive(zip_path, file, (BUNDLED / f"{file.name}.CHECKSUM").read_text())
    assert result.rows == 1440
    assert result.sha256 == (BUNDLED / f"{file.name}.CHECKSUM").read_text().split()[0]
    expected = rest_candles(sandbox_server, "BTC/USDT", *day_window(day))
    pd.testing.assert_frame_equal(result.candles, expected, check_exact=True)


@pytest.mark.parametrize("day", REAL_DAYS, ids=str)
def test_a_real_archive_parses_bit_for_bit_into_the_rest_parsers_frame(day: date) -> None:
    file = daily_archive_urls("https://data.binance.vision", "BTCUSDT", day)
    candles, rows = parse_archive_zip(BUNDLED / file.name, file)
    assert rows == 1440
    assert_same_bits(candles, rest_parser_frame(csv_in((BUNDLED / file.name).read_bytes())))


def test_a_real_archive_whose_bytes_changed_is_refused_before_parsing(tmp_path: Path) -> None:
    file = daily_archive_urls("https://data.binance.vision", "BTCUSDT", REAL_DAYS[0])
    copy = tmp_path / file.name
    shutil.copy(BUNDLED / file.name, copy)
    with copy.open("r+b") as f:  # one byte of the deflated CSV
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ArchiveRefused, match=rf"^{file.name}: sha256 \w+ does not match its CHECKSUM"):
        read_archive(copy, file, (BUNDLED / f"{file.name}.CHECKSUM").read_text())


def test_the_real_archives_over_http_cover_their_days_and_name_the_rest_of_the_month(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    async def read() -> MonthArchive:
        async with bundled_archive_host() as base, reader(base, tmp_path) as archives:
            return await read_month(archives, "BTCUSDT", date(2020, 1, 1), now_ms=NOW)

    month = run(read())
    # No monthly file there (404): the daily files of every day, three of them published.
    assert month.not_published[0] == "BTCUSDT-1m-2020-01.zip"
    assert month.sources == dict.fromkeys(REAL_DAYS, SOURCE_DAILY)
    assert month.uncovered == tuple(date(2020, 1, d) for d in range(4, 32))
    assert month.refused == ()
    for day in REAL_DAYS:
        name = f"BTCUSDT-1m-{day}.zip"
        assert month.checksums[name] == (BUNDLED / f"{name}.CHECKSUM").read_text().split()[0]
    expected = rest_candles(
        sandbox_server, "BTC/USDT", ms("2020-01-01T00:00:00Z"), ms("2020-01-04T00:00:00Z")
    )
    pd.testing.assert_frame_equal(month.candles, expected, check_exact=True)
    assert list(tmp_path.iterdir()) == []  # the downloads were temporary files, gone


# -- the sandbox's archives -----------------------------------------------------------------------


def test_a_month_from_its_monthly_file_equals_the_rest_answer_row_for_row(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    month = month_of(sandbox_server.url, tmp_path, "SYNUSDT", date(2024, 2, 1))
    assert set(month.sources.values()) == {SOURCE_MONTHLY} and len(month.sources) == 29
    assert list(month.checksums) == ["SYNUSDT-1m-2024-02.zip"] and month.uncovered == ()
    assert len(month.candles) == 29 * 1440
    expected = rest_candles(
        sandbox_server, "SYN/USDT", ms("2024-02-01T00:00:00Z"), ms("2024-03-01T00:00:00Z")
    )
    pd.testing.assert_frame_equal(month.candles, expected, check_exact=True)
    # Archive requests carry no request weight: the REST budget saw only ccxt's requests.
    assert set(sandbox.requests) == {"exchangeInfo", "time", "klines"}


def test_microsecond_files_from_2025_become_millisecond_open_times(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    day = date(2025, 1, 1)
    file = daily_archive_urls(sandbox_server.url, "SYNUSDT", day)
    result = fetch(sandbox_server.url, tmp_path, file)
    assert result is not None
    assert result.candles["timestamp"].iloc[0] == ms("2025-01-01T00:00:00Z")
    pd.testing.assert_frame_equal(
        result.candles, rest_candles(sandbox_server, "SYN/USDT", *day_window(day)), check_exact=True
    )


@pytest.mark.parametrize(
    ("market", "day", "held"),
    [
        ("SYNUSDT", date(2025, 1, 1), b"\n1735689660000000,"),  # times in microseconds
        ("SOLUSDT", date(2023, 3, 24), b",,,,0\n"),  # no optional volumes (empty fields); the halt
    ],
)
def test_a_sandbox_file_parses_bit_for_bit_into_the_rest_parsers_frame(
    market: str, day: date, held: bytes, tmp_path: Path, sandbox: Sandbox
) -> None:
    file = daily_archive_urls("http://127.0.0.1", market, day)
    wanted = locate("daily", market, file.name)
    assert wanted is not None
    built = sandbox.archives.build(sandbox.markets[market].series, wanted, None)
    assert built is not None
    (tmp_path / file.name).write_bytes(built[0])
    assert held in csv_in(built[0])
    candles, rows = parse_archive_zip(tmp_path / file.name, file)
    assert rows == len(candles) > 0
    assert_same_bits(candles, rest_parser_frame(csv_in(built[0])))


def test_the_current_month_is_read_from_the_daily_files_of_its_closed_days(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    now = ms("2025-03-15T10:00:00Z")
    sandbox.clock.fixed_ms = now
    month = month_of(sandbox_server.url, tmp_path, "SYNUSDT", date(2025, 3, 1), now_ms=now)
    assert month.days == tuple(date(2025, 3, d) for d in range(1, 15))  # the 15th has not closed
    assert "SYNUSDT-1m-2025-03.zip" not in sandbox.archives.requests  # the month is not over
    assert month.sources == {date(2025, 3, d): SOURCE_DAILY for d in range(1, 14)}
    assert month.uncovered == (date(2025, 3, 14),)  # yesterday's file is not published yet
    assert month.not_published == ("SYNUSDT-1m-2025-03-14.zip",)
    expected = rest_candles(
        sandbox_server, "SYN/USDT", ms("2025-03-01T00:00:00Z"), ms("2025-03-14T00:00:00Z")
    )
    pd.testing.assert_frame_equal(month.candles, expected, check_exact=True)


def test_a_month_over_but_not_yet_published_falls_back_to_its_daily_files(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    month = month_of(sandbox_server.url, tmp_path, "S001USDT", date(2025, 12, 1))
    assert month.not_published == ("S001USDT-1m-2025-12.zip", "S001USDT-1m-2025-12-31.zip")
    assert len(month.sources) == 30 and month.uncovered == (date(2025, 12, 31),)
    assert len(month.candles) == 30 * 1440


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("checksum_mismatch", r"sha256 \w{64} does not match its CHECKSUM \(\w{64}\)"),
        ("truncated", "not a readable zip"),
        ("bad_row", "kline #720 has a non-numeric open: 'abc'"),
    ],
)
def test_a_broken_file_is_refused_whole_naming_it_and_why(
    fault: str, reason: str, tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    file = daily_archive_urls(sandbox_server.url, "SYNUSDT", date(2024, 5, 6))
    sandbox.archives.inject(fault, file.name)
    with pytest.raises(ArchiveRefused, match=rf"^SYNUSDT-1m-2024-05-06\.zip: {reason}") as refused:
        fetch(sandbox_server.url, tmp_path, file)
    assert refused.value.file == file
    assert fetch(sandbox_server.url, tmp_path, file) is not None  # the genuine file, once repaired


def test_a_refused_monthly_file_leaves_its_days_to_the_daily_files_and_rest(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    sandbox.archives.inject("truncated", "BTCUSDT-1m-2020-01.zip")
    sandbox.archives.inject("bad_row", "BTCUSDT-1m-2020-01-02.zip")
    month = month_of(sandbox_server.url, tmp_path, "BTCUSDT", date(2020, 1, 1))
    assert [r.file.name for r in month.refused] == ["BTCUSDT-1m-2020-01.zip", "BTCUSDT-1m-2020-01-02.zip"]
    others = [date(2020, 1, d) for d in range(1, 32) if d != 2]  # the sandbox's January is whole
    assert month.sources == dict.fromkeys(others, SOURCE_DAILY)
    assert month.uncovered == (date(2020, 1, 2),)  # the refused day is left to REST
    assert sorted(set(month.candles["timestamp"] // DAY_MS * DAY_MS)) == [
        ms(f"{day.isoformat()}T00:00:00Z") for day in others
    ]


def test_a_header_row_is_skipped(tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    file = daily_archive_urls(sandbox_server.url, "SYNUSDT", date(2024, 5, 6))
    plain = fetch(sandbox_server.url, tmp_path, file)
    sandbox.archives.inject("header", file.name)
    with_header = fetch(sandbox_server.url, tmp_path, file)
    assert plain is not None and with_header is not None
    assert with_header.sha256 != plain.sha256 and with_header.rows == plain.rows == 1440
    pd.testing.assert_frame_equal(with_header.candles, plain.candles, check_exact=True)


def test_a_file_not_published_is_none_not_an_error(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    base = sandbox_server.url
    assert fetch(base, tmp_path, daily_archive_urls(base, "SYNUSDT", date(2025, 12, 31))) is None  # yesterday
    assert fetch(base, tmp_path, archive_urls(base, "SYNUSDT", date(2026, 1, 1))) is None  # this month
    assert fetch(base, tmp_path, daily_archive_urls(base, "XRPUSDT", date(2024, 1, 1))) is None  # no market
    sandbox.archives.inject("not_found", "SYNUSDT-1m-2024-05-06.zip")
    assert fetch(base, tmp_path, daily_archive_urls(base, "SYNUSDT", date(2024, 5, 6))) is None


def test_server_errors_and_timeouts_are_retried(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    file = daily_archive_urls(sandbox_server.url, "SYNUSDT", date(2024, 5, 7))
    sandbox.slow_s = 5.0
    sandbox.archives.inject("http_500", file.name, count=2)
    sandbox.archives.inject("slow", file.name, count=1)
    assert fetch(sandbox_server.url, tmp_path, file, timeout_s=0.5) is not None
    assert sandbox.archives.requests[file.name + ".CHECKSUM"] == 4  # 500, 500, timed out, answered
    assert sandbox.archives.requests[file.name] == 1


def test_a_file_that_keeps_failing_is_refused_after_the_last_attempt(
    tmp_path: Path, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    file = daily_archive_urls(sandbox_server.url, "SYNUSDT", date(2024, 5, 7))
    sandbox.archives.inject("http_500", file.name, count=None)
    with pytest.raises(ArchiveRefused, match=r"download failed after 3 attempts \(HTTP 500"):
        fetch(sandbox_server.url, tmp_path, file, attempts=3)


def test_archives_off_cover_nothing_and_ask_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    async def read() -> MonthArchive:
        async with ArchiveReader(None, tmp_dir=tmp_path) as archives:
            return await read_month(archives, "SYNUSDT", date(2024, 2, 1), now_ms=NOW)

    month = run(read())
    assert month.uncovered == tuple(date(2024, 2, 1) + timedelta(days=i) for i in range(29))
    assert month.candles.empty and month.sources == {} and not sandbox.archives.requests


# -- parsing rules, on the text itself ------------------------------------------------------------

FILE = daily_archive_urls("https://data.binance.vision", "BTCUSDT", date(2020, 1, 1))
ROW = "1577836800000,7195.24,7196.25,7183.14,7186.68,51.642812,1577836859999,371233.51,493,19.59,140888.41,0"
NEXT = ROW.replace("1577836800000", "1577836860000").replace("1577836859999", "1577836919999")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (ROW.replace(",0", "", 1) + "\n", "kline #0 has 11 fields, not 12"),
        (ROW.replace("1577836800000", "1577836800001", 1) + "\n", "is not a whole minute"),
        (ROW.replace("1577836800000", "1577750400000", 1) + "\n", "is outside the file's period"),
        (ROW + "\n" + ROW + "\n", "kline #1: open time 1577836800000 does not follow the one before"),
        (ROW + "\n" + ROW.replace("1577836800000", "1577836860000000") + "\n", "mix microseconds"),
        (ROW.replace("7195.24", "", 1) + "\n", "kline #0 has no open"),
        (ROW + "\n\n" + ROW + "\n", "kline #1 has 1 fields"),
        (ROW + ",1\n", "kline #0 has 13 fields, not 12"),
        (ROW + "\n" + NEXT.replace("7195.24", "abc") + "\n", "kline #1 has a non-numeric open: 'abc'"),
        (ROW.replace("51.642812", "nan") + "\n", "kline #0 has a non-numeric volume: 'nan'"),
        (ROW.replace("7186.68", "inf") + "\n", "kline #0 has a non-numeric close: 'inf'"),
        (ROW.replace("7196.25", "1e999") + "\n", "kline #0 has a non-numeric high: '1e999'"),
        (ROW.replace("371233.51", "9" * 400) + "\n", "kline #0 has a non-numeric quote_volume: '999"),
        (ROW.replace("7183.14", ".") + "\n", "kline #0 has a non-numeric low: '.'"),
        (ROW.replace("7195.24", "7.19.5") + "\n", "kline #0 has a non-numeric open: '7.19.5'"),
        (ROW.replace("7195.24", '"7195.24"') + "\n", "kline #0 has a non-numeric open: '\"7195.24\"'"),
        (ROW.replace("1577836859999", "") + "\n", r"no numeric close time \(field 6\)"),
        (ROW.replace("1577836859999", "1577836860000") + "\n", "#0: open time 1577836800000 does not close"),
        (
            ROW + "\n" + NEXT.replace(",493,", ",493.5,") + "\n",
            "kline #1 has a trade count that is not whole",
        ),
    ],
)
def test_a_malformed_row_refuses_the_whole_file(text: str, problem: str) -> None:
    with pytest.raises(ArchiveRefused, match=problem):
        parse_archive_csv(text, FILE)


@pytest.mark.parametrize(
    "text",
    [
        ROW.replace("7195.24", " 7195.24") + "\n",
        ROW.replace("7195.24", "+7195.24") + "\n",
        ROW.replace("7195.24", "7.19524e3") + "\n",
        ROW.replace("1577836800000", "1577836800000.0") + "\n",
        ROW + "\r\n" + NEXT + "\r\n",
    ],
    ids=["space", "sign", "exponent", "time with a point", "CRLF"],
)
def test_rows_that_are_not_plain_digits_are_read_exactly_as_the_rest_parser_reads_them(text: str) -> None:
    candles, rows = parse_archive_csv(text, FILE)
    assert rows == len(text.splitlines())
    assert_same_bits(candles, rest_parser_frame(text.encode("ascii")))


def test_a_csv_that_is_not_ascii_is_refused() -> None:
    with pytest.raises(ArchiveRefused, match=r"the CSV is not plain text \('ascii' codec can't decode"):
        parse_archive_bytes(ROW.replace("7195.24", "7195\u00b724").encode("utf-8") + b"\n", FILE)


def test_a_file_of_its_header_row_alone_holds_no_candles() -> None:
    candles, rows = parse_archive_csv(HEADER + "\n", FILE)
    assert rows == 0 and candles.empty and list(candles.columns) == list(CANDLE_COLUMNS)


@pytest.mark.parametrize(
    ("members", "found"),
    [(["a.csv", "b.csv"], "a.csv, b.csv"), (["a.txt"], "a.txt"), ([], "nothing")],
)
def test_a_zip_without_exactly_one_csv_is_refused(members: list[str], found: str, tmp_path: Path) -> None:
    path = tmp_path / FILE.name
    with zipfile.ZipFile(path, "w") as archive:
        for name in members:
            archive.writestr(name, ROW + "\n")
    with pytest.raises(ArchiveRefused, match=f"^{FILE.name}: expected one CSV in the zip, found {found}$"):
        parse_archive_zip(path, FILE)


def test_a_zip_whose_csv_fails_its_crc_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE.name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("BTCUSDT-1m-2020-01-01.csv", ROW + "\n")
    body = bytearray(path.read_bytes())
    body[body.index(b"7195.24")] = ord("8")  # still a plain row: only the CRC tells
    path.write_bytes(bytes(body))
    with pytest.raises(ArchiveRefused, match=r"not a readable zip \(BadZipFile: Bad CRC-32"):
        parse_archive_zip(path, FILE)


def test_an_empty_optional_field_stays_missing_as_rest_null() -> None:
    candles, rows = parse_archive_csv(ROW.replace(",493,", ",,") + "\n", FILE)
    assert rows == 1 and candles["trades"].isna().all() and candles["volume"].iloc[0] == 51.642812


def test_the_reader_loads_without_dagster_or_ccxt() -> None:
    probe = "import sys, tradebeat_pipeline.archive; print(sorted({'dagster', 'ccxt'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
