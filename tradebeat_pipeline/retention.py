"""Which scheduled runs the retention job may delete (no Dagster inside).

About 1,440 beats a day, and 96 rollup and 96 chart runs, each leave a run and its events in the
Dagster instance. Old ones can go, but an asset's (partition's) status and latest materialization
are computed from materializations, which live in runs: for every month, the newest successful run
of a kind that covered it holds that month's latest materialization, so it is kept (for the
unpartitioned chart, its newest successful run), and with it the truth of the UI's status. A run
that did not succeed holds no such materialization and goes once it is old. Backfill runs are never
deleted, and neither is a run that has not finished.
"""

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    order: int  # newest wins: a beat's minute, else when the run was created (epoch ms)
    holds: tuple[Hashable, ...]  # what its materializations are of: the months it covered, or an asset
    created_s: float
    succeeded: bool = True


def runs_to_delete(runs: Iterable[RunInfo], *, older_than_s: float) -> list[str]:
    """Runs of one kind created before `older_than_s` (epoch seconds) that are not the newest
    successful run of anything they hold."""
    runs = list(runs)
    newest: dict[Hashable, RunInfo] = {}
    for run in runs:
        if not run.succeeded:
            continue
        for held in run.holds:
            kept = newest.get(held)
            if kept is None or run.order > kept.order:
                newest[held] = run
    keep = {r.run_id for r in newest.values()}
    return [r.run_id for r in runs if r.created_s < older_than_s and r.run_id not in keep]
