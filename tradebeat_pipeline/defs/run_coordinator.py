"""The instance's run queue (Dagster's QueuedRunCoordinator) with one addition: every run it is
given carries a `tradebeat/kind` tag, however it was launched. The schedules, the sensor and the CLI
tag their runs; a run launched from the UI's Materialize or backfill dialogs is tagged here, from
what it materializes, so the Runs page, `tradebeat status` and the queue's limits read one tag.

Named in dagster_home/dagster.yaml (`run_coordinator:`), so it runs in the webserver and daemon."""

import dagster as dg

from tradebeat_pipeline.defs.partitions import KIND_TAG, kind_of


class KindTaggingRunCoordinator(dg.QueuedRunCoordinator):
    """Tags an untagged run with its `Kind` before queueing it as Dagster's queue does."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if KIND_TAG not in run.tags:
            assets = [key.to_user_string() for key in run.asset_selection or ()]
            # `_instance`: the instance a run coordinator is registered with; Dagster's own
            # coordinators reach it this way, and it has no public accessor.
            self._instance.add_run_tags(run.run_id, {KIND_TAG: kind_of(run.tags, run.job_name, assets)})
        return super().submit_run(context)
