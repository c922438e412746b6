"""`tradebeat symbols add|list|remove`: the store and Dagster's partitions agree. Real ccxt over HTTP
to the sandbox, a real SQLite file, a real Dagster instance."""

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline_tests.conftest import stored_rows


def test_adding_a_symbol_registers_it_in_the_store_and_as_a_dagster_partition(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", " eth/usdt "]) == 0
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["ETH/USDT"]
    with sqlite3.connect(env) as conn:
        assert conn.execute("SELECT symbol, is_active FROM symbols").fetchall() == [("ETH/USDT", 1)]
    conn.close()


def test_removing_a_symbol_drops_its_partition_and_keeps_its_candles(
    btc: Path, instance: dg.DagsterInstance
) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    assert main(["symbols", "remove", "btc/usdt"]) == 0
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == []
    assert len(stored_rows(btc)) == 31 * 1440
    with sqlite3.connect(btc) as conn:
        assert conn.execute("SELECT is_active FROM symbols").fetchall() == [(0,)]
    conn.close()


def test_symbols_list_shows_active_symbols_by_default_and_filters_inactive_or_all(
    env: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["symbols", "add", "BTC/USDT", "ETH/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
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
        "2020-01-31T23:59:00Z",
        31 * 1440,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", btc["registered"])


def test_symbols_list_refuses_all_and_inactive_together(env: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["symbols", "list", "--all", "--inactive"])
    assert exc.value.code == 2
