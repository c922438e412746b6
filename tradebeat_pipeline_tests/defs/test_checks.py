"""The asset checks and `tradebeat gaps`, on the real recorded Binance outage of 2023-03-24 served by
the sandbox exchange, through real backfill runs in a real Dagster instance."""

import json
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.assets import ohlcv_1m
from tradebeat_pipeline.quality import CONFIRM_AFTER_MS
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline_tests.conftest import archive_rows, ms, stored_rows

DAY = ["--start", "2023-03-24", "--end", "2023-03-24"]
OUTAGE_HOLE = {
    "start": "2023-03-24T12:40:00Z",
    "end": "2023-03-24T13:59:00Z",
    "minutes": 80,
    "kind": "exchange",
}


def checks(instance: dg.DagsterInstance) -> dict[str, Any]:
    """The check evaluations of the latest run, as the asset page shows them."""
    run = instance.get_run_records(limit=1)[0].dagster_run
    records = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [r.dagster_event.event_specific_data for r in records if r.dagster_event is not None]
    return {e.check_name: e for e in evaluations}  # type: ignore[union-attr]


def gaps_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["gaps", "BTC/USDT", *DAY, "--json", *args])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return code, json.loads(lines[0])


def test_the_three_checks_are_declared_on_the_candle_asset() -> None:
    names = {spec.name for spec in ohlcv_1m.check_specs}
    assert names == {"ohlc_valid", "gaps_explained", "fresh"}


def test_the_outage_day_keeps_its_halted_candles_and_explains_its_80_minute_hole(
    btc: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backfill", "BTC/USDT", *DAY]) == 0
    rows = stored_rows(
        btc,
        columns="timestamp, open, high, low, close, volume",
        start=ms("2023-03-24T00:00:00Z"),
        end=ms("2023-03-25T00:00:00Z"),
    )
    assert len(rows) == 1360
    recorded = {
        int(r[0]): (float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]))
        for r in archive_rows("BTCUSDT-1m-2023-03-23_25.csv.gz")
    }
    assert all(recorded[r[0]] == tuple(r[1:]) for r in rows)  # exactly as received
    halted = [r for r in rows if r[1] == r[2] == r[3] == r[4] and r[5] == 0]
    assert len(halted) == 72
    assert (halted[0][0], halted[-1][0]) == (ms("2023-03-24T11:28:00Z"), ms("2023-03-24T12:39:00Z"))

    evaluations = checks(instance)
    assert evaluations["ohlc_valid"].passed
    assert evaluations["ohlc_valid"].metadata["halted_minutes"].value == 72
    assert evaluations["gaps_explained"].passed
    assert evaluations["gaps_explained"].metadata["explained_minutes"].value == 80
    assert "12:40:00Z" in evaluations["gaps_explained"].metadata["hole_list"].value
    assert evaluations["fresh"].passed

    code, report = gaps_json(capsys)
    assert code == 0
    assert report == {
        "symbol": "BTC/USDT",
        "expected": 1440,
        "stored": 1360,
        "halted": 72,
        "explained": 80,
        "unexplained": 0,
        "holes": [OUTAGE_HOLE],
    }


def test_the_gaps_text_report_lists_each_hole_and_a_summary(
    btc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backfill", "BTC/USDT", *DAY]) == 0
    capsys.readouterr()
    assert main(["gaps", "btc/usdt", *DAY]) == 0
    out = capsys.readouterr().out
    assert "2023-03-24T12:40:00Z  2023-03-24T13:59:00Z       80  exchange" in out
    assert "expected 1440, stored 1360, halted 72, explained 80, unexplained 0" in out


def test_a_range_never_fetched_counts_as_unexplained_fetch_failed(
    btc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = gaps_json(capsys)
    assert code == 1
    assert (report["stored"], report["unexplained"]) == (0, 1440)
    assert [h["kind"] for h in report["holes"]] == ["fetch_failed"]


@pytest.mark.usefixtures("rest_only")  # a fault of the REST API
def test_requests_that_keep_failing_leave_fetch_failed_holes_that_repair_fills_once_the_exchange_recovers(
    btc: Path, sandbox: Sandbox, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    # The month is fetched in 1,000-minute chunks; every request of the one from 14:40 on the 24th fails.
    second_chunk = ms("2023-03-24T14:40:00Z")
    sandbox.inject("http_500", count=None, window=(second_chunk, second_chunk + 60_000))
    assert main(["backfill", "BTC/USDT", *DAY]) == 1
    assert "--repair" in capsys.readouterr().err
    assert not checks(instance)["gaps_explained"].passed

    code, report = gaps_json(capsys)
    assert code == 1
    assert report["holes"] == [
        OUTAGE_HOLE,
        {
            "start": "2023-03-24T14:40:00Z",
            "end": "2023-03-24T23:59:00Z",
            "minutes": 560,
            "kind": "fetch_failed",
        },
    ]
    assert (report["stored"], report["unexplained"]) == (800, 560)

    code, report = gaps_json(capsys, "--repair")  # still failing: nothing changes
    assert code == 1
    assert report["unexplained"] == 560

    sandbox.clear_faults()
    code, report = gaps_json(capsys, "--repair")
    assert code == 0
    assert (report["stored"], report["explained"], report["unexplained"]) == (1360, 80, 0)
    assert report["holes"] == [OUTAGE_HOLE]
    assert checks(instance)["gaps_explained"].passed


@pytest.mark.usefixtures("rest_only")  # a fault of the REST API
def test_an_empty_answer_is_pending_until_a_second_one_five_minutes_later_confirms_it(
    btc: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    # The month's chunk from 14:40 on the 24th answers [] where candles exist.
    middle = ms("2023-03-24T14:40:00Z")
    sandbox.inject("empty", count=None, window=(middle, middle + 60_000))
    two_days = ["--start", "2023-03-24", "--end", "2023-03-25"]
    assert main(["backfill", "BTC/USDT", *two_days]) == 1
    code, report = gaps_json(capsys)
    assert report["holes"][-1] == {
        "start": "2023-03-24T14:40:00Z",
        "end": "2023-03-24T23:59:00Z",
        "minutes": 560,
        "kind": "pending",
    }

    assert main(["backfill", "BTC/USDT", *two_days]) == 1  # asked again at once: still pending
    assert gaps_json(capsys)[1]["holes"][-1]["kind"] == "pending"

    with sqlite3.connect(btc) as conn:  # the first sighting is now five minutes old
        conn.execute("UPDATE gaps SET detected_at = detected_at - ?", (CONFIRM_AFTER_MS,))
    conn.close()
    assert main(["backfill", "BTC/USDT", *two_days]) == 0  # the exact re-ask is empty again
    assert gaps_json(capsys)[1]["holes"][-1]["kind"] == "exchange"

    sandbox.clear_faults()  # the exchange answers after all: the candles replace the hole
    assert main(["backfill", "BTC/USDT", *two_days]) == 0
    code, report = gaps_json(capsys)
    assert (code, report["holes"], report["stored"]) == (0, [OUTAGE_HOLE], 1360)


@pytest.mark.usefixtures("rest_only")  # a fault of the REST API
def test_impossible_candles_fail_ohlc_valid_by_name_and_are_stored_as_received(
    btc: Path, sandbox: Sandbox, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    jan1 = ms("2020-01-01T00:00:00Z")
    sandbox.inject("impossible", count=1, window=(jan1, jan1 + 1))
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    assert "2 impossible candles stored as the exchange sent them" in capsys.readouterr().err

    evaluation = checks(instance)["ohlc_valid"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["violations"].value == 2
    table = evaluation.metadata["violating_rows"].value
    assert "2020-01-01T00:00:00Z" in table and "high < low" in table
    assert "2020-01-01T00:01:00Z" in table and "volume < 0" in table

    archive = archive_rows("BTCUSDT-1m-vision.csv.gz")
    with sqlite3.connect(btc) as conn:
        first, second = conn.execute(
            "SELECT high, low, volume FROM price_data ORDER BY timestamp LIMIT 2"
        ).fetchall()
    conn.close()
    assert first[:2] == (float(archive[0][3]), float(archive[0][2]))  # high and low swapped, kept
    assert second[2] == -float(archive[1][5])
