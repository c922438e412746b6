"""The CLI's Dagster glue: the instance in DAGSTER_HOME, and runs materialized in this process but
recorded in that instance, so they show in the UI like the daemon's (also used by benchmarks and
tests that need a heartbeat or a backfill without a daemon). The definitions are imported by the
functions that run them: `status` and `symbols` need only the instance."""

import os
from collections.abc import Iterable
from datetime import date

import dagster as dg

from tradebeat_pipeline.defs.partitions import KIND_TAG, Kind, beat_tags, range_tags
from tradebeat_pipeline.settings import dagster_home


def instance() -> dg.DagsterInstance:
    """The Dagster instance in DAGSTER_HOME (the project's dagster_home/ unless set); use it in a
    `with` block so it is closed (an instance left open lingers in Dagster's process-wide state).

    Runs materialized here are given this instance, so nothing needs DAGSTER_HOME in the environment."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = dagster_home()  # the project's dagster_home/
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_config(str(home))


def materialize_history(
    dagster: dg.DagsterInstance,
    symbols: Iterable[str],
    first: date,
    last: date,
    *,
    rollups: bool = False,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """Months first..last of adjacent symbols (in partition order) as ONE backfill run, its rollups
    too when asked (each asset adds Dagster's per-partition bookkeeping, ~60 ms a partition)."""
    from tradebeat_pipeline.definitions import resources
    from tradebeat_pipeline.defs.assets import ROLLUP_ASSETS, ohlcv_1m

    ordered = list(symbols)
    return dg.materialize(
        [ohlcv_1m, *ROLLUP_ASSETS] if rollups else [ohlcv_1m],
        instance=dagster,
        resources=resources(),
        tags={**range_tags((first, ordered[0]), (last, ordered[-1])), KIND_TAG: Kind.BACKFILL},
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


def materialize_beat(
    dagster: dg.DagsterInstance, symbols: Iterable[str], first: date, last: date, minute_ms: int
) -> dg.ExecuteInProcessResult:
    """One heartbeat run for `minute_ms` over months first..last of adjacent symbols, as the schedule
    would launch it (without its queue and priority tags)."""
    from tradebeat_pipeline.definitions import resources
    from tradebeat_pipeline.defs.assets import ohlcv_1m

    ordered = list(symbols)
    return dg.materialize(
        [ohlcv_1m],
        instance=dagster,
        resources=resources(),
        tags=beat_tags((first, ordered[0]), (last, ordered[-1]), minute_ms),
        raise_on_error=False,
    )
