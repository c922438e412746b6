"""Which scheduled runs retention may delete, and the job doing it on a real instance."""

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.cli.runs import materialize_beat
from tradebeat_pipeline.definitions import defs
from tradebeat_pipeline.defs.assets import ohlcv_1m, price_chart
from tradebeat_pipeline.defs.partitions import KIND_TAG, Kind
from tradebeat_pipeline.retention import RunInfo, runs_to_delete
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline.timewindows import months_between
from tradebeat_pipeline_tests.conftest import ms

JAN, FEB = date(2020, 1, 1), date(2020, 2, 1)


def beat(
    run_id: str, minute: str, first: date, last: date, created_s: float = 0, succeeded: bool = True
) -> RunInfo:
    return RunInfo(run_id, ms(minute), tuple(months_between(first, last)), created_s, succeeded)


def test_old_beats_go_but_each_months_newest_beat_stays() -> None:
    beats = [
        beat("a", "2020-01-15T10:00:00Z", JAN, JAN),
        beat("b", "2020-01-31T23:59:00Z", JAN, JAN),
        beat("c", "2020-02-01T00:01:00Z", JAN, FEB),  # at a month's start a beat also ends the last one
        beat("d", "2020-02-02T12:00:00Z", FEB, FEB),
    ]
    assert runs_to_delete(beats, older_than_s=1) == ["a", "b"]


def test_beats_younger_than_the_retention_age_are_kept() -> None:
    beats = [
        beat("a", "2020-01-01T10:00:00Z", JAN, JAN, created_s=100),
        beat("b", "2020-01-01T11:00:00Z", JAN, JAN),
    ]
    assert runs_to_delete(beats, older_than_s=50) == []


def test_a_newer_failed_run_does_not_displace_the_run_holding_the_latest_materialization() -> None:
    beats = [
        beat("ok", "2020-01-31T23:58:00Z", JAN, JAN),
        beat("failed", "2020-01-31T23:59:00Z", JAN, JAN, succeeded=False),
    ]
    assert runs_to_delete(beats, older_than_s=1) == ["failed"]


def test_an_unpartitioned_assets_newest_successful_run_stays() -> None:
    charts = [RunInfo(name, order, ("price_chart",), 0) for order, name in enumerate(["a", "b", "c"])]
    assert runs_to_delete(charts, older_than_s=1) == ["a", "b"]


def run_beat(instance: dg.DagsterInstance, minute: str, first: date, last: date) -> str:
    result = materialize_beat(instance, ["BTC/USDT"], first, last, ms(minute))
    assert result.success
    return result.run_id


def kept(instance: dg.DagsterInstance, kind: str) -> set[str]:
    return {
        r.dagster_run.run_id for r in instance.get_run_records(filters=dg.RunsFilter(tags={KIND_TAG: kind}))
    }


def prune(instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUN_RETENTION_DAYS", "0")
    assert defs.resolve_job_def("retention_job").execute_in_process(instance=instance).success


def test_the_retention_job_deletes_old_beats_and_partition_status_stays_true(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    runs = [
        run_beat(instance, "2020-01-31T10:00:00Z", JAN, JAN),
        run_beat(instance, "2020-01-31T20:00:00Z", JAN, JAN),
        run_beat(instance, "2020-02-01T00:01:00Z", JAN, FEB),
        run_beat(instance, "2020-02-01T12:00:00Z", FEB, FEB),
    ]
    materialized = instance.get_materialized_partitions(ohlcv_1m.key)
    assert materialized == {"2020-01|BTC/USDT", "2020-02|BTC/USDT"}

    prune(instance, monkeypatch)

    assert kept(instance, Kind.HEARTBEAT) == {runs[2], runs[3]}
    assert instance.get_materialized_partitions(ohlcv_1m.key) == materialized


def test_the_retention_job_keeps_only_the_newest_chart_run_and_the_chart_its_materialization(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTS_DIR", str(env.parent / "charts"))
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    run_beat(instance, "2020-01-31T10:00:00Z", JAN, JAN)
    chart_job = defs.resolve_job_def("chart_job")
    charts = [chart_job.execute_in_process(instance=instance, tags={KIND_TAG: Kind.CHART}) for _ in range(3)]
    assert all(c.success for c in charts)

    prune(instance, monkeypatch)

    assert kept(instance, Kind.CHART) == {charts[-1].run_id}
    latest = instance.get_latest_materialization_event(price_chart.key)
    assert latest is not None and latest.run_id == charts[-1].run_id
