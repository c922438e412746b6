"""Concurrent writers on one candle store: a 100-symbol heartbeat (a real dagster-daemon) and 4
backfill runs in separate processes, all writing the same store for N minutes, on SQLite and on
PostgreSQL.

    uv run python benchmarks/concurrency.py [--store sqlite|postgres|both] [--minutes 5]
        [--symbols 100] [--backfills 4] [--symbols-per-backfill 5] [--buffer 5]

Per store, the sandbox exchange replays its synthetic markets S000/USDT... on the wall clock (in this
process, as benchmarks/heartbeat.py does), the symbols are added, and `dagster-daemon run` beats
them every minute. From the second tick on (the first runs beside the onboarding backfill), each of
`--backfills` processes backfills its own quarter of the symbols, `--symbols-per-backfill` adjacent
ones per run, over the previous and the current month, one run after another until the last
measured beat has closed: so backfills and beats lock and write the same symbols and the same
current-month rows at once. One more beat settles what a failed beat left, then everything stops.

The table: runs and their failures; lock or serialization errors, counted in run failures, in every
run's event log and in tradebeat's log files and the backfill processes' output; candles lost
(minutes the sandbox serves but the store lacks) and wrong (stored values not bit-equal to the
sandbox's) over the current month up to the last measured beat for every symbol and the previous
month for every symbol a backfill stored (none for a symbol no backfill stored: an all-or-nothing
write leaves nothing); the primary key makes an exact duplicate impossible, so a stored minute the
sandbox does not serve is counted as extra; beat latency, candle close -> commit p50/p95/max
from each measured beat's own `close_to_commit_s`; and how much of it was the beat's write
(its fetched batch to its materialization: waiting for other writers' locks, writing, its gap
reports), beside the time it waited to start (created -> started: the run queue's read and the
run worker's start).

SQLite: the store at DB_PATH and the instance in the project's dagster_home/dagster.yaml, in files.
PostgreSQL: a throwaway server (`pg_cluster.running_cluster(durable=True)`, the tests' own
start-up, durability on) holding the store (DATABASE_URL), the shared rate budget and the Dagster
instance (deploy/dagster.yaml without its Docker run launcher), as a multi-machine deployment would;
with `--instance-in-files` the instance stays in files there too, so only the candle store differs.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np

from tradebeat_pipeline import cli
from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.defs.partitions import beat_minute_of
from tradebeat_pipeline.exchange.binance import parse_klines
from tradebeat_pipeline.sandbox.market_data import replay_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline.timewindows import DAY_MS, iso_utc, month_of, month_window
from tradebeat_pipeline_tests.pg_cluster import (
    deployment_instance,
    fresh_database,
    running_cluster,
)

MIN = 60_000
# What a lock or serialization problem says, whichever database or driver reports it.
LOCK_WORDS = (
    "database is locked",
    "stayed locked",
    "deadlock",
    "could not serialize",
    "serialization failure",
    "could not obtain lock",
    "lock timeout",
    "lock not available",
    "locknotavailable",
)

# One backfill process: its groups of adjacent symbols, each as ONE run over first..last, one run
# after another until `until` (epoch s); a JSON line per run.
BACKFILL = """
import json, sys, time
from datetime import date
from tradebeat_pipeline.cli.runs import instance, materialize_history
groups, first, last, until = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
i = 0
with instance() as dagster:
    while time.time() < until:
        group = groups[i % len(groups)]
        i += 1
        started = time.time()
        result = materialize_history(
            dagster, group, date.fromisoformat(first), date.fromisoformat(last), log_level="WARNING"
        )
        line = {"symbols": group, "run_id": result.run_id, "success": result.success}
        print(json.dumps({**line, "started": started, "ended": time.time()}), flush=True)
"""


@dataclass
class Measured:
    """What one store's run of the benchmark found."""

    store: str
    minutes: int
    beats: int = 0  # heartbeat runs for the measured minutes (one per minute when all is well)
    beats_ok: int = 0
    backfill_runs: int = 0
    backfill_ok: int = 0
    other_failures: list[str] = field(default_factory=list)  # failed runs other than backfills, why
    lock_errors: int = 0
    lock_examples: list[str] = field(default_factory=list)
    expected: int = 0
    lost: int = 0
    wrong: int = 0
    extra: int = 0
    latency_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)  # each beat's write (`beat_write_s`)
    launch_s: list[float] = field(default_factory=list)  # each beat's run created -> started
    backfill_s: list[float] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--minutes", type=int, default=5, help="measured beats (and backfilling)")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--backfills", type=int, default=4, help="backfill processes")
    parser.add_argument("--symbols-per-backfill", type=int, default=5, help="adjacent symbols per run")
    parser.add_argument("--buffer", type=float, default=5.0, help="HEARTBEAT_BUFFER_SECONDS")
    parser.add_argument("--weight-limit", type=int, default=60_000, help="the sandbox's declared budget")
    parser.add_argument(
        "--keep", action="store_true", help="keep each store's work folder (its path printed)"
    )
    parser.add_argument(
        "--instance-in-files",
        action="store_true",
        help="keep the Dagster instance in files for the PostgreSQL run too: only the store differs",
    )
    args = parser.parse_args()
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    found = [one_store(kind, args) for kind in stores]
    print_table(found, args)


def one_store(kind: str, args: argparse.Namespace) -> Measured:
    """The whole benchmark on one store, in a fresh work folder (removed after, unless `--keep`)."""
    work = Path(tempfile.mkdtemp(prefix=f"tradebeat-concurrency-{kind}-"))
    home = work / "home"
    home.mkdir()
    symbols = [f"S{i:03d}/USDT" for i in range(args.symbols)]
    now = int(time.time() * 1000)
    anchor = now - now % DAY_MS - 30 * DAY_MS  # as `tradebeat sandbox --replay`: 30 days of history
    sandbox = Sandbox(replay_markets(anchor, args.symbols), Clock(), weight_limit=args.weight_limit)
    name = "SQLite" if kind == "sqlite" else "PG, files" if args.instance_in_files else "PostgreSQL"
    measured = Measured(name, args.minutes)
    with contextlib.ExitStack() as stack:
        env = {
            **{
                k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("DAGSTER_PG_")
            },
            "DAGSTER_HOME": str(home),
            "DB_PATH": str(work / "candles.sqlite"),
            "TRADEBEAT_ENV_FILE": str(work / "none.env"),
            "HEARTBEAT_BUFFER_SECONDS": str(args.buffer),
            "BACKFILL_MINUTES": "10",
            "LOG_LEVEL": "WARNING",
            "LOG_DIR": str(work / "logs"),
        }
        if kind == "postgres":
            server = stack.enter_context(running_cluster(durable=True, prefix="tradebeat-pg-bench-"))
            if not args.instance_in_files:
                instance_db = stack.enter_context(fresh_database(server, "dagster"))
                env |= deployment_instance(home, server, instance_db)
            env["DATABASE_URL"] = stack.enter_context(fresh_database(server, "store"))
        if kind == "sqlite" or args.instance_in_files:
            shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)
        url = stack.enter_context(SandboxServer(sandbox)).url
        env |= {"BINANCE_API_URL": url, "BINANCE_ARCHIVE_URL": url}
        os.environ.clear()
        os.environ.update(env)
        print(f"{measured.store}: work folder {work}", flush=True)
        assert cli.main(["symbols", "add", *symbols]) == 0
        first_beat, last_beat, lines = beat_and_backfill(env, symbols, args, work)
        measure(measured, env, symbols, sandbox, first_beat, last_beat, lines, work)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return measured


def beat_and_backfill(
    env: dict[str, str], symbols: list[str], args: argparse.Namespace, work: Path
) -> tuple[int, int, list[dict[str, object]]]:
    """Run the daemon and the backfill processes; (first, last measured beat, the backfills' runs)."""
    home = Path(env["DAGSTER_HOME"])
    with daemon_running(env, home):
        started = int(time.time() * 1000)
        # The scheduler starts with the tick after it comes up; measure from the second one on.
        first_beat = started - started % MIN + 2 * MIN
        last_beat = first_beat + (args.minutes - 1) * MIN
        print(
            f"  {len(symbols)} symbols beating, buffer {args.buffer:g}s; beats {iso_utc(first_beat)}.."
            f"{iso_utc(last_beat)}; {args.backfills} backfill processes from the first one on",
            flush=True,
        )
        time.sleep(max(0.0, first_beat / 1000 - time.time()))
        this_month = month_of(first_beat)
        months = (previous_month(this_month), this_month)
        until = (last_beat + MIN) / 1000  # no backfill starts after the last measured beat closed
        procs = [
            start_backfill(env, groups, months, until, work / f"backfill-{i}.err")
            for i, groups in enumerate(backfill_groups(symbols, args.backfills, args.symbols_per_backfill))
        ]
        lines: list[dict[str, object]] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=3600)
            lines += [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        settle = last_beat + MIN  # one more beat stores whatever a failed one left
        deadline = (settle + 2 * MIN) / 1000 + 180
        while time.time() < deadline and not beat_finished(settle):
            time.sleep(2)
    return first_beat, last_beat, lines


@contextlib.contextmanager
def daemon_running(env: dict[str, str], home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` over the project's workspace, stopped (SIGTERM, then waited for) after."""
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
    try:
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def previous_month(month: date) -> date:
    return date(month.year - 1, 12, 1) if month.month == 1 else date(month.year, month.month - 1, 1)


def backfill_groups(symbols: list[str], processes: int, per_run: int) -> list[list[list[str]]]:
    """Each process's share of the symbols (a contiguous block), cut into runs of adjacent ones."""
    share = -(-len(symbols) // processes)
    blocks = [symbols[i * share : (i + 1) * share] for i in range(processes)]
    return [[block[j : j + per_run] for j in range(0, len(block), per_run)] for block in blocks if block]


def start_backfill(
    env: dict[str, str], groups: list[list[str]], months: tuple[date, date], until: float, err: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", BACKFILL, json.dumps(groups), months[0].isoformat(), months[1].isoformat()]
    with err.open("wb") as errors:
        return subprocess.Popen([*argv, str(until)], env=env, stdout=subprocess.PIPE, stderr=errors)


def beat_finished(minute: int) -> bool:
    """Whether the heartbeat run of `minute` (or a later one) has ended."""
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "heartbeat"}))
    return any(beat_minute_of(r.dagster_run.tags) >= minute and r.dagster_run.is_finished for r in runs)


def measure(
    m: Measured,
    env: dict[str, str],
    symbols: list[str],
    sandbox: Sandbox,
    first_beat: int,
    last_beat: int,
    lines: list[dict[str, object]],
    work: Path,
) -> None:
    """Fill `m` from the instance, the logs and the store compared with the sandbox."""
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        for record in records:
            run = record.dagster_run
            kind = run.tags.get("tradebeat/kind")
            failed = run.status == dg.DagsterRunStatus.FAILURE
            if kind == "heartbeat" and first_beat <= beat_minute_of(run.tags) <= last_beat:
                m.beats += 1
                m.beats_ok += run.status == dg.DagsterRunStatus.SUCCESS
                latency, written = beat_latency(instance, run.run_id), beat_write_s(instance, run.run_id)
                if latency is not None:
                    m.latency_s.append(latency)
                if written is not None:
                    m.write_s.append(written)
            elif failed and kind != "backfill":
                m.other_failures.append(
                    f"{kind} run {run.run_id[:8]} ({run.tags.get('dagster/partition', '')}): "
                    + failure_text(instance, run.run_id)
                )
            if (
                kind == "heartbeat"
                and first_beat <= beat_minute_of(run.tags) <= last_beat
                and record.start_time
            ):
                m.launch_s.append(record.start_time - record.create_timestamp.timestamp())
            for text in run_texts(instance, run.run_id):
                count_lock_error(m, f"run {run.run_id[:8]} ({kind})", text)
    for line in lines:
        m.backfill_runs += 1
        m.backfill_ok += bool(line["success"])
        m.backfill_s.append(float(str(line["ended"])) - float(str(line["started"])))
    for path in [*(work / "logs").glob("*.log*"), *work.glob("backfill-*.err")]:
        for text in path.read_text(errors="replace").splitlines():
            count_lock_error(m, path.name, text)
    backfilled = {s for line in lines if line["success"] for s in line["symbols"]}  # type: ignore[attr-defined]
    compare_with_sandbox(m, env, symbols, sandbox, backfilled, last_beat)


def beat_latency(instance: dg.DagsterInstance, run_id: str) -> float | None:
    """The beat's own close -> commit seconds, from its materialization's metadata."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        value = None if materialization is None else materialization.metadata.get("close_to_commit_s")
        if value is not None:
            return float(value.value)  # type: ignore[arg-type]
    return None


def beat_write_s(instance: dg.DagsterInstance, run_id: str) -> float | None:
    """Seconds from the beat's fetched batch (its step output) to its first materialization: the
    IO manager's write, waits for locks held by other writers included, and its gap reports."""
    times: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        kind = entry.dagster_event.event_type_value if entry.dagster_event else None
        if kind in ("STEP_OUTPUT", "ASSET_MATERIALIZATION") and kind not in times:
            times[kind] = entry.timestamp
    if len(times) < 2:
        return None
    return times["ASSET_MATERIALIZATION"] - times["STEP_OUTPUT"]


def failure_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first failure message of a run's event log, shortened."""
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE"):
            return f"{entry.user_message} {event.event_specific_data}"[:300]
    return "no failure event"


def run_texts(instance: dg.DagsterInstance, run_id: str) -> Iterator[str]:
    """Every message of a run's event log, failures' error text included."""
    for entry in instance.all_logs(run_id):
        yield entry.user_message or ""
        event = entry.dagster_event
        if event is not None and event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE"):
            yield str(event.event_specific_data)


def count_lock_error(m: Measured, where: str, text: str) -> None:
    lowered = text.lower()
    if any(word in lowered for word in LOCK_WORDS):
        m.lock_errors += 1
        if len(m.lock_examples) < 5:
            m.lock_examples.append(f"{where}: {text.strip()[:200]}")


def compare_with_sandbox(
    m: Measured,
    env: dict[str, str],
    symbols: list[str],
    sandbox: Sandbox,
    backfilled: set[str],
    last_beat: int,
) -> None:
    """Stored candles against the sandbox's, minute by minute and bit by bit."""
    this_month = month_of(last_beat)
    current = (month_window(this_month)[0], last_beat + MIN)
    previous = month_window(previous_month(this_month))
    with open_store(Path(env["DB_PATH"]), database_url=env.get("DATABASE_URL")) as store:
        for symbol in symbols:
            market = sandbox.markets[symbol.replace("/", "")]
            for lo, hi, wanted in ((*current, True), (*previous, symbol in backfilled)):
                served = (
                    parse_klines(market.series.klines(lo, hi - 1, 10**9), where=symbol)[0] if wanted else None
                )
                stored = store.read_candles(symbol, lo, hi)
                expected = served if served is not None else stored.iloc[:0]
                m.expected += len(expected)
                both = expected.merge(
                    stored, on="timestamp", how="outer", suffixes=("", "_stored"), indicator=True
                )
                m.lost += int((both["_merge"] == "left_only").sum())
                m.extra += int((both["_merge"] == "right_only").sum())
                matched = both[both["_merge"] == "both"]
                differs = np.zeros(len(matched), dtype=bool)
                for c in CANDLE_COLUMNS[1:]:
                    new, old = matched[c].astype("float64"), matched[f"{c}_stored"].astype("float64")
                    differs |= ~((new == old) | (new.isna() & old.isna())).to_numpy()
                m.wrong += int(differs.sum())


def print_table(found: list[Measured], args: argparse.Namespace) -> None:
    print(
        f"\n{args.symbols} symbols beating, {args.backfills} backfill processes "
        f"({args.symbols_per_backfill} adjacent symbols x previous + current month per run), "
        f"{args.minutes} measured minutes"
    )
    header = (
        f"{'store':<11} {'beats ok':>9} {'beat runs':>10} {'backfills ok':>13} {'backfill s p50':>15} "
        f"{'lock errors':>12} {'candles checked':>16} {'lost':>5} {'wrong':>6} {'extra':>6} "
        f"{'close->commit p50/p95/max s':>28} {'beat queued p50/max s':>22} {'beat write p50/max s':>21}"
    )
    print(header)
    for m in found:
        lat = np.array(m.latency_s) if m.latency_s else np.array([np.nan])
        runs = f"{m.backfill_ok}/{m.backfill_runs}"
        spans = f"{np.median(m.backfill_s):.1f}" if m.backfill_s else "-"
        latency = f"{np.percentile(lat, 50):.1f}/{np.percentile(lat, 95):.1f}/{np.max(lat):.1f}"
        wrote = np.array(m.write_s) if m.write_s else np.array([np.nan])
        write = f"{np.percentile(wrote, 50):.1f}/{np.max(wrote):.1f}"
        launched = np.array(m.launch_s) if m.launch_s else np.array([np.nan])
        queued = f"{np.percentile(launched, 50):.1f}/{np.max(launched):.1f}"
        print(
            f"{m.store:<11} {f'{m.beats_ok}/{m.minutes}':>9} {m.beats:>10} {runs:>13} {spans:>15} "
            f"{m.lock_errors:>12} {m.expected:>16,} {m.lost:>5} {m.wrong:>6} {m.extra:>6} {latency:>28} "
            f"{queued:>22} {write:>21}"
        )
    for m in found:
        for failure in m.other_failures:
            print(f"{m.store}: failed: {failure}")
        for example in m.lock_examples:
            print(f"{m.store}: {example}")


if __name__ == "__main__":
    main()
