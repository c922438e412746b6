"""Bad input through any command: refused with a message naming the problem, and nothing stored,
run or registered changes."""

from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from tradebeat_pipeline_tests.conftest import database_checksum

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
        "expected YYYY-MM or YYYY-MM-DD",
    ),
    (
        ["backfill", "BTC/USDT", "--start", "yesterday", "--end", "2020-01-01"],
        "expected YYYY-MM or YYYY-MM-DD",
    ),
    (["backfill", "BTC/USDT", "--start", "2020-13", "--end", "2020-12"], "expected YYYY-MM or YYYY-MM-DD"),
    (["backfill", "BTC/USDT", "--start", "2017-06", "--end", "2017-08"], "before 2017-07-14"),
    (["backfill", "BTC/USDT", "--start", "2099-01", "--end", "2099-02"], "in the future"),
    (["gaps", "BTC/USDT", "--start", "2020-01", "--end", "2020-01-02"], "expected YYYY-MM-DD"),
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
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    before, runs_before = database_checksum(btc), len(instance.get_run_records())
    capsys.readouterr()

    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert database_checksum(btc) == before
    assert len(instance.get_run_records()) == runs_before
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["BTC/USDT"]
