"""Definitions load anywhere: no environment read, no network call, one partitions definition (UTC
month × symbol)."""

import subprocess
import sys
from datetime import datetime

import dagster as dg
import pytest
import time_machine

from tradebeat_pipeline.definitions import defs
from tradebeat_pipeline.defs.partitions import candle_partitions, monthly_partitions, symbols_partitions
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer


def test_definitions_load_with_broken_settings_and_call_no_exchange(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    # Were any setting read or the exchange contacted at load, these values would make it fail.
    env = {
        "BINANCE_API_URL": sandbox_server.url,
        "BACKFILL_MINUTES": "not-a-number",
        "LOG_LEVEL": "LOUD",
        "DB_PATH": "/nonexistent/dir/x.sqlite",
        "PATH": "/usr/bin:/bin",
    }
    code = "from tradebeat_pipeline.definitions import defs; defs.resolve_all_asset_specs()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert sum(sandbox.requests.values()) == 0


def test_candles_are_partitioned_by_utc_month_and_dynamic_symbol() -> None:
    assert isinstance(candle_partitions, dg.MultiPartitionsDefinition)
    dims = {d.name: d.partitions_def for d in candle_partitions.partitions_defs}
    assert dims == {"month": monthly_partitions, "symbol": symbols_partitions}
    assert symbols_partitions.name == "symbols"
    assert monthly_partitions.timezone == "UTC"
    assert monthly_partitions.get_first_partition_key() == "2017-07"


@pytest.mark.parametrize("instant", ["2026-03-01T00:00:00Z", "2026-03-31T23:59:59.999Z"])
def test_the_current_month_is_a_partition_too(instant: str) -> None:
    with time_machine.travel(datetime.fromisoformat(instant.replace("Z", "+00:00")), tick=False):
        assert monthly_partitions.get_last_partition_key() == "2026-03"


def test_a_symbols_whole_history_is_about_a_hundred_partitions() -> None:
    with time_machine.travel(datetime.fromisoformat("2025-12-31T12:00:00+00:00"), tick=False):
        assert len(monthly_partitions.get_partition_keys()) == 102  # 2017-07 .. 2025-12


def test_history_backfills_run_as_one_run_per_range() -> None:
    spec = defs.resolve_assets_def("ohlcv_1m")
    assert spec.backfill_policy == dg.BackfillPolicy.single_run()
    assert spec.partitions_def is candle_partitions
