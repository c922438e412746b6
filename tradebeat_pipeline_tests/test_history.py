"""History from Binance's archive files first, the REST API only for what they lack (`history.py`),
through the real backfill command: real HTTP to the sandbox's archive host and REST API, a real
SQLite file and a real Dagster run. A candle must not depend on which source served it."""

import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.metadata import RunMetadata
from tradebeat_pipeline.exchange.ccxt_client import EMPTY_REASKS
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline_tests.conftest import ms, stored_rows, stored_times

JANUARY_2020 = ["--start", "2020-01", "--end", "2020-01"]
MINUTES_OF_31_DAYS = 31 * 1440


def _rest_only_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, symbol: str, *range_: str
) -> list[tuple]:
    """The same range loaded from the REST API alone, into another database."""
    db = tmp_path / "rest-only.sqlite"
    monkeypatch.setenv("DB_PATH", str(db))
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", "off")
    assert main(["symbols", "add", symbol]) == 0
    assert main(["backfill", symbol, *range_]) == 0
    return stored_rows(db, symbol)


def _last_run_metadata() -> RunMetadata:
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.fetch_materializations(dg.AssetKey("ohlcv_1m"), limit=1).records
    assert record.asset_materialization is not None
    return RunMetadata.read(record.asset_materialization.metadata)


def _holes(db: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute('SELECT start, "end", kind FROM gaps ORDER BY start').fetchall()
    conn.close()
    return rows


def test_a_past_month_loads_from_its_monthly_file_with_no_klines_request(btc: Path, sandbox: Sandbox) -> None:
    assert main(["backfill", "BTC/USDT", *JANUARY_2020]) == 0

    assert len(stored_times(btc)) == MINUTES_OF_31_DAYS
    assert sandbox.archives.requests["BTCUSDT-1m-2020-01.zip"] == 1
    # Where its history begins (asked once, by the command); not one page of candles.
    assert sandbox.requests["klines"] == 1
    metadata = _last_run_metadata()
    assert metadata.candles_by_source == {"archive-monthly": MINUTES_OF_31_DAYS}
    assert metadata.archive_files_verified == 1
    assert metadata.archive_checksums is not None and list(metadata.archive_checksums) == [
        "BTCUSDT-1m-2020-01.zip"
    ]


def test_a_month_from_the_archive_equals_the_rest_answer_row_for_row(
    btc: Path, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2020-01-01..03 are real recorded Binance candles (the rest of the month made up around them).
    assert main(["backfill", "BTC/USDT", *JANUARY_2020]) == 0
    from_archive = stored_rows(btc)

    assert from_archive == _rest_only_rows(tmp_path, monkeypatch, "BTC/USDT", *JANUARY_2020)


def test_a_month_whose_monthly_file_is_not_published_loads_from_its_daily_files(
    btc: Path, sandbox: Sandbox
) -> None:
    sandbox.archives.inject("not_found", "BTCUSDT-1m-2020-01.zip", count=None)

    assert main(["backfill", "BTC/USDT", *JANUARY_2020]) == 0

    assert len(stored_times(btc)) == MINUTES_OF_31_DAYS
    assert sandbox.archives.requests["BTCUSDT-1m-2020-01-17.zip"] == 1
    assert _last_run_metadata().candles_by_source == {"archive-daily": MINUTES_OF_31_DAYS}
    assert sandbox.requests["klines"] == 1  # where history begins, as above


@pytest.mark.parametrize("fault", ["checksum_mismatch", "truncated", "bad_row"])
def test_a_corrupt_file_is_refused_whole_and_its_days_come_from_rest(
    btc: Path, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    sandbox.archives.inject("not_found", "BTCUSDT-1m-2020-01.zip", count=None)
    sandbox.archives.inject(fault, "BTCUSDT-1m-2020-01-02.zip", count=None)

    assert main(["backfill", "BTC/USDT", *JANUARY_2020]) == 0

    metadata = _last_run_metadata()
    assert metadata.candles_by_source == {"archive-daily": 30 * 1440, "rest": 1440}
    assert metadata.archive_files_refused is not None
    (refused,) = metadata.archive_files_refused
    assert refused.startswith("BTC/USDT: BTCUSDT-1m-2020-01-02.zip: ")
    assert stored_rows(btc) == _rest_only_rows(tmp_path, monkeypatch, "BTC/USDT", *JANUARY_2020)


def test_a_2025_file_with_microsecond_times_stores_millisecond_open_times(
    env: Path, sandbox: Sandbox
) -> None:
    assert main(["symbols", "add", "SYN/USDT"]) == 0

    assert main(["backfill", "SYN/USDT", "--start", "2025-01", "--end", "2025-01"]) == 0

    times = stored_times(env, "SYN/USDT")
    assert times[0] == ms("2025-01-01T00:00:00Z")
    assert times[-1] == ms("2025-01-31T23:59:00Z")
    assert len(times) == MINUTES_OF_31_DAYS
    assert _last_run_metadata().candles_by_source == {"archive-monthly": MINUTES_OF_31_DAYS}


def test_the_current_month_mixes_archive_days_and_rest_days_with_every_minute_once(
    env: Path, sandbox: Sandbox
) -> None:
    sandbox.clock.fixed_ms = ms("2025-12-15T12:34:30Z")  # daily files are out up to the 13th
    assert main(["symbols", "add", "SYN/USDT"]) == 0

    assert main(["backfill", "SYN/USDT", "--start", "2025-12", "--end", "2025-12"]) == 0

    first, closed_end = ms("2025-12-01T00:00:00Z"), ms("2025-12-15T12:34:00Z")
    assert stored_times(env, "SYN/USDT") == list(range(first, closed_end, 60_000))
    assert _last_run_metadata().candles_by_source == {
        "archive-daily": 13 * 1440,
        "rest": (closed_end - ms("2025-12-14T00:00:00Z")) // 60_000,
    }


def test_minutes_a_file_lacks_are_asked_of_rest_once_and_a_hole_both_lack_is_the_exchanges(
    btc: Path, sandbox: Sandbox
) -> None:
    # The real outage of 2023-03-24: no candle 12:40..13:59 UTC in the archive, nor on the API.
    assert main(["backfill", "BTC/USDT", "--start", "2023-03", "--end", "2023-03"]) == 0

    assert _holes(btc) == [(ms("2023-03-24T12:40:00Z"), ms("2023-03-24T13:59:00Z"), "exchange")]
    # Where history begins (once, as above), then one fetch of exactly the 80 minutes the file
    # lacks: its empty answer asked again EMPTY_REASKS times, as every empty REST answer is.
    assert sandbox.requests["klines"] == 1 + 1 + EMPTY_REASKS
    assert _last_run_metadata().candles_by_source == {"archive-monthly": MINUTES_OF_31_DAYS - 80}


def test_with_archives_off_every_candle_comes_from_rest(btc: Path, sandbox: Sandbox, rest_only: None) -> None:
    assert main(["backfill", "BTC/USDT", *JANUARY_2020]) == 0

    assert sum(sandbox.archives.requests.values()) == 0
    assert _last_run_metadata().candles_by_source == {"rest": MINUTES_OF_31_DAYS}
