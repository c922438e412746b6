"""What makes runs happen: the minute heartbeat schedule and the symbols sensor."""

import asyncio
import logging
import time
from datetime import UTC, date
from pathlib import Path

import dagster as dg

from tradebeat_pipeline.defs.assets import ROLLUP_ASSETS, ohlcv_1m, price_chart
from tradebeat_pipeline.defs.partitions import (
    KIND_TAG,
    ONBOARD_TAG,
    SYMBOLS_PARTITIONS_NAME,
    Kind,
    beat_minute_of,
    beat_tags,
    candle_partitions,
    range_of,
    range_tags,
    symbols_partitions,
)
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource, run_settings
from tradebeat_pipeline.exchange import SymbolNotListed, SymbolNotTrading
from tradebeat_pipeline.heartbeat import beat_months
from tradebeat_pipeline.retention import RunInfo, runs_to_delete
from tradebeat_pipeline.symbols import (
    Refusal,
    SymbolError,
    SymbolsCursor,
    Verdict,
    history_months,
    judge_candidates,
    normalize_symbol,
    onboarded_decision,
    onboarding_runs,
    plan_symbols,
    retired_decision,
    tick_summary,
)
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS, month_of, months_between, now_ms

symbols_log = logging.getLogger("tradebeat.symbols")
retention_log = logging.getLogger("tradebeat.retention")

BEAT_MAX_RUNTIME_S = 180

# One step, so the in-process executor: it starts a run in about half the time of multiprocess.
# The heartbeat's job: candles only, every minute.
candles_job = dg.define_asset_job(
    "candles_job",
    selection=[ohlcv_1m],
    partitions_def=candle_partitions,
    executor_def=dg.in_process_executor,
)
# History (onboarding, `tradebeat backfill`): candles, then their rollups, in the same run.
backfill_job = dg.define_asset_job(
    "backfill_job",
    selection=[ohlcv_1m, *ROLLUP_ASSETS],
    partitions_def=candle_partitions,
    executor_def=dg.in_process_executor,
)
rollups_job = dg.define_asset_job(
    "rollups_job",
    selection=ROLLUP_ASSETS,
    partitions_def=candle_partitions,
    executor_def=dg.in_process_executor,
)
chart_job = dg.define_asset_job("chart_job", selection=[price_chart], executor_def=dg.in_process_executor)


@dg.schedule(
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    job=rollups_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every 15 minutes, on the hour and at :15, :30 and :45 UTC: one run that brings this month's "
        "5-minute, hourly and daily candles of every symbol up to date, recomputing only the days "
        "whose 1-minute candles changed since its last run. Skipped while no symbol is registered."
    ),
)
def rollups_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Every 15 minutes, the current month's 5m/1h/1d buckets of every symbol as ONE run (not every
    beat); each run recomputes only the days whose candles changed since the last one."""
    symbols = context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)
    if not symbols:
        return dg.SkipReason("no symbols registered")
    month = month_of(context.scheduled_execution_time.astimezone(UTC).date())
    return dg.RunRequest(
        run_key=f"rollups-{context.scheduled_execution_time.isoformat()}",
        tags={**range_tags((month, symbols[0]), (month, symbols[-1])), KIND_TAG: Kind.ROLLUPS},
    )


@dg.schedule(
    cron_schedule="5-59/15 * * * *",  # between the rollup runs
    execution_timezone="UTC",
    job=chart_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every 15 minutes, at :05, :20, :35 and :50 UTC (between the rollup runs): redraws the price "
        "chart page from the stored candles. Skipped while no symbol is registered."
    ),
)
def chart_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Every 15 minutes, the price chart page; skipped while no symbol is registered (the run would
    only fail with "no candles stored yet", four times an hour, on an idle system)."""
    if not context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME):
        return dg.SkipReason("no symbols registered")
    return dg.RunRequest(tags={KIND_TAG: Kind.CHART})


@dg.schedule(
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    job=candles_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every minute, as the minute closes: one run that stores it for every registered symbol a few "
        "seconds later, together with any minutes missed since the last beat, and ends. Skipped while "
        "an earlier beat is still waiting in the queue."
    ),
)
def heartbeat(context: dg.ScheduleEvaluationContext, store: StoreResource) -> dg.RunRequest | dg.SkipReason:
    """Every minute, ONE run over every symbol's latest month(s) that stores the minute that has just
    closed: the tick at the start of minute M+1 stores M. The run starts within the buffer
    (HEARTBEAT_BUFFER_SECONDS), fetches once the exchange's clock agrees M has closed, and ends a few
    seconds after it was created, so between beats the UI shows the last one settled, not running.

    Beats never overlap: the run queue admits one `tradebeat/kind=heartbeat` run at a time
    (dagster.yaml), and a beat is skipped while another is still waiting in the queue, so a slow
    exchange never piles beats up; the next beat stores whatever the skipped ones missed.
    """
    symbols = context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)
    if not symbols:
        return dg.SkipReason("no symbols registered; add one with `tradebeat symbols add BTC/USDT`")
    run_settings()  # the store's lines from this evaluation go to logs/store.log
    waiting = context.instance.get_run_records(
        filters=dg.RunsFilter(tags={KIND_TAG: Kind.HEARTBEAT}, statuses=[dg.DagsterRunStatus.QUEUED]),
        limit=1,
    )
    if waiting:
        return dg.SkipReason(f"beat {waiting[0].dagster_run.run_id} is still queued")
    scheduled = context.scheduled_execution_time.astimezone(UTC)
    minute_ms = int(scheduled.timestamp() * 1000) // MINUTE_MS * MINUTE_MS - MINUTE_MS  # just closed
    with store.open() as candles:
        newest = candles.newest_candles(symbols)
    oldest = min((t for t in newest.values() if t is not None), default=None)
    first, last = beat_months(minute_ms, oldest)
    return dg.RunRequest(
        run_key=f"beat-{minute_ms}",
        tags={
            **beat_tags((first, symbols[0]), (last, symbols[-1]), minute_ms),
            # Dequeued before any waiting backfill: fresh candles first, history after.
            "dagster/priority": "10",
            # A beat lives seconds; one whose worker died is cancelled by run monitoring, so it
            # cannot hold the one-heartbeat-at-a-time slot forever.
            "dagster/max_runtime_seconds": str(BEAT_MAX_RUNTIME_S),
        },
    )


# Every 30 s: a symbol added in the UI is onboarded within ~35 s (the daemon checks sensors every
# few seconds). Each evaluation costs the daemon a tick row and the code server an instance and the
# resources, whether or not anything changed: at 15 s that was a third of tradebeat's idle CPU
# beyond the code server's own start.
@dg.sensor(
    job=backfill_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 30 seconds, looks for symbols added or removed (a `symbols` partition added in the UI, "
        "`tradebeat symbols add/remove`, the SYMBOLS setting). A new symbol is checked against the "
        "exchange, kept in one upper-case spelling (btc/usdt becomes BTC/USDT) and onboarded with one "
        "backfill run of its recent history; a malformed or unknown one is deleted with its reason; a "
        "removed one stops being fetched and keeps its candles. Each decision is a line in the tick's log."
    ),
)
def symbols_sensor(
    context: dg.SensorEvaluationContext, exchange: ExchangeResource, store: StoreResource
) -> dg.SensorResult:
    """Onboards symbols however they were added (UI partition, `tradebeat symbols add`, SYMBOLS):
    validates them against the exchange, keeps one upper-case spelling, registers them in the
    store and launches ONE backfill run of BACKFILL_MINUTES of history; retires removed ones.

    Every decision (normalised, duplicate spelling removed, rejected with its reason, onboarded,
    retired) is a line in the tick's log; a tick that launches no run says what it decided as its
    skip reason, the one line the UI shows beside the tick (Dagster allows it only without runs).
    """
    settings = run_settings()
    cursor = SymbolsCursor.load(context.cursor)
    partitions = list(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    plan = plan_symbols(partitions, list(settings.symbols), cursor)
    verdicts = asyncio.run(_validate(exchange, plan.candidates)) if plan.candidates else {}
    cursor.setting_seen.update(raw for raw in plan.candidates if raw in settings.symbols)
    tick = judge_candidates(plan, partitions, cursor.onboarded, verdicts)
    decisions = list(tick.decisions)

    now = now_ms()
    history: dict[str, tuple[date, date]] = {}
    for symbol in tick.onboard:
        with store.open() as candles:
            candles.register_symbol(symbol)
            newest = candles.newest_candles([symbol])[symbol]
        history[symbol] = history_months(now, settings.backfill_minutes, newest)
        cursor.onboarded.add(symbol)

    runs: list[dg.RunRequest] = []
    order = [p for p in partitions if p not in tick.delete] + tick.add  # once the requests apply
    for group in onboarding_runs(order, history):
        first, last = group.symbols[0], group.symbols[-1]
        runs.append(
            dg.RunRequest(
                run_key=f"onboard-{first}-{last}-{now}",
                tags={
                    **range_tags((group.first_month, first), (group.last_month, last)),
                    KIND_TAG: Kind.BACKFILL,
                    ONBOARD_TAG: group.span,
                },
            )
        )
        decisions.append(onboarded_decision(group))

    for symbol in plan.retired:
        with store.open() as candles:
            candles.deactivate_symbol(symbol)
        cursor.onboarded.discard(symbol)
        decisions.append(retired_decision(symbol))

    for decision in decisions:
        context.log.log(decision.level, decision.message)  # the tick's log in the UI
        symbols_log.log(decision.level, decision.message)  # logs/symbols.log

    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if tick.add:
        requests.append(symbols_partitions.build_add_request(tick.add))
    if tick.delete:
        requests.append(symbols_partitions.build_delete_request(tick.delete))
    return dg.SensorResult(
        run_requests=runs,
        skip_reason=None if runs else tick_summary(decisions, registered=len(order)),
        dynamic_partitions_requests=requests,
        cursor=cursor.dump(),
    )


async def _validate(exchange: ExchangeResource, raws: list[str]) -> dict[str, Verdict]:
    """Per raw input: its normalised spelling if the exchange trades it, else why not.

    An exchange that cannot be reached raises: the tick fails visibly and is retried, instead of
    rejecting good symbols.
    """
    verdicts: dict[str, Verdict] = {}
    async with exchange.open() as client:
        for raw in raws:
            try:
                symbol = normalize_symbol(raw)
            except SymbolError as exc:
                verdicts[raw] = Verdict(None, Refusal.MALFORMED, str(exc))
                continue
            try:
                await client.check_symbol(symbol)
            except SymbolNotListed as exc:
                verdicts[raw] = Verdict(symbol, Refusal.NOT_LISTED, str(exc))
            except SymbolNotTrading as exc:
                verdicts[raw] = Verdict(symbol, Refusal.NOT_TRADING, str(exc))
            else:
                verdicts[raw] = Verdict(symbol)
    return verdicts


# The scheduled runs retention prunes; backfill runs (history loaded on purpose) are never deleted.
PRUNED_KINDS = (Kind.HEARTBEAT, Kind.ROLLUPS, Kind.CHART)
# Only a finished run may go (Dagster's own list of these is private).
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _run_info(kind: str, record: dg.RunRecord) -> RunInfo | None:
    """What retention needs of a finished run of `kind`; None for one tradebeat's schedules did not
    make (never touched)."""
    run = record.dagster_run
    created_s = record.create_timestamp.timestamp()
    succeeded = run.status == dg.DagsterRunStatus.SUCCESS
    if kind == Kind.CHART:
        return RunInfo(run.run_id, int(created_s * 1000), (price_chart.key,), created_s, succeeded)
    try:
        (first, _), (last, _) = range_of(run.tags)
        order = beat_minute_of(run.tags) if kind == Kind.HEARTBEAT else int(created_s * 1000)
    except (KeyError, ValueError):
        return None
    return RunInfo(run.run_id, order, tuple(months_between(first, last)), created_s, succeeded)


@dg.op
def prune_old_runs(context: dg.OpExecutionContext) -> None:
    """Delete heartbeat, rollup and chart runs older than RUN_RETENTION_DAYS, keeping for each month
    (the chart: for the asset) the newest successful run of each kind: it holds the latest
    materialization, so partition status and the asset's page stay true."""
    settings = run_settings()
    cutoff = time.time() - settings.run_retention_days * DAY_MS / 1000
    # With Dagster's default SQLite storage each run's events live in history/runs/<run_id>.db, and
    # delete_run empties that file without removing it; no public API reclaims it, so the emptied
    # file is removed here (under Postgres storage there is no such file and nothing to do).
    run_files = Path(context.instance.root_directory) / "history" / "runs"
    for kind in PRUNED_KINDS:
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(tags={KIND_TAG: kind}, statuses=list(FINISHED))
        )
        runs = [info for record in records if (info := _run_info(kind, record)) is not None]
        doomed = runs_to_delete(runs, older_than_s=cutoff)
        for run_id in doomed:
            context.instance.delete_run(run_id)
            (run_files / f"{run_id}.db").unlink(missing_ok=True)
        message = (
            f"deleted {len(doomed)} of {len(runs)} {kind} runs older than {settings.run_retention_days} days"
        )
        context.log.info(message)
        retention_log.info(message)


@dg.job
def retention_job() -> None:
    """Bounds the instance: old scheduled runs go, each month's newest successful one stays."""
    prune_old_runs()


retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule",
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    job=retention_job,
    tags={KIND_TAG: Kind.RETENTION},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every day at 03:17 UTC: deletes heartbeat, rollup and chart runs older than RUN_RETENTION_DAYS "
        "from the Dagster instance, keeping each month's newest successful run of each (the chart's "
        "newest) so partition status stays true. Backfill runs and candles are never touched."
    ),
)
