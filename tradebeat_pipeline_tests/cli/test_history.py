"""`tradebeat backfill`: the whole months of a range as one run, storing exactly the exchange's
candles. Real ccxt over HTTP to the sandbox, a real SQLite file, a real Dagster instance."""

import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline_tests.conftest import archive_rows, ms, stored_rows

JANUARY = ["--start", "2020-01", "--end", "2020-01"]
MONTH = 31 * 1440
RECORDED = (ms("2020-01-01T00:00:00Z"), ms("2020-01-04T00:00:00Z"))  # the archived days


def test_a_backfill_of_a_month_is_one_run_of_one_partition_storing_exactly_its_candles(
    btc: Path, instance: dg.DagsterInstance
) -> None:
    assert main(["backfill", "BTC/USDT", *JANUARY]) == 0

    expected = [
        (int(r[0]), *(float(v) for v in r[1:6]), float(r[7]), int(r[8]), float(r[9]), float(r[10]))
        for r in archive_rows("BTCUSDT-1m-vision.csv.gz")
    ]
    assert len(expected) == 4320
    assert stored_rows(btc, start=RECORDED[0], end=RECORDED[1]) == expected
    assert len(stored_rows(btc)) == MONTH  # the sandbox's month is whole, as on Binance
    runs = instance.get_run_records()
    assert len(runs) == 1
    assert runs[0].dagster_run.tags["dagster/asset_partition_range_start"] == "2020-01|BTC/USDT"
    assert runs[0].dagster_run.tags["dagster/asset_partition_range_end"] == "2020-01|BTC/USDT"
    assert instance.get_materialized_partitions(dg.AssetKey("ohlcv_1m")) == {"2020-01|BTC/USDT"}


def test_a_backfill_asks_the_exchange_where_history_begins_once(btc: Path, sandbox: Sandbox) -> None:
    assert main(["backfill", "BTC/USDT", *JANUARY]) == 0  # the month comes from its archive file
    assert sandbox.requests["klines"] == 1


def test_a_day_range_is_widened_to_the_whole_months_covering_it_and_said_so(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["symbols", "add", "SYN/USDT"]) == 0
    assert main(["backfill", "SYN/USDT", "--start", "2020-01-30", "--end", "2020-02-02"]) == 0
    assert "2020-01-30..2020-02-02 widened to the whole months 2020-01..2020-02" in capsys.readouterr().out
    assert len(stored_rows(env, "SYN/USDT")) == (31 + 29) * 1440
    assert len(instance.get_run_records()) == 1
    materialized = instance.get_materialized_partitions(dg.AssetKey("ohlcv_1m"))
    assert materialized == {"2020-01|SYN/USDT", "2020-02|SYN/USDT"}


def test_running_the_same_backfill_again_changes_nothing(btc: Path) -> None:
    args = ["backfill", "BTC/USDT", *JANUARY]
    assert main(args) == 0
    first, first_ingested = stored_rows(btc), stored_rows(btc, columns="ingested_at")
    assert main(args) == 0
    assert stored_rows(btc) == first
    assert stored_rows(btc, columns="ingested_at") == first_ingested
    assert len(first) == MONTH


def test_a_range_that_includes_the_current_minute_never_stores_the_open_candle(
    btc: Path, sandbox: Sandbox
) -> None:
    sandbox.clock.fixed_ms = ms("2020-01-03T12:00:30Z")
    assert main(["backfill", "BTC/USDT", *JANUARY]) == 0
    rows = stored_rows(btc)
    assert len(rows) == 2 * 1440 + 720
    assert rows[-1][0] == ms("2020-01-03T11:59:00Z")


def test_months_before_the_first_candle_on_the_exchange_are_skipped_and_said_so(
    env: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["symbols", "add", "SOL/USDT"]) == 0
    assert main(["backfill", "SOL/USDT", "--start", "2023-01", "--end", "2023-03"]) == 0
    out = capsys.readouterr().out
    assert "first candle is 2023-03-01T00:00:00Z" in out
    assert "skipping 2023-01..2023-02" in out
    assert len(stored_rows(env, "SOL/USDT")) == MONTH - 80  # the real halt of 2023-03-24 has no candles


def test_the_outage_day_stores_exactly_what_the_exchange_returned(env: Path, sandbox: Sandbox) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2023-03-24", "--end", "2023-03-24"]) == 0
    rows = stored_rows(env, start=ms("2023-03-24T00:00:00Z"), end=ms("2023-03-25T00:00:00Z"))
    assert len(rows) == 1360
    times = {r[0] for r in rows}
    assert not any(ms("2023-03-24T12:40:00Z") <= t <= ms("2023-03-24T13:59:00Z") for t in times)


@pytest.mark.parametrize("fault", ["not_json", "missing_field", "non_numeric"])
@pytest.mark.usefixtures("rest_only")
def test_a_malformed_exchange_answer_fails_the_backfill_stores_none_of_it_and_records_the_hole(
    btc: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    assert main(["backfill", "BTC/USDT", "--start", "2023-03", "--end", "2023-03"]) == 0
    before = stored_rows(btc)
    # Every request of January's first three 1,000-minute chunks answers malformed.
    sandbox.inject(fault, count=None, window=(ms("2020-01-01T00:00:00Z"), ms("2020-01-03T00:00:00Z")))

    assert main(["backfill", "BTC/USDT", *JANUARY]) == 1
    err = capsys.readouterr().err
    assert "malformed answer" in err
    assert "--repair" in err
    assert stored_rows(btc, end=ms("2020-01-03T02:00:00Z")) == []  # nothing of those chunks
    assert stored_rows(btc, start=ms("2023-03-01T00:00:00Z")) == before  # nor anything else changed
    with sqlite3.connect(btc) as conn:
        kinds = {
            r[0] for r in conn.execute("SELECT kind FROM gaps WHERE start < ?", (ms("2020-02-01T00:00:00Z"),))
        }
    conn.close()
    assert kinds == {"fetch_failed"}
