"""The reliability table: each fault, what was injected, candles expected / stored / duplicated.

    uv run python benchmarks/reliability.py [--beats 200 --symbols 10] [--table-only | --storage-only]

Drives the real system (CLI backfills as one Dagster run each, real ccxt over HTTP to the sandbox,
a real SQLite file, a real Dagster instance in a temporary home), then measures the instance's growth
per heartbeat over simulated beats (materialized in a loop, the beat minute as a fake clock) and what
the retention job brings it back to.
"""

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from tradebeat_pipeline.cli import main as cli
from tradebeat_pipeline.cli.runs import materialize_beat
from tradebeat_pipeline.definitions import defs
from tradebeat_pipeline.defs.partitions import KIND_TAG
from tradebeat_pipeline.sandbox.market_data import historical_markets
from tradebeat_pipeline.sandbox.server import CHAOS_KINDS, Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.timewindows import utc_day

JAN1 = 1_577_836_800_000
MIN = 60_000
JANUARY = ["--start", "2020-01", "--end", "2020-01"]  # BTC/USDT: the first 3 days archived
MONTH = 31 * 1440


# One heartbeat run for a symbol's 2020-01-02, in a process of its own: argv symbol, beat minute (ms).
BEAT = (
    "import sys; from datetime import date\n"
    "from tradebeat_pipeline.cli.runs import instance, materialize_beat\n"
    "d = date(2020, 1, 1)\n"
    "with instance() as i:\n"
    "    r = materialize_beat(i, [sys.argv[1]], d, d, int(sys.argv[2]))\n"
    "sys.exit(0 if r.success else 1)\n"
)


def counts(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT symbol_id || '-' || timestamp) FROM price_data"
        ).fetchone()
    conn.close()
    return int(total), int(total) - int(distinct)


class Bench:
    def __init__(self, work: Path, server: SandboxServer) -> None:
        self.work, self.server, self.sandbox = work, server, server.sandbox
        self.n = 0

    def fresh(self) -> Path:
        """A new database and Dagster home, BTC/USDT registered; returns DB_PATH."""
        self.n += 1
        home = self.work / f"home{self.n}"
        home.mkdir()
        (home / "dagster.yaml").write_text((PROJECT_DIR / "dagster_home" / "dagster.yaml").read_text())
        os.environ.update(DAGSTER_HOME=str(home), DB_PATH=str(self.work / f"db{self.n}.sqlite"))
        self.sandbox.reset()
        assert cli(["symbols", "add", "BTC/USDT"]) == 0
        return Path(os.environ["DB_PATH"])

    def row(self, fault: str, injected: str, code: int, db: Path, expected: int = MONTH) -> None:
        stored, duplicated = counts(db)
        served = sum(self.sandbox.faulted.values())
        errors = "none" if code == 0 else f"exit {code}"
        print(
            f"| {fault} | {injected} | {served} | {expected} | {stored} | {duplicated} | "
            f"{expected - stored} | {errors} |",
            flush=True,
        )


def exchange_faults(b: Bench) -> None:
    for kinds, label in [(CHAOS_KINDS, "all kinds mixed")] + [((k,), k) for k in CHAOS_KINDS]:
        db = b.fresh()
        b.sandbox.slow_s = 1.5
        b.sandbox.chaos(0.10, kinds, seed=45)
        code = cli(["backfill", "BTC/USDT", *JANUARY])
        b.row(f"exchange: {label}", "10 % of klines requests", code, db)


def crash(b: Bench) -> None:
    db = b.fresh()
    b.sandbox.slow_s = 60
    b.sandbox.inject("slow", count=None, window=(JAN1 + 2000 * MIN, JAN1 + 2001 * MIN))
    run = subprocess.Popen(  # our own argv
        [sys.executable, "-m", "tradebeat_pipeline.cli", "backfill", "BTC/USDT", *JANUARY],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while b.sandbox.faulted["slow"] < 1:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    after_kill, _ = counts(db)
    b.sandbox.reset()
    code = cli(["backfill", "BTC/USDT", *JANUARY])
    b.row(f"kill -9 mid-backfill, rerun ({after_kill} rows after the kill)", "SIGKILL during fetch", code, db)


def concurrency(b: Bench) -> None:
    db = b.fresh()
    writers = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # our own argv
        for argv in (
            [sys.executable, "-m", "tradebeat_pipeline.cli", "backfill", "BTC/USDT", *JANUARY],
            [sys.executable, "-c", BEAT, "BTC/USDT", str(JAN1 + 2 * 1440 * MIN - MIN)],
        )
    ]
    outs = [w.communicate()[0] for w in writers]
    locked = sum(o.count("locked") for o in outs)
    code = max(w.returncode for w in writers)
    b.row(f"heartbeat + backfill, same day at once ({locked} 'locked')", "two writer processes", code, db)


def rate_budget(b: Bench) -> None:
    """Two backfill runs and a heartbeat run in three processes against an exchange declaring 1,000
    weight a minute: together they must stay within our half of it."""
    db = b.fresh()
    limit_before, b.sandbox.weight_limit = b.sandbox.weight_limit, 1000
    assert cli(["symbols", "add", "S001/USDT", "S002/USDT", "S003/USDT"]) == 0
    b.sandbox.reset()
    months = ["--start", "2020-01", "--end", "2020-03"]  # 91 days: 132 klines pages each
    backfills = [
        subprocess.Popen(  # our own argv
            [sys.executable, "-m", "tradebeat_pipeline.cli", "backfill", symbol, *months],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for symbol in ("S001/USDT", "S002/USDT")
    ]
    while sum(w for _, w in b.sandbox.weight_log) < 380:  # the backfills have filled their lane
        time.sleep(0.05)
    beat = subprocess.Popen(  # our own argv
        [sys.executable, "-c", BEAT, "S003/USDT", str(JAN1 + 2 * 1440 * MIN - MIN)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    code = max(p.wait() for p in [*backfills, beat])
    clock_minute, sliding = b.sandbox.busiest_minutes()
    b.sandbox.weight_limit = limit_before
    # The beat stores its month up to its minute (nothing was stored before): January 1-2.
    expected = 2 * 91 * 1440 + 2 * 1440
    stored, duplicated = counts(db)
    served = sum(w for _, w in b.sandbox.weight_log)
    print(
        f"| rate budget: 2 backfills + a heartbeat, 3 processes (exchange saw {served} weight; busiest "
        f"60 s {sliding}, busiest clock minute {clock_minute}, 429s {b.sandbox.rejected_for_weight}) "
        f"| exchange declares 1,000/min, our share 500 | 0 | {expected} | {stored} | {duplicated} | "
        f"{expected - stored} | {'none' if code == 0 else f'exit {code}'} |",
        flush=True,
    )


def instance_size(home: Path) -> int:
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file())


def beat(instance: dg.DagsterInstance, names: list[str], minute: int) -> None:
    """One heartbeat run over every symbol for `minute` (the fake clock), in this process."""
    day = utc_day(minute)
    assert materialize_beat(instance, names, day, day, minute).success


def storage(b: Bench, beats: int, symbols: int) -> None:
    b.fresh()
    names = [f"S{i:03d}/USDT" for i in range(symbols)]
    assert cli(["symbols", "add", *names]) == 0
    home = Path(os.environ["DAGSTER_HOME"])
    start = JAN1 + 365 * 1440 * MIN  # 2020-12-31, synthetic markets have history there
    sizes = []
    with dg.DagsterInstance.get() as instance:
        for i in range(beats):
            beat(instance, names, start + i * MIN)
            sizes.append(instance_size(home))
        before = instance_size(home)
        os.environ["RUN_RETENTION_DAYS"] = "0"
        retention = defs.resolve_job_def("retention_job")
        assert retention.execute_in_process(instance=instance).success
        after = instance_size(home)
        # The bound: more beats, retention again. SQLite reuses the pages freed by deleted runs.
        for i in range(beats, beats + 50):
            beat(instance, names, start + i * MIN)
        assert retention.execute_in_process(instance=instance).success
        again = instance_size(home)
        kept = len(instance.get_run_records(filters=dg.RunsFilter(tags={KIND_TAG: "heartbeat"})))
    growth = (sizes[-1] - sizes[9]) / (beats - 10)
    print(f"\nDagster instance, {beats} beats x {symbols} symbols (one run per beat):")
    print(f"  growth per beat {growth / 1024:.1f} KB; {before / 1e6:.1f} MB after {beats} beats")
    print(f"  retention job (keep each month's newest beat): {after / 1e6:.1f} MB")
    print(f"  50 more beats, retention again: {again / 1e6:.1f} MB ({kept} heartbeat run(s) kept)")
    print(
        f"  without retention: {growth * 1440 * 30 / 1e9:.2f} GB per 30 days, "
        f"{growth * 1440 * 365 / 1e9:.1f} GB per year"
    )
    print(
        f"  with RUN_RETENTION_DAYS=2: at most ~{2 * 1440 * growth / 1e6:.0f} MB of recent beats "
        f"(+ the instance's fixed ~{after / 1e6:.0f} MB), plus one kept run per day: "
        f"{365 * growth / 1e6:.0f} MB per year for {symbols} symbols = "
        f"{365 * growth / 1e6 / symbols:.1f} MB per symbol-year"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--beats", type=int, default=200)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--storage-only", action="store_true", help="skip the fault table")
    parser.add_argument("--table-only", action="store_true", help="skip the instance storage measurement")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        SandboxServer(
            Sandbox(historical_markets(synthetic=args.symbols), Clock(JAN1 + 2000 * 1440 * MIN))
        ) as server,
    ):
        os.environ.update(
            BINANCE_API_URL=server.url,
            BINANCE_ARCHIVE_URL="off",  # the REST path under faults is what this measures
            TRADEBEAT_ENV_FILE=str(Path(tmp) / "none.env"),
            EXCHANGE_RETRY_BACKOFF_SECONDS="0.05",
            EXCHANGE_TIMEOUT_SECONDS="1",
            LOG_DIR=str(Path(tmp) / "logs"),
        )
        b = Bench(Path(tmp), server)
        if not args.storage_only:
            print("| fault | injected | faults served | expected | stored | duplicated | lost | errors |")
            print("|---|---|---|---|---|---|---|---|")
            exchange_faults(b)
            crash(b)
            concurrency(b)
            rate_budget(b)
        if not args.table_only:
            storage(b, args.beats, args.symbols)


if __name__ == "__main__":
    main()
