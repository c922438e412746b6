"""Which heartbeat runs the retention job may delete (no Dagster inside).

About 1,440 beats a day each leave a run and its events in the Dagster instance. Old ones can go, but
partition status is computed from materializations, which live in runs: for every month, the newest
beat that covered it holds that month's latest materialization, so it is kept, and with it the truth
of the partition status in the UI. Backfill runs are never deleted.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from tradebeat_pipeline.timewindows import months_between


@dataclass(frozen=True)
class BeatRunInfo:
    run_id: str
    minute_ms: int  # the beat's minute: orders beats
    first_month: date  # the months its partition range covered (their first days)
    last_month: date
    created_s: float


def runs_to_delete(beats: Iterable[BeatRunInfo], *, older_than_s: float) -> list[str]:
    """Beats created before `older_than_s` (epoch seconds) that are not the newest beat of any month."""
    beats = list(beats)
    newest_of_month: dict[date, BeatRunInfo] = {}
    for beat in beats:
        for month in months_between(beat.first_month, beat.last_month):
            kept = newest_of_month.get(month)
            if kept is None or beat.minute_ms > kept.minute_ms:
                newest_of_month[month] = beat
    keep = {b.run_id for b in newest_of_month.values()}
    return [b.run_id for b in beats if b.created_s < older_than_s and b.run_id not in keep]
