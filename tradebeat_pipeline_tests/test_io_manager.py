"""The IO manager: downstream assets read exactly the partitions they ask for."""

from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.definitions import resources
from tradebeat_pipeline.defs.assets import ohlcv_1m
from tradebeat_pipeline.ingest import expected_minutes, split_by_symbol
from tradebeat_pipeline.defs.partitions import candle_partitions
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline_tests.conftest import ms

seen: list[pd.DataFrame] = []


@dg.asset(partitions_def=candle_partitions, io_manager_key="mem")
def downstream(ohlcv_1m: pd.DataFrame) -> None:
    seen.append(ohlcv_1m)


def test_load_input_returns_the_requested_partition_of_the_requested_symbol(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT", "ETH/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-03"]) == 0
    seen.clear()
    result = dg.materialize(
        [ohlcv_1m.to_source_asset(), downstream],
        instance=instance,
        partition_key="2020-01-02|BTC/USDT",
        resources={**resources(), "mem": dg.InMemoryIOManager()},  # type: ignore[no-untyped-call]
    )
    assert result.success
    (frame,) = seen
    assert len(frame) == 1440
    assert set(frame["symbol"]) == {"BTC/USDT"}
    assert frame["timestamp"].iloc[0] == ms("2020-01-02T00:00:00Z")
    assert frame["timestamp"].is_monotonic_increasing


def test_rows_outside_the_runs_partitions_are_refused_before_anything_is_written() -> None:
    candles = pd.DataFrame({"symbol": ["BTC/USDT"], "timestamp": [ms("2020-01-05T00:00:00Z")]})
    with pytest.raises(ValueError, match="outside this run's partitions"):
        split_by_symbol(candles, {"BTC/USDT": [date(2020, 1, 1)]})


def test_expected_minutes_counts_only_closed_minutes_of_today() -> None:
    now = ms("2020-01-02T00:10:30Z")
    assert expected_minutes([date(2020, 1, 1), date(2020, 1, 2)], now_ms=now) == 1440 + 10
