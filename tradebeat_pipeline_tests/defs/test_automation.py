"""The heartbeat schedule and the symbols sensor, evaluated against a real instance, store and
sandbox, and their runs executed in-process exactly as the daemon would launch them."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.budget import Lane, WeightBudget, ledger_path
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.definitions import defs
from tradebeat_pipeline.defs.automation import chart_schedule, heartbeat, retention_schedule, symbols_sensor
from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline_tests.conftest import database_checksum, ms, stored_times

MIN = 60_000


def beat_request(instance: dg.DagsterInstance, minute: str) -> dg.RunRequest:
    """The run the heartbeat's tick asks for to store `minute`: the tick as `minute` closes."""
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime.fromtimestamp((ms(minute) + MIN) / 1000, UTC),
        resources={"store": StoreResource()},
    )
    request = heartbeat(context)
    assert isinstance(request, dg.RunRequest), request
    return request


def run_beat(instance: dg.DagsterInstance, sandbox: Sandbox, minute: str) -> dg.ExecuteInProcessResult:
    """What the daemon does for one tick: the exchange clock stands 7 s after the minute closed."""
    sandbox.clock.fixed_ms = ms(minute) + MIN + 7_000
    request = beat_request(instance, minute)
    job = defs.resolve_job_def("candles_job")
    return job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)


@pytest.mark.parametrize("count", [1, 10, 100])
def test_each_beat_is_exactly_one_run_over_every_symbol(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, count: int
) -> None:
    symbols = [f"S{i:03d}/USDT" for i in range(count)]
    assert main(["symbols", "add", *symbols]) == 0

    result = run_beat(instance, sandbox, "2020-01-02T12:00:00Z")

    assert result.success
    assert len(instance.get_run_records()) == 1
    for symbol in (symbols[0], symbols[-1]):
        times = stored_times(env, symbol)
        assert (times[0], times[-1]) == (ms("2020-01-01T00:00:00Z"), ms("2020-01-02T12:00:00Z"))


def test_the_tick_as_a_minute_closes_makes_the_beat_for_that_minute(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2020, 1, 2, 12, 1, tzinfo=UTC),
        resources={"store": StoreResource()},
    )
    request = heartbeat(context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["tradebeat/beat_minute"] == "2020-01-02T12:00:00Z"


def test_a_beat_stores_its_minute_and_nothing_after_it(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert run_beat(instance, sandbox, "2020-01-02T11:50:00Z").success
    assert stored_times(env)[-1] == ms("2020-01-02T11:50:00Z")


def test_the_beat_after_downtime_stores_every_missed_minute(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert run_beat(instance, sandbox, "2020-01-02T11:50:00Z").success
    assert run_beat(instance, sandbox, "2020-01-02T12:00:00Z").success
    times = stored_times(env)
    assert times == list(range(ms("2020-01-01T00:00:00Z"), ms("2020-01-02T12:00:00Z") + 1, MIN))


def test_a_beat_spends_from_the_beat_lane_of_the_shared_budget_and_everything_else_from_bulk(
    env: Path, sandbox: Sandbox, sandbox_server: SandboxServer, instance: dg.DagsterInstance
) -> None:
    ledger = WeightBudget(ledger_path(env, sandbox_server.url), 3000, Lane.BULK)
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    after_add = ledger.use()
    assert run_beat(instance, sandbox, "2020-01-02T11:50:00Z").success
    after_beat = ledger.use()
    assert after_add.beat == 0 < after_add.bulk
    assert after_beat.bulk == after_add.bulk
    assert after_beat.beat > 0


def test_across_a_month_boundary_2359_lands_in_the_old_months_partition_and_0000_in_the_new(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "SYN/USDT"]) == 0  # synthetic: every minute, every month
    assert main(["backfill", "SYN/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    with sqlite3.connect(env) as conn:  # as if the 23:59 candle had not been stored yet
        conn.execute("DELETE FROM price_data WHERE timestamp = ?", (ms("2020-01-31T23:59:00Z"),))
    conn.close()

    first = run_beat(instance, sandbox, "2020-01-31T23:59:00Z")
    second = run_beat(instance, sandbox, "2020-02-01T00:00:00Z")

    assert first.success and second.success
    times = stored_times(env, "SYN/USDT")
    assert len([t for t in times if t < ms("2020-02-01T00:00:00Z")]) == 31 * 1440
    assert times[-1] == ms("2020-02-01T00:00:00Z")
    assert materialized_by(first) == {"2020-01|SYN/USDT"}  # 23:59 completes the old month
    assert materialized_by(second) == {"2020-01|SYN/USDT", "2020-02|SYN/USDT"}  # 00:00 opens the new
    assert len(instance.get_run_records()) == 3  # the backfill and one run per beat


def test_one_failing_symbol_does_not_stop_the_others(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT", "ETH/USDT"]) == 0
    sandbox.inject("http_500", count=10_000, symbol="ETHUSDT")

    result = run_beat(instance, sandbox, "2020-01-02T12:00:00Z")

    assert result.success
    assert stored_times(env, "BTC/USDT")[-1] == ms("2020-01-02T12:00:00Z")
    assert stored_times(env, "ETH/USDT") == []
    (materialization,) = {
        e.materialization.metadata["failed_symbols"].value for e in result.get_asset_materialization_events()
    }
    assert materialization == "ETH/USDT"


def test_a_beat_where_every_symbol_fails_is_a_failed_run_that_stores_nothing(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    sandbox.inject("http_500", count=10_000)
    assert not run_beat(instance, sandbox, "2020-01-02T12:00:00Z").success
    assert stored_times(env) == []


def materialized_by(result: dg.ExecuteInProcessResult) -> set[str]:
    """The ohlcv_1m partitions a run materialized."""
    return {
        str(e.partition)
        for e in result.get_asset_materialization_events()
        if e.asset_key is not None and e.asset_key.path == ["ohlcv_1m"]
    }


def sensor_result(instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"exchange": ExchangeResource(), "store": StoreResource()},
    )
    result = symbols_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def added(result: dg.SensorResult) -> list[str]:
    return [
        k
        for r in result.dynamic_partitions_requests or []
        if isinstance(r, dg.AddDynamicPartitionsRequest)
        for k in r.partition_keys
    ]


def deleted(result: dg.SensorResult) -> list[str]:
    return [
        k
        for r in result.dynamic_partitions_requests or []
        if isinstance(r, dg.DeleteDynamicPartitionsRequest)
        for k in r.partition_keys
    ]


def active_symbols(db: Path) -> list[tuple[str, int]]:
    with open_store(db) as store:
        return [(row.symbol, int(row.is_active)) for row in store.list_symbols(active=None)]


def test_a_symbol_added_in_the_ui_is_onboarded_with_one_history_backfill_run(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["ETH/USDT"])  # what the UI does
    result = sensor_result(instance)
    (run,) = result.run_requests or []
    this_month = datetime.now(UTC).strftime("%Y-%m")
    assert run.tags["dagster/asset_partition_range_end"] == f"{this_month}|ETH/USDT"
    assert run.tags["tradebeat/kind"] == "backfill"
    assert active_symbols(env) == [("ETH/USDT", 1)]


def test_a_hundred_symbols_added_at_once_are_onboarded_by_one_backfill_run(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    symbols = [f"S{i:03d}/USDT" for i in range(100)]
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols)
    (run,) = sensor_result(instance).run_requests or []
    assert run.tags["dagster/asset_partition_range_start"].endswith("|S000/USDT")
    assert run.tags["dagster/asset_partition_range_end"].endswith("|S099/USDT")


def test_a_beat_is_dequeued_before_waiting_backfills(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert int(beat_request(instance, "2020-01-02T12:00:00Z").tags["dagster/priority"]) > 0


def test_a_symbol_typed_in_lower_case_is_kept_in_one_upper_case_spelling(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["eth/usdt"])
    result = sensor_result(instance)
    assert (added(result), deleted(result)) == (["ETH/USDT"], ["eth/usdt"])
    assert active_symbols(env) == [("ETH/USDT", 1)]


@pytest.mark.parametrize("raw", ["XRP/USDT", "LUNA/USDT", "BTCUSDT", "BTC/USDT:USDT"])
def test_a_symbol_the_exchange_does_not_trade_is_removed_from_the_partitions(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, raw: str
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [raw])
    result = sensor_result(instance)
    assert deleted(result) == [raw]
    assert not result.run_requests
    assert active_symbols(env) == []


def test_the_symbols_setting_is_registered_on_the_first_tick_only(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYMBOLS", "btc/usdt, SOL/USDT")
    first = sensor_result(instance)
    assert added(first) == ["BTC/USDT", "SOL/USDT"]
    (run,) = first.run_requests or []
    assert run.tags["dagster/asset_partition_range_start"].endswith("|BTC/USDT")
    assert run.tags["dagster/asset_partition_range_end"].endswith("|SOL/USDT")
    second = sensor_result(instance, cursor=first.cursor)
    assert not second.run_requests and not added(second)


def test_a_symbol_removed_in_the_ui_is_deactivated_and_keeps_its_candles(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    first = sensor_result(instance)
    instance.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, "BTC/USDT")
    sensor_result(instance, cursor=first.cursor)
    assert active_symbols(env) == [("BTC/USDT", 0)]
    assert len(stored_times(env)) == 31 * 1440


HOSTILE = [
    "BTC/USDT'); DROP TABLE price_data;--",
    "../../etc/passwd",
    "<img src=x onerror=alert(1)>/USDT",
    "BTC/USDT:USDT",
    "B" * 300,
    "XRP/USDT",
]


def test_hostile_symbols_from_the_setting_and_the_ui_are_refused_and_change_no_stored_row(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0
    first = sensor_result(instance)  # the sensor takes note of BTC/USDT
    before = database_checksum(env)
    monkeypatch.setenv("SYMBOLS", ",".join(HOSTILE[:3]))
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, HOSTILE[3:])  # what the UI does
    result = sensor_result(instance, cursor=first.cursor)
    assert sorted(deleted(result)) == sorted(HOSTILE[3:])
    assert not result.run_requests and not added(result)
    assert database_checksum(env) == before


def test_the_chart_waits_for_a_first_symbol(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    """On an idle system the chart run could only fail ("no candles stored yet"): it is skipped."""
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    )
    assert isinstance(chart_schedule(context), dg.SkipReason)
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert isinstance(chart_schedule(context), dg.RunRequest)


def test_the_chart_and_retention_runs_carry_their_kind(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    )
    chart = chart_schedule(context)
    assert isinstance(chart, dg.RunRequest)
    assert (chart.tags["tradebeat/kind"], retention_schedule.tags["tradebeat/kind"]) == ("chart", "retention")


AUTOMATIONS = {a.name: a for a in [*(defs.schedules or []), *(defs.sensors or [])]}


@pytest.mark.parametrize(
    ("name", "when"),
    [
        ("heartbeat", "Every minute"),
        ("rollups_schedule", "Every 15 minutes, on the hour and at :15, :30 and :45 UTC"),
        ("chart_schedule", "Every 15 minutes, at :05, :20, :35 and :50 UTC"),
        ("retention_schedule", "Every day at 03:17 UTC"),
        ("symbols_sensor", "Every 30 seconds"),
    ],
)
def test_each_schedule_and_sensor_says_in_plain_words_when_it_runs(name: str, when: str) -> None:
    """The UI shows a cron as "minutes 5 through 59 past the hour"; the description says it plainly."""
    assert (AUTOMATIONS[name].description or "").startswith(when)


def test_no_schedule_or_sensor_is_without_a_description() -> None:
    assert [name for name, a in AUTOMATIONS.items() if not a.description] == []
