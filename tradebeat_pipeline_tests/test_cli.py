"""`tradebeat` end to end: real ccxt → sandbox over HTTP, a real SQLite file, a real Dagster instance."""

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tradebeat_pipeline.budget import Lane, WeightBudget, ledger_path
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline_tests.conftest import archive_rows, database_checksum, ms

COLUMNS = (
    "timestamp, open, high, low, close, volume, quote_volume, trades, "
    "taker_buy_volume, taker_buy_quote_volume"
)


def stored(db_path: Path, symbol: str = "BTC/USDT") -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM price_data JOIN symbols ON symbols.id = symbol_id "
            "WHERE symbol = ? ORDER BY timestamp",
            (symbol,),
        ).fetchall()
    conn.close()
    return rows


def ingested_at(db_path: Path) -> list[int]:
    with sqlite3.connect(db_path) as conn:
        values = [r[0] for r in conn.execute("SELECT ingested_at FROM price_data ORDER BY timestamp")]
    conn.close()
    return values


@pytest.fixture
def btc(env: Path, sandbox: Sandbox) -> Path:
    """BTC/USDT registered; returns DB_PATH."""
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    return env


def test_adding_a_symbol_registers_it_in_the_store_and_as_a_dagster_partition(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", " eth/usdt "]) == 0
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["ETH/USDT"]
    with sqlite3.connect(env) as conn:
        assert conn.execute("SELECT symbol, is_active FROM symbols").fetchall() == [("ETH/USDT", 1)]
    conn.close()


def test_a_three_day_backfill_stores_the_archive_exactly_in_one_run(
    btc: Path, instance: dg.DagsterInstance
) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-03"]) == 0

    expected = [
        (int(r[0]), *(float(v) for v in r[1:6]), float(r[7]), int(r[8]), float(r[9]), float(r[10]))
        for r in archive_rows("BTCUSDT-1m-vision.csv.gz")
    ]
    assert len(expected) == 4320
    assert stored(btc) == expected
    runs = instance.get_run_records()
    assert len(runs) == 1
    assert runs[0].dagster_run.tags["dagster/asset_partition_range_start"] == "2020-01-01|BTC/USDT"
    assert runs[0].dagster_run.tags["dagster/asset_partition_range_end"] == "2020-01-03|BTC/USDT"


def test_the_backfill_marks_each_day_partition_materialized(btc: Path, instance: dg.DagsterInstance) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-03"]) == 0
    materialized = instance.get_materialized_partitions(dg.AssetKey("ohlcv_1m"))
    assert materialized == {"2020-01-01|BTC/USDT", "2020-01-02|BTC/USDT", "2020-01-03|BTC/USDT"}


def test_running_the_same_backfill_again_changes_nothing(btc: Path) -> None:
    args = ["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-03"]
    assert main(args) == 0
    first, first_ingested = stored(btc), ingested_at(btc)
    assert main(args) == 0
    assert stored(btc) == first
    assert ingested_at(btc) == first_ingested
    assert len(first) == 4320


def test_a_range_that_includes_the_current_minute_never_stores_the_open_candle(
    btc: Path, sandbox: Sandbox
) -> None:
    sandbox.clock.fixed_ms = ms("2020-01-03T12:00:30Z")
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-03", "--end", "2020-01-03"]) == 0
    rows = stored(btc)
    assert len(rows) == 720
    assert rows[-1][0] == ms("2020-01-03T11:59:00Z")


def test_days_before_the_first_candle_on_the_exchange_are_skipped_and_said_so(
    env: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["symbols", "add", "SOL/USDT"]) == 0
    assert main(["backfill", "SOL/USDT", "--start", "2023-03-20", "--end", "2023-03-23"]) == 0
    out = capsys.readouterr().out
    assert "first candle is 2023-03-23T00:00:00Z" in out
    assert "skipping 2023-03-20..2023-03-22" in out
    assert len(stored(env, "SOL/USDT")) == 1440


def test_the_outage_day_stores_exactly_what_the_exchange_returned(env: Path, sandbox: Sandbox) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2023-03-24", "--end", "2023-03-24"]) == 0
    rows = stored(env)
    assert len(rows) == 1360
    times = {r[0] for r in rows}
    assert not any(ms("2023-03-24T12:40:00Z") <= t <= ms("2023-03-24T13:59:00Z") for t in times)


def test_removing_a_symbol_drops_its_partition_and_keeps_its_candles(
    btc: Path, instance: dg.DagsterInstance
) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01"]) == 0
    assert main(["symbols", "remove", "btc/usdt"]) == 0
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == []
    assert len(stored(btc)) == 1440
    with sqlite3.connect(btc) as conn:
        assert conn.execute("SELECT is_active FROM symbols").fetchall() == [(0,)]
    conn.close()


BAD_INPUT = [
    (["symbols", "add", "XRP/USDT"], "XRP/USDT is not listed"),
    (["symbols", "add", "LUNA/USDT"], "not trading"),
    (["symbols", "add", "BTCUSDT"], "expected a ccxt spot symbol"),
    (["symbols", "add", "BTC/USDT|X"], "expected a ccxt spot symbol"),
    (["symbols", "add", ""], "expected a ccxt spot symbol"),
    (["symbols", "add", "B" * 200], "expected a ccxt spot symbol"),
    (["symbols", "add", "BTC/USDT'); DELETE FROM price_data;--"], "expected a ccxt spot symbol"),
    (["symbols", "add", "BTC/USDT:USDT"], "derivatives"),
    (["symbols", "add", "ETH/USDT", "XRP/USDT"], "no symbol was added"),
    (["symbols", "remove", "ETH/USDT"], "not an active symbol"),
    (["backfill", "XRP/USDT", "--start", "2020-01-01", "--end", "2020-01-01"], "not registered"),
    (["backfill", "BTC/USDT", "--start", "2020-01-03", "--end", "2020-01-01"], "after --end"),
    (["backfill", "BTC/USDT", "--start", "2099-01-01", "--end", "2099-01-02"], "in the future"),
    (["backfill", "BTC/USDT", "--start", "2017-07-13", "--end", "2017-07-20"], "before 2017-07-14"),
    (
        ["backfill", "BTC/USDT", "--start", "2020-13-01", "--end", "2020-01-01"],
        "expected YYYY-MM-DD",
    ),
    (
        ["backfill", "BTC/USDT", "--start", "yesterday", "--end", "2020-01-01"],
        "expected YYYY-MM-DD",
    ),
    (["symbols", "add", "../../etc/passwd"], "expected a ccxt spot symbol"),
    (["symbols", "add", "BTC/USDT%00"], "expected a ccxt spot symbol"),
    (["symbols", "add", "<script>/USDT"], "expected a ccxt spot symbol"),
    (["symbols", "add", "BTC/ USDT"], "expected a ccxt spot symbol"),
    (["symbols", "add", "BTC//USDT"], "expected a ccxt spot symbol"),
    (["symbols", "add", "ÄBC/USDT"], "expected a ccxt spot symbol"),
    (["gaps", "XRP/USDT", "--start", "2020-01-01", "--end", "2020-01-01"], "not registered"),
    (["gaps", "BTC/USDT", "--start", "2020-01-01", "--end", "2099-01-01"], "in the future"),
    (["export", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01", "--out", "x.csv"], ".parquet"),
    (["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01'; DROP TABLE x"], "YYYY-MM-DD"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT, ids=[" ".join(a)[:50] for a, _ in BAD_INPUT])
def test_bad_input_is_refused_with_a_clear_message_and_changes_nothing(
    btc: Path,
    instance: dg.DagsterInstance,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01"]) == 0
    before, runs_before = database_checksum(btc), len(instance.get_run_records())
    capsys.readouterr()

    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert database_checksum(btc) == before
    assert len(instance.get_run_records()) == runs_before
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["BTC/USDT"]


@pytest.mark.parametrize("fault", ["not_json", "missing_field", "non_numeric"])
def test_a_malformed_exchange_answer_fails_the_backfill_stores_none_of_it_and_records_the_hole(
    btc: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01"]) == 0
    before = stored(btc)
    sandbox.inject(fault, count=None, window=(ms("2020-01-01T00:00:00Z"), ms("2020-01-03T00:00:00Z")))

    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-02"]) == 1
    err = capsys.readouterr().err
    assert "malformed answer" in err
    assert "--repair" in err
    assert stored(btc) == before
    with sqlite3.connect(btc) as conn:
        kinds = {r[0] for r in conn.execute("SELECT kind FROM gaps")}
    conn.close()
    assert kinds == {"fetch_failed"}


def test_symbols_list_shows_active_symbols_by_default_and_filters_inactive_or_all(
    env: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["symbols", "add", "BTC/USDT", "ETH/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01"]) == 0
    assert main(["symbols", "remove", "ETH/USDT"]) == 0

    def listed(*flags: str) -> list[dict[str, Any]]:
        capsys.readouterr()
        assert main(["symbols", "list", "--json", *flags]) == 0
        return list(json.loads(capsys.readouterr().out))

    assert [s["symbol"] for s in listed()] == ["BTC/USDT"]
    assert [s["symbol"] for s in listed("--inactive")] == ["ETH/USDT"]
    assert [(s["symbol"], s["active"]) for s in listed("--all")] == [("BTC/USDT", True), ("ETH/USDT", False)]
    (btc,) = listed()
    assert (btc["first_candle"], btc["last_candle"], btc["candles"]) == (
        "2020-01-01T00:00:00Z",
        "2020-01-01T23:59:00Z",
        1440,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", btc["registered"])


def test_symbols_list_refuses_all_and_inactive_together(env: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["symbols", "list", "--all", "--inactive"])
    assert exc.value.code == 2


def test_status_without_a_running_daemon_is_down_and_says_why(
    btc: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["status", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "down"
    assert any("daemon" in reason for reason in report["reasons"])
    assert [s["symbol"] for s in report["symbols"]] == ["BTC/USDT"]


def test_status_shows_what_every_process_spent_from_the_shared_rate_budget(
    btc: Path, sandbox_server: SandboxServer, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    WeightBudget(ledger_path(btc, sandbox_server.url), 3000, Lane.BEAT).take(7)  # as a beat would
    capsys.readouterr()
    main(["status", "--json"])
    budget = json.loads(capsys.readouterr().out)["rate_budget"]
    assert budget["beat"] == 7
    assert budget["bulk"] > 0  # `symbols add` asked the exchange about BTC/USDT
    assert budget["per_minute"] == 3000  # our half of the 6,000 the sandbox declares
    assert budget["paused_for_s"] == 0


def test_status_cannot_tell_when_the_database_is_unreadable(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.write_bytes(b"not a database at all")
    assert main(["status"]) == 3
    assert "not a SQLite database" in capsys.readouterr().err


def test_status_cannot_tell_on_a_usage_error(env: Path) -> None:
    assert main(["status", "--bogus"]) == 3


def test_status_cannot_tell_when_the_database_does_not_exist(env: Path) -> None:
    assert main(["status"]) == 3
    assert not env.exists()
