"""The instance's run queue tags every run with its kind, however it was launched (the UI's dialogs
launch Dagster's own asset job, untagged), on a real instance with the project's dagster.yaml."""

import dagster as dg

from tradebeat_pipeline.definitions import defs
from tradebeat_pipeline.defs.partitions import ASSET_KINDS, JOB_KINDS, KIND_TAG, Kind, range_tags
from tradebeat_pipeline.defs.run_coordinator import KindTaggingRunCoordinator
from tradebeat_pipeline.timewindows import parse_month
from tradebeat_pipeline_tests.conftest import run_origin


def submit(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """What the webserver does with a run launched from the UI: add it, hand it to the queue."""
    instance.add_run(run)
    return instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]


def ui_run(*assets: str, tags: dict[str, str] | None = None) -> dg.DagsterRun:
    return dg.DagsterRun(
        job_name="__ASSET_JOB",
        asset_selection=frozenset(dg.AssetKey(a) for a in assets),
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags=tags or {},
        remote_job_origin=run_origin("__ASSET_JOB"),
    )


def test_the_projects_instance_queues_runs_through_the_kind_tagging_coordinator(
    instance: dg.DagsterInstance,
) -> None:
    assert isinstance(instance.run_coordinator, KindTaggingRunCoordinator)


def test_a_backfill_launched_from_the_ui_is_queued_as_a_backfill(instance: dg.DagsterInstance) -> None:
    month = parse_month("2026-11")
    run = ui_run("ohlcv_1m", "ohlcv_5m", tags=range_tags((month, "BTC/USDT"), (month, "ETH/USDT")))
    queued = submit(instance, run)
    assert queued.status == dg.DagsterRunStatus.QUEUED
    assert queued.tags[KIND_TAG] == Kind.BACKFILL


def test_the_chart_materialized_from_the_ui_is_queued_as_a_chart_run(instance: dg.DagsterInstance) -> None:
    assert submit(instance, ui_run("price_chart")).tags[KIND_TAG] == Kind.CHART


def test_a_run_that_says_its_kind_keeps_it(instance: dg.DagsterInstance) -> None:
    run = ui_run("ohlcv_1m", tags={KIND_TAG: Kind.ROLLUPS})
    assert submit(instance, run).tags[KIND_TAG] == Kind.ROLLUPS


def test_a_beat_while_another_is_running_waits_in_the_queue(instance: dg.DagsterInstance) -> None:
    running = ui_run("ohlcv_1m", tags={KIND_TAG: Kind.HEARTBEAT})
    instance.add_run(running._replace(status=dg.DagsterRunStatus.STARTED))
    beat = submit(instance, ui_run("ohlcv_1m", tags={KIND_TAG: Kind.HEARTBEAT}))
    assert beat.status == dg.DagsterRunStatus.QUEUED


def test_every_asset_and_job_of_the_definitions_has_a_kind() -> None:
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    jobs = {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    assert (set(ASSET_KINDS), set(JOB_KINDS)) == (assets, jobs)
