"""`tradebeat status`: health as a monitoring plugin reports it; any doubt is UNKNOWN (3), never
HEALTHY."""

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict

import dagster as dg

from tradebeat_pipeline import health
from tradebeat_pipeline.budget import WINDOW_S, BudgetUse, read_ledger
from tradebeat_pipeline.cli.runs import instance
from tradebeat_pipeline.defs.partitions import KIND_TAG, Kind, beat_minute_of
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import StoreError, open_store
from tradebeat_pipeline.timewindows import iso_utc


def status(args: argparse.Namespace, settings: Settings) -> int:
    now_s = time.time()
    now_ms = int(now_s * 1000)
    if settings.database_url is None and not settings.db_path.exists():
        print(f"tradebeat: UNKNOWN: DB_PATH {settings.db_path} does not exist", file=sys.stderr)
        return int(health.Health.UNKNOWN)
    try:
        with open_store(settings) as store:
            symbols = [health.symbol_health(store, s, now_ms) for s in sorted(store.active_symbols())]
        with instance() as dagster:
            beats = [
                health.BeatRun(
                    status=r.dagster_run.status.value,
                    created_s=r.create_timestamp.timestamp(),
                    minute=_beat_minute(r.dagster_run.tags),
                )
                for r in dagster.get_run_records(
                    filters=dg.RunsFilter(tags={KIND_TAG: Kind.HEARTBEAT}), limit=10
                )
            ]
            heartbeats = [h.timestamp for h in dagster.get_daemon_heartbeats().values()]
        budget = read_ledger(settings, settings.api_url, now_s=now_s)
    except (StoreError, dg.DagsterError, OSError) as exc:
        print(f"tradebeat: UNKNOWN: {exc}", file=sys.stderr)
        return int(health.Health.UNKNOWN)
    report = health.judge(
        symbols,
        now_s=now_s,
        freshness_minutes=settings.freshness_minutes,
        daemon_heartbeat_s=max(heartbeats, default=None),
        beats=beats,
    )
    if args.json:
        out = report.as_json()
        out["rate_budget"] = None if budget is None else asdict(budget)
        print(json.dumps(out, separators=(",", ":")))
    else:
        _print_status(report)
        _print_budget(budget)
    return int(report.health)


def _print_budget(use: BudgetUse | None) -> None:
    """The shared request-weight budget: why a backfill may be going slowly."""
    if use is None:
        print("rate budget: no request sent yet")
        return
    line = (
        f"rate budget: {use.beat + use.bulk:,} of {use.per_minute:,.0f} weight in the last {WINDOW_S} s "
        f"(heartbeat {use.beat:,}, backfills and the rest {use.bulk:,})"
    )
    if use.paused_for_s > 0:
        line += f"; the exchange paused every request for {use.paused_for_s:.0f}s more (Retry-After)"
    print(line)


def _beat_minute(tags: Mapping[str, str]) -> str | None:
    try:
        return iso_utc(beat_minute_of(tags))
    except (KeyError, ValueError):
        return None


def _print_status(report: health.Report) -> None:
    print(f"tradebeat {report.health.name} at {report.now}" + "".join(f"\n  - {r}" for r in report.reasons))
    daemon = (
        "no heartbeat"
        if report.daemon_heartbeat_age_s is None
        else f"last heartbeat {report.daemon_heartbeat_age_s:.0f}s ago"
    )
    beat = report.last_beat
    last = "none" if beat is None else f"{beat.status} for minute {beat.minute or '-'}"
    print(f"daemon: {daemon}; last beat: {last}")
    print(
        f"{'symbol':<14} {'newest candle':<21} {'complete through':<21} {'lag min':>7} "
        f"{'today':>6} {'unexplained 24h':>15}"
    )
    for s in report.symbols:
        lag = "-" if s.lag_minutes is None else f"{s.lag_minutes}{'*' if s.lag_explained else ''}"
        print(
            f"{s.symbol:<14} {s.newest_candle or '-':<21} {s.complete_through or '-':<21} {lag:>7} "
            f"{s.candles_today:>6} {s.unexplained_minutes_24h:>15}"
        )
    if any(s.lag_explained for s in report.symbols):
        print("* the exchange itself has no candles for the lagging minutes")
