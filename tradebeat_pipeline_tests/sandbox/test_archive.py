"""The sandbox publishes Binance's archive layout from its own series: the same CSV bytes as the real
files, microseconds from 2025, Binance's publication delays, and files broken on request."""

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tradebeat_pipeline.sandbox.archive import HEADER
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline_tests.conftest import ms

BUNDLED = Path(__file__).parent.parent / "data" / "binance_vision"
DAILY = "/data/spot/daily/klines/{market}/1m/{market}-1m-{day}.zip"
MONTHLY = "/data/spot/monthly/klines/{market}/1m/{market}-1m-{month}.zip"


def get(server: SandboxServer, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def daily(market: str, day: str) -> str:
    return DAILY.format(market=market, day=day)


def monthly(market: str, month: str) -> str:
    return MONTHLY.format(market=market, month=month)


def csv_of(body: bytes) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        (member,) = archive.infolist()
        return member.filename, archive.read(member)


def test_served_daily_files_hold_the_same_csv_bytes_as_the_real_ones(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    for day in ("2020-01-01", "2020-01-02", "2020-01-03"):
        status, body = get(sandbox_server, daily("BTCUSDT", day))
        assert status == 200
        with zipfile.ZipFile(BUNDLED / f"BTCUSDT-1m-{day}.zip") as real:
            (member,) = real.infolist()
            assert csv_of(body) == (member.filename, real.read(member))


def test_the_checksum_is_the_sha256_of_the_served_zip_in_binances_format(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    _, body = get(sandbox_server, daily("BTCUSDT", "2020-01-01"))
    status, checksum = get(sandbox_server, daily("BTCUSDT", "2020-01-01") + ".CHECKSUM")
    assert status == 200
    assert checksum.decode() == f"{hashlib.sha256(body).hexdigest()}  BTCUSDT-1m-2020-01-01.zip"
    assert get(sandbox_server, daily("BTCUSDT", "2020-01-01"))[1] == body  # built once, the same bytes


def test_times_are_microseconds_from_2025_and_milliseconds_before(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    _, before = get(sandbox_server, daily("SYNUSDT", "2024-12-31"))
    _, after = get(sandbox_server, daily("SYNUSDT", "2025-01-01"))
    first_before = csv_of(before)[1].split(b"\n")[0].split(b",")
    first_after = csv_of(after)[1].split(b"\n")[0].split(b",")
    assert int(first_before[0]) == ms("2024-12-31T00:00:00Z")
    assert int(first_before[6]) == ms("2024-12-31T00:00:00Z") + 59_999
    assert int(first_after[0]) == ms("2025-01-01T00:00:00Z") * 1000
    assert int(first_after[6]) == ms("2025-01-01T00:00:00Z") * 1000 + 59_999_999
    assert len(first_after) == len(first_before) == 12


def test_a_monthly_file_holds_every_candle_of_the_month(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    status, body = get(sandbox_server, monthly("SYNUSDT", "2024-02"))
    name, text = csv_of(body)
    lines = text.decode().splitlines()
    assert (status, name, len(lines)) == (200, "SYNUSDT-1m-2024-02.csv", 29 * 1440)
    assert int(lines[0].split(",")[0]) == ms("2024-02-01T00:00:00Z")
    assert int(lines[-1].split(",")[0]) == ms("2024-02-29T23:59:00Z")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (daily("SYNUSDT", "2025-12-31"), 404),  # the previous day
        (daily("SYNUSDT", "2026-01-01"), 404),  # the current day
        (daily("SYNUSDT", "2025-12-30"), 200),
        (monthly("SYNUSDT", "2026-01"), 404),  # not over
        (monthly("SYNUSDT", "2025-12"), 404),  # over, but its last day's file is not out yet
        (monthly("SYNUSDT", "2025-11"), 200),
        (monthly("SYNUSDT", "2017-07"), 404),  # before the market's first candle
        (monthly("SYNUSDT", "2017-08"), 200),  # from the first candle on
        (daily("BTCUSDT", "2020-02-01"), 404),  # a day the sandbox holds no candles for
        (daily("XRPUSDT", "2024-01-01"), 404),  # no such market
        (daily("SYNUSDT", "2024-02-30"), 404),  # no such day
        ("/data/spot/daily/klines/SYNUSDT/1m/BTCUSDT-1m-2024-01-01.zip", 404),  # another market's name
        ("/data/spot/monthly/klines/SYNUSDT/1m/SYNUSDT-1m-2024-01-01.zip", 404),  # a day under monthly
    ],
)
def test_files_are_published_as_binance_publishes_them(
    path: str, status: int, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    assert get(sandbox_server, path)[0] == status
    assert get(sandbox_server, path + ".CHECKSUM")[0] == status


def test_the_publication_follows_the_sandbox_clock(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    sandbox.clock.fixed_ms = ms("2025-12-01T23:59:59Z")
    assert get(sandbox_server, monthly("SYNUSDT", "2025-11"))[0] == 404
    assert get(sandbox_server, daily("SYNUSDT", "2025-11-30"))[0] == 404
    assert get(sandbox_server, daily("SYNUSDT", "2025-11-29"))[0] == 200
    sandbox.clock.fixed_ms = ms("2025-12-02T00:00:00Z")
    assert get(sandbox_server, monthly("SYNUSDT", "2025-11"))[0] == 200
    assert get(sandbox_server, daily("SYNUSDT", "2025-11-30"))[0] == 200
    assert get(sandbox_server, daily("SYNUSDT", "2025-12-01"))[0] == 404


def test_archive_requests_carry_no_request_weight(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    get(sandbox_server, daily("SYNUSDT", "2024-05-06"))
    get(sandbox_server, daily("SYNUSDT", "2024-05-06") + ".CHECKSUM")
    assert sandbox.weight_log == [] and not sandbox.requests
    assert sandbox.archives.requests == {
        "SYNUSDT-1m-2024-05-06.zip": 1,
        "SYNUSDT-1m-2024-05-06.zip.CHECKSUM": 1,
    }
    get(sandbox_server, "/api/v3/ping")
    assert [w for _, w in sandbox.weight_log] == [1]  # REST still counts


def served(server: SandboxServer, path: str) -> tuple[bytes, str]:
    """(zip, CHECKSUM) in the order a reader asks for them."""
    checksum = get(server, path + ".CHECKSUM")[1].decode()
    return get(server, path)[1], checksum


def test_faults_break_chosen_files_only(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    path = daily("SYNUSDT", "2024-05-06")
    genuine, genuine_checksum = served(sandbox_server, path)

    sandbox.archives.inject("checksum_mismatch", "SYNUSDT-1m-2024-05-06.zip")
    body, checksum = served(sandbox_server, path)
    assert (
        body == genuine and checksum != genuine_checksum and checksum.endswith("  SYNUSDT-1m-2024-05-06.zip")
    )

    sandbox.archives.inject("truncated", "SYNUSDT-1m-2024-05-06.zip")
    body, checksum = served(sandbox_server, path)
    assert len(body) == len(genuine) // 2 and checksum.split()[0] == hashlib.sha256(body).hexdigest()
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))

    sandbox.archives.inject("header", "SYNUSDT-1m-2024-05-06.zip")
    body, checksum = served(sandbox_server, path)
    lines = csv_of(body)[1].decode().splitlines()
    assert lines[0] == HEADER and "\n".join(lines[1:]) + "\n" == csv_of(genuine)[1].decode()

    sandbox.archives.inject("bad_row", "SYNUSDT-1m-2024-05-06.zip")
    lines = csv_of(served(sandbox_server, path)[0])[1].decode().splitlines()
    assert lines[720].split(",")[1] == "abc" and lines[719] == csv_of(genuine)[1].decode().splitlines()[719]

    # Each fault was used up by one download; other files were never touched.
    assert served(sandbox_server, path) == (genuine, genuine_checksum)
    sandbox.archives.inject("not_found", "SYNUSDT-1m-2024-05-06.zip", count=None)
    assert get(sandbox_server, path)[0] == 404 and get(sandbox_server, path + ".CHECKSUM")[0] == 404
    assert get(sandbox_server, daily("SYNUSDT", "2024-05-07"))[0] == 200
    sandbox.archives.clear()
    assert get(sandbox_server, path)[0] == 200


def test_an_unknown_archive_fault_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="unknown archive fault"):
        sandbox.archives.inject("http_999")
