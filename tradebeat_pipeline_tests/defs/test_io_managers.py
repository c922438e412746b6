"""The IO manager: downstream assets read exactly the partitions they ask for, and a backfill's
months, streamed from the archives, land in whichever store the settings name."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.definitions import resources
from tradebeat_pipeline.defs.assets import ohlcv_1m
from tradebeat_pipeline.defs.partitions import candle_partitions
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline.store import open_store
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


def test_a_backfill_streamed_from_the_archives_lands_in_the_postgres_store_database_url_names(
    env: Path,
    sandbox: Sandbox,
    instance: dg.DagsterInstance,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    assert sandbox.archives.requests  # the month came from its archive file: a streamed backfill
    with open_store(env, database_url=postgres_url) as store:
        assert store.count_candles("BTC/USDT") == 31 * 1440
        assert (
            store.gap_report("BTC/USDT", ms("2020-01-01T00:00:00Z"), ms("2020-02-01T00:00:00Z")).holes == []
        )
    assert not env.exists()  # nothing was written to the SQLite file at DB_PATH
