"""Heartbeat latency: a real dagster-daemon beating against the sandbox for N minutes with K symbols.

    uv run python benchmarks/heartbeat.py [--minutes 5] [--symbols 10] [--buffer 5]
    uv run python benchmarks/heartbeat.py --symbols 100 --minutes 6 --weight-limit 6000 --backfill-months 1

Prints p50/p95/max of candle close -> commit (from `ingested_at`) for the minutes each beat stored,
runs per beat, and CPU seconds per beat (the whole machine less this process, which hosts the
sandbox, divided by the beats: daemon, sensor ticks and run workers together).

With `--backfill-months`, a backfill of every symbol's last M whole months (before the current one)
runs in its own process beside the
beats, and the sandbox reports the request weight it counted per clock minute: the shared rate
budget (our share of `--weight-limit`) must hold across both, with the beats going first.
"""

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np

from tradebeat_pipeline import cli
from tradebeat_pipeline.defs.partitions import beat_minute_of
from tradebeat_pipeline.sandbox.market_data import replay_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.timewindows import DAY_MS, iso_utc, month_key, month_of, month_window

MIN = 60_000

# A separate process, as `tradebeat backfill` or the sensor's onboarding would be: every symbol's
# days as ONE run.
BACKFILL = """
import sys
from datetime import date
from tradebeat_pipeline.cli.runs import instance, materialize_history
first, last, start, end = sys.argv[1:]
with instance() as dagster:
    result = materialize_history(dagster, [first, last], date.fromisoformat(start), date.fromisoformat(end))
sys.exit(0 if result.success else 1)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--buffer", type=float, default=5.0)
    parser.add_argument("--weight-limit", type=int, default=60_000, help="the sandbox's declared budget")
    parser.add_argument(
        "--backfill-months",
        type=int,
        default=0,
        help="whole months before this one backfilled beside the beats",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tradebeat-heartbeat-"))
    home = work / "home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)
    symbols = [f"S{i:03d}/USDT" for i in range(args.symbols)]
    now = int(time.time() * 1000)
    anchor = now - now % DAY_MS - 30 * DAY_MS  # as `tradebeat sandbox --replay`: 30 days of history
    sandbox = Sandbox(replay_markets(anchor, args.symbols), Clock(), weight_limit=args.weight_limit)
    server = SandboxServer(sandbox).start()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DB_PATH": str(work / "hb.sqlite"),
        "BINANCE_API_URL": server.url,
        "BINANCE_ARCHIVE_URL": server.url,
        "TRADEBEAT_ENV_FILE": str(work / "none.env"),
        "HEARTBEAT_BUFFER_SECONDS": str(args.buffer),
        "BACKFILL_MINUTES": "10",
        "LOG_LEVEL": "WARNING",
    }
    daemon = backfill = None
    backfill_span: tuple[float, float] | None = None
    try:
        os.environ.update(env)
        assert cli.main(["symbols", "add", *symbols]) == 0
        daemon = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster-daemon")),
                "run",
                "-w",
                str(PROJECT_DIR / "workspace.yaml"),
            ],
            env=env,
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = int(time.time() * 1000)
        # The scheduler starts with the tick after it comes up; measure from the second one on,
        # when the onboarding backfills are done.
        first_beat = started - started % MIN + 2 * MIN
        last_beat = first_beat + (args.minutes - 1) * MIN
        print(
            f"{args.symbols} symbols, buffer {args.buffer}s, sandbox budget {args.weight_limit} weight/min, "
            f"beats {iso_utc(first_beat)}..{iso_utc(last_beat)}; waiting for them to close…",
            flush=True,
        )
        time.sleep(max(0.0, first_beat / 1000 - time.time()))
        if args.backfill_months:
            this_month = month_of(now)
            days = (months_before(this_month, args.backfill_months), months_before(this_month, 1))
            argv = [sys.executable, "-c", BACKFILL, symbols[0], symbols[-1], *(d.isoformat() for d in days)]
            backfill = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            backfill_span = (time.time(), 0.0)
            print(
                f"backfill of {month_key(days[0])}..{month_key(days[1])} for all {args.symbols} symbols "
                "started",
                flush=True,
            )
        cpu_start = machine_cpu_s() - process_cpu_s(os.getpid())
        deadline = time.time() + (last_beat + MIN - first_beat) / 1000 + 120
        while time.time() < deadline and not beats_done(last_beat):
            if backfill_span and not backfill_span[1] and backfill and backfill.poll() is not None:
                backfill_span = (backfill_span[0], time.time())
            time.sleep(2)
        cpu_s = machine_cpu_s() - process_cpu_s(os.getpid()) - cpu_start
        if backfill is not None and backfill_span is not None:
            _, err = backfill.communicate(timeout=1800)
            if not backfill_span[1]:
                backfill_span = (backfill_span[0], time.time())
            print(
                f"backfill: exit {backfill.returncode} after {backfill_span[1] - backfill_span[0]:.0f}s"
                + (f"; {err.decode()[-500:]}" if backfill.returncode else ""),
            )
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
        server.stop()
    report(work / "hb.sqlite", first_beat, last_beat, cpu_s, args.buffer, backfill_span)
    if args.backfill_months:
        this_month = month_of(now)
        months = (months_before(this_month, args.backfill_months), this_month)
        report_weight(sandbox, first_beat, args.weight_limit, work / "hb.sqlite", months)


def beats_done(last_beat: int) -> bool:
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "heartbeat"}))
    return any(beat_minute_of(r.dagster_run.tags) >= last_beat and r.dagster_run.is_finished for r in runs)


def machine_cpu_s() -> float:
    """User + system CPU seconds of the whole machine so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(
    db: Path,
    first_beat: int,
    last_beat: int,
    cpu_s: float,
    buffer_s: float,
    backfill_span: tuple[float, float] | None,
) -> None:
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "heartbeat"}))
    runs = [r.dagster_run for r in records]
    per_minute: dict[int, list[dg.DagsterRun]] = {}
    for run in runs:
        per_minute.setdefault(beat_minute_of(run.tags), []).append(run)
    # From the first measured beat on: the ones before it ran beside the onboarding backfills.
    beats = sorted(m for m in per_minute if first_beat <= m <= last_beat)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT timestamp, ingested_at FROM price_data WHERE timestamp BETWEEN ? AND ?",
            (beats[0], last_beat),
        ).fetchall()
    conn.close()
    ok = sum(1 for m in beats for r in per_minute[m] if r.status == dg.DagsterRunStatus.SUCCESS)
    print(
        f"beats {iso_utc(beats[0])}..{iso_utc(beats[-1])}: {len(beats)} beats, "
        f"runs per beat: max {max(len(per_minute[m]) for m in beats)}, successful {ok}/{len(beats)}"
    )
    groups = {"all candles": rows}
    if backfill_span is not None:
        during = [(ts, ing) for ts, ing in rows if backfill_span[0] <= (ts + MIN) / 1000 <= backfill_span[1]]
        groups["minutes closing while the backfill ran"] = during
        during_set = set(during)
        groups["the other minutes"] = [r for r in rows if r not in during_set]
    for label, group in groups.items():
        if not group:
            print(f"close -> commit, {label}: none")
            continue
        latency = np.array([(ingested - (ts + MIN)) / 1000 for ts, ingested in group])
        print(
            f"close -> commit, {label} ({len(latency)} candles): p50 {np.percentile(latency, 50):.1f}s, "
            f"p95 {np.percentile(latency, 95):.1f}s, max {latency.max():.1f}s (buffer {buffer_s:.0f}s)"
        )
    report_in_progress(records, first_beat, last_beat)
    print(
        f"CPU (whole machine less the sandbox, from the first beat to the last): "
        f"{cpu_s:.1f}s, {cpu_s / len(beats):.1f}s per beat"
    )


def report_in_progress(records: Sequence[dg.RunRecord], first_beat: int, last_beat: int) -> None:
    """The share of wall time a heartbeat run is in progress (created, not yet ended: what the UI
    shows as queued or running), from the tick of the first measured beat to a minute after the
    last one's, and how a beat's life splits between the queue and the run."""
    window = ((first_beat + MIN) / 1000, (last_beat + 2 * MIN) / 1000)
    spans = sorted(
        (r.create_timestamp.timestamp(), r.end_time or time.time())
        for r in records
        if first_beat <= beat_minute_of(r.dagster_run.tags) <= last_beat
    )
    busy, until = 0.0, window[0]
    for start, end in spans:
        start, end = max(start, until), min(end, window[1])
        if end > start:
            busy += end - start
            until = end
    queued = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    running = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    print(
        f"a heartbeat run is in progress {busy / (window[1] - window[0]):.0%} of the time "
        f"({busy:.0f}s of {window[1] - window[0]:.0f}s); per beat, created -> started "
        f"p50 {np.percentile(queued, 50):.1f}s, started -> ended p50 {np.percentile(running, 50):.1f}s"
    )


def months_before(month: date, n: int) -> date:
    year, index = divmod(month.year * 12 + month.month - 1 - n, 12)
    return date(year, index + 1, 1)


def report_weight(sandbox: Sandbox, first_beat: int, limit: int, db: Path, months: tuple[date, date]) -> None:
    """What the exchange saw from the first beat on: weight per clock minute against our share, and
    the 429s it sent."""
    share = 0.5  # RATE_BUDGET_SHARE's default
    per_minute = {m: w for m, w in sandbox.weight_by_minute().items() if m * MIN >= first_beat}
    print(f"request weight counted by the sandbox per clock minute (our budget {limit * share:.0f}):")
    for minute, weight in sorted(per_minute.items()):
        print(f"  {iso_utc(minute * MIN)}  {weight:5d}")
    clock_minute, sliding = sandbox.busiest_minutes()
    print(
        f"busiest clock minute {clock_minute}, busiest 60 s {sliding} (budget {limit * share:.0f}); "
        f"429s for weight: {sandbox.rejected_for_weight}"
    )
    start, end = month_window(months[0])[0], month_window(months[1])[0]
    with sqlite3.connect(db) as conn:
        stored, symbols = conn.execute(
            "SELECT count(*), count(DISTINCT symbol_id) FROM price_data "
            "WHERE timestamp >= ? AND timestamp < ?",
            (start, end),
        ).fetchone()
    conn.close()
    expected = symbols * (end - start) // MIN
    span = f"{month_key(months[0])}..{month_key(months_before(months[1], 1))}"
    print(f"backfilled candles stored: {stored:,} of {expected:,} ({symbols} symbols x {span})")


if __name__ == "__main__":
    main()
