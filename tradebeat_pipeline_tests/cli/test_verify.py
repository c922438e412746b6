"""`tradebeat verify`: the stored candles compared, bit for bit, with the archives downloaded again;
`--repair` puts the archive's values back. The real CLI entry, a real SQLite file loaded from the
sandbox's REST API through the real ccxt client, and real HTTP to the sandbox's archive files."""

import asyncio
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline_tests.conftest import ms, stored_rows

DAY = ["--start", "2020-01-02", "--end", "2020-01-02"]
CHANGED = ms("2020-01-02T03:04:00Z")


@pytest.fixture
def archives(env: Path, sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The archives served by the sandbox, on the same port as its REST API."""
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", sandbox_server.url)
    return sandbox_server.url


def load_from_rest(
    db_path: Path, server: SandboxServer, start: str, end: str, symbol: str = "BTC/USDT"
) -> int:
    """Store [start, end) as the sandbox's REST API serves it (the pipeline's own path to the store)."""

    async def fetch() -> pd.DataFrame:
        async with CcxtExchange(api_url=server.url, backoff_s=0.01) as exchange:
            result = await exchange.fetch_candles(symbol, ms(start), ms(end))
        assert not result.failures
        return result.candles

    candles = asyncio.run(fetch())
    with open_store(db_path) as store:
        store.upsert_candles([(symbol, candles)])
    return len(candles)


@pytest.fixture
def stored_day(btc: Path, archives: str, sandbox_server: SandboxServer) -> Path:
    """BTC/USDT's 2020-01-02 stored from REST; returns DB_PATH."""
    assert load_from_rest(btc, sandbox_server, "2020-01-02T00:00:00Z", "2020-01-03T00:00:00Z") == 1440
    return btc


def execute(db_path: Path, sql: str, params: tuple[object, ...]) -> None:
    """Change the file behind the store's back, as another program or a disk fault could."""
    with sqlite3.connect(db_path) as conn:
        assert conn.execute(sql, params).rowcount == 1
    conn.close()


def test_a_store_equal_to_the_archives_verifies_identical(
    stored_day: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "BTC/USDT", *DAY]) == 0
    out = capsys.readouterr().out
    assert "verified 1 day from 1 checksum-verified file: 1440 minutes in the archives, 1440 stored" in out
    assert "differing 0, missing 0, extra 0" in out
    assert "IDENTICAL" in out


def test_a_stored_minute_changed_behind_its_back_fails_naming_the_minute_column_and_both_values(
    stored_day: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (close,) = stored_rows(stored_day, columns="close", start=CHANGED, end=CHANGED + 60_000)[0]
    altered = close + 1e-8  # a change no rounded display would show
    execute(stored_day, "UPDATE price_data SET close = ? WHERE timestamp = ?", (altered, CHANGED))

    assert main(["verify", "BTC/USDT", *DAY]) == 1
    out = capsys.readouterr().out
    assert "differing 1, missing 0, extra 0" in out
    line = next(line for line in out.splitlines() if "2020-01-02T03:04:00Z" in line)
    assert line.split() == ["2020-01-02T03:04:00Z", "close", repr(altered), repr(close)]
    assert "NOT IDENTICAL" in out


def test_repair_restores_a_changed_minute_with_a_new_ingested_at_and_a_second_verify_passes(
    stored_day: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored_rows(stored_day)
    execute(
        stored_day,
        "UPDATE price_data SET volume = volume * 2, ingested_at = 1 WHERE timestamp = ?",
        (CHANGED,),
    )

    assert main(["verify", "BTC/USDT", *DAY, "--repair"]) == 0
    assert "0 missing minutes inserted, 1 differing minutes corrected" in capsys.readouterr().out
    assert stored_rows(stored_day) == before
    (ingested_at,) = stored_rows(stored_day, columns="ingested_at", start=CHANGED, end=CHANGED + 60_000)[0]
    assert ingested_at > 1
    assert main(["verify", "BTC/USDT", *DAY]) == 0


def test_a_missing_minute_is_reported_and_repair_inserts_the_archives_candle(
    stored_day: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored_rows(stored_day)
    execute(stored_day, "DELETE FROM price_data WHERE timestamp = ?", (CHANGED,))

    assert main(["verify", "BTC/USDT", *DAY]) == 1
    out = capsys.readouterr().out
    assert "differing 0, missing 1, extra 0" in out
    assert "2020-01-02T03:04:00Z..2020-01-02T03:04:00Z  1 minutes" in out

    assert main(["verify", "BTC/USDT", *DAY, "--repair"]) == 0
    assert "1 missing minutes inserted, 0 differing minutes corrected" in capsys.readouterr().out
    assert stored_rows(stored_day) == before


def test_an_extra_stored_minute_is_reported_and_kept_by_repair(
    btc: Path, archives: str, sandbox_server: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real halt of 2023-03-24: neither the API nor the archive has 12:40-13:59.
    load_from_rest(btc, sandbox_server, "2023-03-24T00:00:00Z", "2023-03-25T00:00:00Z")
    execute(
        btc,
        "INSERT INTO price_data (symbol_id, timestamp, open, high, low, close, volume, ingested_at) "
        "SELECT id, ?, 1, 1, 1, 1, 0, 1 FROM symbols WHERE symbol = 'BTC/USDT'",
        (ms("2023-03-24T13:00:00Z"),),
    )
    outage = ["verify", "BTC/USDT", "--start", "2023-03-24", "--end", "2023-03-24"]

    assert main([*outage, "--repair"]) == 1
    out = capsys.readouterr().out
    assert "differing 0, missing 0, extra 1" in out
    assert "2023-03-24T13:00:00Z..2023-03-24T13:00:00Z  1 minutes" in out
    assert "1 extra stored minutes kept" in out
    assert ms("2023-03-24T13:00:00Z") in {r[0] for r in stored_rows(btc, columns="timestamp")}


def test_json_prints_one_object_with_the_differing_columns_and_both_values(
    stored_day: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (trades,) = stored_rows(stored_day, columns="trades", start=CHANGED, end=CHANGED + 60_000)[0]
    execute(stored_day, "UPDATE price_data SET trades = NULL WHERE timestamp = ?", (CHANGED,))

    assert main(["verify", "BTC/USDT", *DAY, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is False
    assert (report["differing"], report["missing"], report["extra"]) == (1, 0, 0)
    assert report["differences"] == [
        {"minute": "2020-01-02T03:04:00Z", "columns": {"trades": {"stored": None, "archive": trades}}}
    ]
    assert list(report["files"]) == ["BTCUSDT-1m-2020-01.zip"]


def test_a_day_not_yet_published_is_not_verifiable_and_no_failure(
    btc: Path,
    archives: str,
    sandbox: Sandbox,
    sandbox_server: SandboxServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    load_from_rest(btc, sandbox_server, "2020-01-02T00:00:00Z", "2020-01-04T00:00:00Z")
    sandbox.clock.fixed_ms = ms("2020-01-04T12:00:00Z")  # the archive host has 2020-01-02's file only

    assert main(["verify", "BTC/USDT", "--start", "2020-01-02", "--end", "2020-01-03"]) == 0
    out = capsys.readouterr().out
    assert "verified 1 day" in out
    assert "not verifiable: 2020-01-03..2020-01-03 (not published)" in out


def test_a_refused_archive_file_fails_the_verification_naming_the_file(
    stored_day: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.archives.inject("checksum_mismatch", count=None)  # the monthly and every daily file

    assert main(["verify", "BTC/USDT", *DAY]) == 1
    out = capsys.readouterr().out
    assert "refused: BTCUSDT-1m-2020-01-02.zip: sha256" in out
    assert "refused: BTCUSDT-1m-2020-01.zip: sha256" in out
    assert "NOT VERIFIED" in out


def test_with_the_archives_off_verify_is_refused(
    stored_day: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", "off")
    assert main(["verify", "BTC/USDT", *DAY]) == 2
    assert "nothing to verify against" in capsys.readouterr().err


def test_an_unregistered_symbol_is_refused(
    archives: str, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "ETH/USDT", *DAY]) == 2
    assert "not registered" in capsys.readouterr().err


def test_a_range_before_the_symbols_first_candle_is_refused(
    archives: str, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["symbols", "add", "SOL/USDT"]) == 0
    assert main(["verify", "SOL/USDT", "--start", "2023-01", "--end", "2023-02"]) == 2
    assert (
        "first candle is 2023-03-01T00:00:00Z; 2023-01-01..2023-02-28 lies before it"
        in capsys.readouterr().err
    )


def test_a_range_in_the_future_is_refused(archives: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "BTC/USDT", "--start", "2099-01", "--end", "2099-01"]) == 2
    assert "in the future" in capsys.readouterr().err
