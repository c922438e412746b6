"""The IO manager: downstream assets read exactly the partitions they ask for."""

from pathlib import Path

import dagster as dg
import pandas as pd

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.definitions import resources
from tradebeat_pipeline.defs.assets import ohlcv_1m
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
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    seen.clear()
    result = dg.materialize(
        [ohlcv_1m.to_source_asset(), downstream],
        instance=instance,
        partition_key="2020-01|BTC/USDT",
        resources={**resources(), "mem": dg.InMemoryIOManager()},  # type: ignore[no-untyped-call]
    )
    assert result.success
    (frame,) = seen
    assert len(frame) == 31 * 1440
    assert set(frame["symbol"]) == {"BTC/USDT"}
    assert frame["timestamp"].iloc[0] == ms("2020-01-01T00:00:00Z")
    assert frame["timestamp"].is_monotonic_increasing
