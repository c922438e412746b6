"""The instance's run queue (Dagster's QueuedRunCoordinator) with two additions, named in
dagster_home/dagster.yaml (`run_coordinator:`) so they run in the webserver and the daemon:

- every run it is given carries a `tradebeat/kind` tag, however it was launched. The schedules, the
  sensor and the CLI tag their runs; a run from the UI's Materialize or backfill dialogs is tagged
  here, from what it materializes, so the Runs page, `tradebeat status` and the queue read one tag;
- a heartbeat is launched at once while no other beat is in flight, instead of waiting for the
  queue's next read (up to `dequeue_interval_seconds`, 5 s): it is created as its minute closes,
  and that wait would be close -> commit latency. A beat that finds another in flight is queued,
  so the queue's one-heartbeat-at-a-time limit still holds; a beat may then run as a fifth run
  beside four backfills, which is what its priority asks for anyway.
"""

import dagster as dg

from tradebeat_pipeline.defs.partitions import KIND_TAG, Kind, kind_of

# A heartbeat in any of these states holds the one-beat slot (or is about to).
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class KindTaggingRunCoordinator(dg.QueuedRunCoordinator):
    """Tags an untagged run with its `Kind`; launches a beat at once when the beat slot is free;
    queues everything else as Dagster's queue does."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        # `_instance`: the instance a run coordinator is registered with; Dagster's own
        # coordinators reach it this way, and it has no public accessor.
        instance = self._instance
        kind = kind_of(run.tags, run.job_name, [key.to_user_string() for key in run.asset_selection or ()])
        if KIND_TAG not in run.tags:
            instance.add_run_tags(run.run_id, {KIND_TAG: kind})
        if (
            kind == Kind.HEARTBEAT
            and run.status == dg.DagsterRunStatus.NOT_STARTED
            and not _other_beat(instance, run)
        ):
            instance.launch_run(run.run_id, context.workspace)  # as Dagster's unqueued coordinator does
            launched = instance.get_run_by_id(run.run_id)
            assert launched is not None, run.run_id
            return launched
        return super().submit_run(context)


def _other_beat(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether a heartbeat other than `run` is queued or running."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={KIND_TAG: Kind.HEARTBEAT}, statuses=_IN_FLIGHT), limit=2
    )
    return any(r.dagster_run.run_id != run.run_id for r in records)
