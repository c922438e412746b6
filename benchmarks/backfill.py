"""Backfill throughput: the Dagster pipeline against a bare ccxt loop, same sandbox, same schema.

    uv run python benchmarks/backfill.py [--months 1 12] [--share 1.0] [--no-bookkeeping]
    uv run python benchmarks/backfill.py --full-history   # SYN/USDT 2017-08-17..2025-12-31
    uv run python benchmarks/backfill.py --symbols 20     # 20 symbols x 2 years as one run
    uv run python benchmarks/backfill.py --store postgres [--full-history]   # SQLite vs PostgreSQL

The sandbox exchange runs in its own process (as a real exchange would be another machine) and
declares a large REQUEST_WEIGHT budget; both contenders throttle to `--share` of it. Candles are the
sandbox's synthetic SYN/USDT market, which has every minute since 2017-08-17.

`--full-history` loads SYN/USDT's whole history three ways in one run: the pipeline with Binance's
archive files (checksum-verified monthly zips from the sandbox's archive host), the pipeline from
the REST API alone, and the bare ccxt loop; it prints the request weight each spent, counted at the
sandbox. The sandbox builds its archive files before any clock starts (a real archive serves static
files) and keeps them in a folder under the system's temporary directory for the next run.

`--store postgres` runs every pipeline contender twice in the same run, into a SQLite file and into a
PostgreSQL database (DATABASE_URL) on a throwaway server started from Debian's binaries with its
durability on (`pg_cluster.running_cluster(durable=True)`, the tests' own start-up); the Dagster
instance stays on SQLite in both, so only the candle store differs. The bare loop writes SQLite.
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import ccxt.async_support as ccxt
import dagster as dg

from tradebeat_pipeline import cli
from tradebeat_pipeline.exchange.binance import parse_klines
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.store import CandleStore, open_store
from tradebeat_pipeline.timewindows import month_key, month_window, months_between
from tradebeat_pipeline_tests.pg_cluster import PostgresServer, fresh_database, running_cluster

SYMBOL, MARKET_ID = "SYN/USDT", "SYNUSDT"
LAST_MONTH = date(2025, 12, 1)


@dataclass(frozen=True)
class Target:
    """The candle store a contender writes: a SQLite file, or a PostgreSQL database when `url`."""

    name: str
    db_path: Path
    url: str | None = None

    def env(self) -> dict[str, str]:
        return {"DB_PATH": str(self.db_path), **({"DATABASE_URL": self.url} if self.url else {})}

    def open(self) -> CandleStore:
        return open_store(self.db_path, database_url=self.url)


@contextmanager
def targets(work: Path, server: PostgresServer | None) -> Iterator[list[Target]]:
    """A fresh SQLite file, and a fresh PostgreSQL database when a server is given."""
    found = [Target("SQLite", work / "p.sqlite")]
    if server is None:
        yield found
        return
    with fresh_database(server, "bench") as url:
        yield [*found, Target("PostgreSQL", work / "unused.sqlite", url)]


def first_of(months: int) -> date:
    """The first of `months` months ending with LAST_MONTH."""
    year, month = divmod(LAST_MONTH.year * 12 + LAST_MONTH.month - months, 12)
    return date(year, month + 1, 1)


def bookkeeping(partitions_def: dg.PartitionsDefinition, first: str, last: str) -> tuple[int, float]:
    """Dagster's own cost of one single-run backfill over first..last of an asset that does nothing:
    (partitions, seconds of planning and materialization events), from the run's event log."""
    symbols = dg.StaticPartitionsDefinition(["X"])
    # Dimensions are ordered by name: "period" before "symbol", as the keys "2025-01|X" say.
    parts = dg.MultiPartitionsDefinition({"period": partitions_def, "symbol": symbols})

    @dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
    def nothing(context: dg.AssetExecutionContext) -> None:
        return None

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", tmp)
        with dg.instance_for_test(temp_dir=tmp) as instance:
            tags = {
                "dagster/asset_partition_range_start": f"{first}|X",
                "dagster/asset_partition_range_end": f"{last}|X",
            }
            result = dg.materialize([nothing], instance=instance, tags=tags)
            times: dict[str, list[float]] = {}
            for entry in instance.all_logs(result.run_id):
                kind = entry.dagster_event.event_type_value if entry.dagster_event else "log"
                times.setdefault(kind, []).append(entry.timestamp)
    count = len(times["ASSET_MATERIALIZATION"])
    planning = min(times["PIPELINE_START"]) - min(times["ASSET_MATERIALIZATION_PLANNED"])
    events = max(times["ASSET_MATERIALIZATION"]) - min(times["ASSET_MATERIALIZATION"])
    return count, planning + events


def print_bookkeeping() -> None:
    """The same year as 365 day partitions and as 12 month partitions, in this run."""
    days = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2026-01-01")
    months = dg.MonthlyPartitionsDefinition(start_date="2025-01", end_date="2026-01", fmt="%Y-%m")
    print("Dagster's own bookkeeping for one symbol-year backfilled as one run (an asset doing nothing):")
    for name, definition, first, last in (
        ("day", days, "2025-01-01", "2025-12-31"),
        ("month", months, "2025-01", "2025-12"),
    ):
        count, seconds = bookkeeping(definition, first, last)
        whole = 3060 if name == "day" else 102
        print(
            f"  {count:>4} {name} partitions: {seconds:.1f}s, {seconds / count * 1000:.0f} ms per partition; "
            f"a symbol's whole history (2017-08..2025-12, {whole} partitions) ~{seconds / count * whole:.0f}s"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SHELF_DIR = Path(tempfile.gettempdir()) / "tradebeat-benchmark-archives"
HISTORY_START = date(2017, 8, 1)  # SYN/USDT's first candle is 2017-08-17T00:00Z
MULTI_FIRST = date(2024, 1, 1)


def serve_sandbox(port: int, weight_limit: int, synthetic: int) -> None:
    """The child process: the historical sandbox, its clock at 2026-01-05 (so December 2025's monthly
    file is published), its archive files kept on disk."""
    from tradebeat_pipeline.sandbox.market_data import historical_markets
    from tradebeat_pipeline.sandbox.server import Clock, Sandbox, serve_forever

    sandbox = Sandbox(
        historical_markets(synthetic),
        Clock(month_window(date(2026, 1, 1))[0] + 4 * 86_400_000),
        weight_limit=weight_limit,
    )
    sandbox.archives.max_files = 8  # they are read from SHELF_DIR; memory stays small
    sandbox.archives.shelf_dir = SHELF_DIR
    print(f"sandbox on {port}", flush=True)
    asyncio.run(serve_forever(sandbox, "127.0.0.1", port))


def start_sandbox(port: int, weight_limit: int, synthetic: int = 0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--weight-limit",
            str(weight_limit),
            "--synthetic",
            str(synthetic),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "sandbox exchange on ..." once it is about to listen
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise RuntimeError("sandbox did not start")


async def bare_loop(url: str, db: Target, start: date, end: date, share: float, weight_limit: int) -> int:
    """ccxt paging sequentially (since = last open + 1 min) into the same schema, no Dagster."""
    exchange = ccxt.binance({"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"] = {
        k: v.replace("https://api.binance.com", url) for k, v in exchange.urls["api"].items()
    }
    exchange.rateLimit = 60_000 / (weight_limit * share / 5)
    exchange.tokenBucket = None
    exchange.init_rest_rate_limiter()
    since, stop = month_window(start)[0], month_window(end)[1]
    total = 0
    with db.open() as store:
        store.register_symbol(SYMBOL)
        try:
            while since < stop:
                raw = await exchange.publicGetKlines(
                    {
                        "symbol": MARKET_ID,
                        "interval": "1m",
                        "startTime": since,
                        "endTime": stop - 1,
                        "limit": 1000,
                    }
                )
                page, _ = parse_klines(raw, where="bench")
                if page.empty:
                    break
                store.upsert_candles([(SYMBOL, page)])
                total += len(page)
                since = int(page["timestamp"].iloc[-1]) + 60_000
        finally:
            await exchange.close()
    return total


def pipeline(env: dict[str, str], start: date, end: date) -> float:
    """The real `tradebeat backfill` (one Dagster run over the day range), timed after imports as
    the bare loop is."""
    os.environ.pop("DATABASE_URL", None)  # an earlier contender's store is not this one's
    os.environ.update(env)
    assert cli.main(["symbols", "add", SYMBOL]) == 0
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["backfill", SYMBOL, "--start", month_key(start), "--end", month_key(end)]) == 0
    return time.perf_counter() - t


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_phases() -> dict[str, float]:
    """Where the run's time went, from the event log the run wrote in the instance."""
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records(limit=1)
        times: dict[str, list[float]] = {}
        for entry in instance.all_logs(record.dagster_run.run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else "log"
            times.setdefault(kind, []).append(entry.timestamp)
    first = {k: min(v) for k, v in times.items()}
    return {
        "planning": first["PIPELINE_START"] - first["ASSET_MATERIALIZATION_PLANNED"],
        "plan": first["STEP_OUTPUT"] - first["STEP_START"],
        # A backfill's archived months are written as their files arrive: one overlapped phase.
        "fetch_write": first["ASSET_MATERIALIZATION"] - first["STEP_OUTPUT"],
        "events": first["HANDLED_OUTPUT"] - first["ASSET_MATERIALIZATION"],
    }


def count(db: Target) -> int:
    with db.open() as store:
        return store.count_candles(SYMBOL)


def sandbox_stats(url: str) -> dict[str, object]:
    """REST requests and weight, archive downloads, counted by the sandbox itself."""
    with urllib.request.urlopen(f"{url}/sandbox/stats", timeout=30) as answer:
        stats: dict[str, object] = json.load(answer)
    return stats


def prebuild(url: str, files: list[str]) -> float:
    """Ask the sandbox for every archive file once, two at a time (it builds and keeps them)."""
    t = time.perf_counter()

    def get(path: str) -> None:
        with urllib.request.urlopen(f"{url}{path}", timeout=600) as answer:
            answer.read()

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(get, files))
    return time.perf_counter() - t


def monthly_paths(market: str, first: date, last: date) -> list[str]:
    return [
        f"/data/spot/monthly/klines/{market}/1m/{market}-1m-{month_key(m)}.zip{suffix}"
        for m in months_between(first, last)
        for suffix in ("", ".CHECKSUM")
    ]


def pipeline_env(work: Path, url: str, share: float, *, archives: bool, db: Target) -> dict[str, str]:
    home = work / f"home-{db.name}"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)
    inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {
        **inherited,
        **db.env(),
        "DAGSTER_HOME": str(home),
        "BINANCE_API_URL": url,
        "BINANCE_ARCHIVE_URL": url if archives else "off",
        "RATE_BUDGET_SHARE": str(share),
        "TRADEBEAT_ENV_FILE": str(work / "none.env"),
        "LOG_LEVEL": "WARNING",
    }


def weight_spent(url: str, before: dict[str, object]) -> tuple[int, int]:
    """(REST weight, archive downloads) since `before`."""
    after = sandbox_stats(url)
    return (
        int(str(after["weight"])) - int(str(before["weight"])),
        int(str(after["archive_requests"])) - int(str(before["archive_requests"])),
    )


def requests_made(url: str, before: dict[str, object]) -> dict[str, int]:
    """REST requests per endpoint since `before` (the archive months must need no klines page)."""
    after, earlier = sandbox_stats(url)["requests"], before["requests"]
    assert isinstance(after, dict) and isinstance(earlier, dict)
    return {k: int(v) - int(earlier.get(k, 0)) for k, v in after.items() if int(v) > int(earlier.get(k, 0))}


def full_history(
    url: str, share: float, weight_limit: int, *, archives_only: bool = False, server: PostgresServer | None
) -> None:
    """SYN/USDT's whole history: pipeline with archives, pipeline REST only (each into every store),
    bare ccxt loop."""
    built_s = prebuild(url, monthly_paths(MARKET_ID, HISTORY_START, LAST_MONTH))
    print(f"archive files ready in {built_s:.1f}s (built once, then kept in {SHELF_DIR})")
    expected = (month_window(LAST_MONTH)[1] - ms_of(date(2017, 8, 17))) // 60_000
    print(
        f"{'contender':<26} {'store':<10} {'candles':>9} {'seconds':>8} {'candles/s':>10} "
        f"{'REST weight':>12} {'archive GETs':>13}"
    )
    notes: list[str] = []
    contenders = (("pipeline, archives", True), ("pipeline, REST only", False))
    for name, archives in contenders[:1] if archives_only else contenders:
        with tempfile.TemporaryDirectory() as tmp, targets(Path(tmp), server) as stores:
            for db in stores:
                before = sandbox_stats(url)
                env = pipeline_env(Path(tmp), url, share, archives=archives, db=db)
                seconds = pipeline(env, HISTORY_START, LAST_MONTH)
                weight, gets = weight_spent(url, before)
                requests = requests_made(url, before)
                n = count(db)
                assert n == expected, (name, db.name, n, expected)
                phases = run_phases()
                print(
                    f"{name:<26} {db.name:<10} {n:>9} {seconds:>8.1f} {n / seconds:>10,.0f} {weight:>12} "
                    f"{gets:>13}",
                    flush=True,
                )
                notes.append(
                    f"{name}, {db.name}: Dagster planning {phases['planning']:.1f}s, run plan "
                    f"{phases['plan']:.1f}s, fetch + committed write {phases['fetch_write']:.1f}s "
                    f"({n / phases['fetch_write']:,.0f} candles/s), "
                    f"materialization events {phases['events']:.1f}s; REST requests {requests}"
                )
    if archives_only:
        print("\n".join(notes))
        return
    with tempfile.TemporaryDirectory() as tmp:
        before = sandbox_stats(url)
        t = time.perf_counter()
        bare = Target("SQLite", Path(tmp) / "bare.sqlite")
        n = asyncio.run(bare_loop(url, bare, HISTORY_START, LAST_MONTH, share, weight_limit))
        seconds = time.perf_counter() - t
        weight, gets = weight_spent(url, before)
    print(
        f"{'bare ccxt loop (REST)':<26} {'SQLite':<10} {n:>9} {seconds:>8.1f} {n / seconds:>10,.0f} "
        f"{weight:>12} {gets:>13}"
    )
    print("\n".join(notes))


def many_symbols(url: str, share: float, symbols: int) -> None:
    """`symbols` synthetic symbols x 2 years (2024-01..2025-12) as ONE run, from the archives."""
    from tradebeat_pipeline.cli.runs import materialize_history

    names = [f"S{i:03d}/USDT" for i in range(symbols)]
    paths = [p for i in range(symbols) for p in monthly_paths(f"S{i:03d}USDT", MULTI_FIRST, LAST_MONTH)]
    print(f"archive files ready in {prebuild(url, paths):.1f}s (built once, then kept in {SHELF_DIR})")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = Target("SQLite", work / "p.sqlite")
        os.environ.update(pipeline_env(work, url, share, archives=True, db=db))
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["symbols", "add", *names]) == 0
        before = sandbox_stats(url)
        with dg.DagsterInstance.get() as instance:
            t = time.perf_counter()
            result = materialize_history(instance, names, MULTI_FIRST, LAST_MONTH, log_level="WARNING")
            seconds = time.perf_counter() - t
        assert result.success
        weight, gets = weight_spent(url, before)
        with db.open() as store:
            n = sum(store.count_candles(s) for s in names)
        phases = run_phases()
    dagster_s = phases["planning"] + phases["events"]
    print(
        f"{symbols} symbols x {len(months_between(MULTI_FIRST, LAST_MONTH))} months as one run: "
        f"{n} candles in {seconds:.1f}s = {n / seconds:,.0f} candles/s; REST weight {weight}, "
        f"{gets} archive GETs"
    )
    print(
        f"  Dagster planning {phases['planning']:.1f}s + materialization events {phases['events']:.1f}s "
        f"= {dagster_s:.1f}s ({dagster_s / seconds:.0%} of the run); run plan {phases['plan']:.1f}s, "
        f"fetch + committed write {phases['fetch_write']:.1f}s"
    )


def ms_of(day: date) -> int:
    return month_window(day.replace(day=1))[0] + (day.day - 1) * 86_400_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--months", type=int, nargs="+", default=[1, 12])
    parser.add_argument(
        "--no-bookkeeping", action="store_true", help="skip Dagster's per-partition cost, days vs months"
    )
    parser.add_argument("--share", type=float, default=1.0, help="share of the sandbox's weight budget")
    parser.add_argument("--weight-limit", type=int, default=1_000_000)
    parser.add_argument("--full-history", action="store_true", help="SYN/USDT 2017-08-17..2025-12-31")
    parser.add_argument("--archives-only", action="store_true", help="--full-history: the archive case only")
    parser.add_argument("--symbols", type=int, help="this many symbols x 2 years as one run")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="postgres: every pipeline contender into SQLite and into a PostgreSQL server, same run",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the sandbox child process
    parser.add_argument("--synthetic", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_sandbox(args.serve, args.weight_limit, args.synthetic)
        return

    with contextlib.ExitStack() as stack:
        server = None
        if args.store == "postgres":
            server = stack.enter_context(running_cluster(durable=True, prefix="tradebeat-pg-bench-"))
            print(f"PostgreSQL on 127.0.0.1:{server.port} (durable: fsync and synchronous commit on)")
        port = free_port()
        sandbox = start_sandbox(port, args.weight_limit, args.symbols or 0)
        url = f"http://127.0.0.1:{port}"
        print(f"sandbox {url}, weight limit {args.weight_limit}/min, budget share {args.share}")
        try:
            if args.full_history:
                full_history(
                    url, args.share, args.weight_limit, archives_only=args.archives_only, server=server
                )
            if args.symbols:
                many_symbols(url, args.share, args.symbols)
            if not (args.full_history or args.symbols):
                by_months(url, args, server)
        finally:
            sandbox.terminate()
            sandbox.wait()


def by_months(url: str, args: argparse.Namespace, server: PostgresServer | None) -> None:
    """The pipeline (REST only, into each store) against the bare loop over the last N months."""
    print(
        f"{'months':>6} {'store':<10} {'candles':>9} {'bare s':>8} {'bare c/s':>10} {'pipeline s':>11} "
        f"{'pipeline c/s':>13} {'ratio':>6}"
    )
    breakdowns: list[str] = []
    for months in args.months:
        start, end = first_of(months), LAST_MONTH
        with tempfile.TemporaryDirectory() as tmp, targets(Path(tmp), server) as stores:
            work = Path(tmp)
            t = time.perf_counter()
            bare = Target("SQLite", work / "bare.sqlite")
            bare_n = asyncio.run(bare_loop(url, bare, start, end, args.share, args.weight_limit))
            bare_s = time.perf_counter() - t
            for db in stores:
                # REST against REST: the pipeline's own overhead.
                env = pipeline_env(work, url, args.share, archives=False, db=db)
                home = Path(env["DAGSTER_HOME"])
                home_before = dir_bytes(home)
                pipe_s = pipeline(env, start, end)
                pipe_n = count(db)
                days = (month_window(end)[1] - month_window(start)[0]) // 86_400_000
                assert pipe_n == bare_n == days * 1440, (pipe_n, bare_n)
                phases = run_phases()
                growth = dir_bytes(home) - home_before
                print(
                    f"{months:>6} {db.name:<10} {pipe_n:>9} {bare_s:>8.1f} {bare_n / bare_s:>10,.0f} "
                    f"{pipe_s:>11.1f} {pipe_n / pipe_s:>13,.0f} {pipe_s / bare_s:>6.2f}",
                    flush=True,
                )
                bookkeeping = phases["planning"] + phases["events"]
                breakdowns.append(
                    f"{months:>3} months, {db.name}: Dagster planning {phases['planning']:.1f}s, "
                    f"run plan {phases['plan']:.1f}s, "
                    f"fetch + committed write {phases['fetch_write']:.1f}s, Dagster materialization events "
                    f"{phases['events']:.1f}s; Dagster bookkeeping {bookkeeping / months * 1000:.0f} ms and "
                    f"{growth / months / 1024:.1f} KB of instance storage per partition"
                )
    print("\n".join(breakdowns))
    if not args.no_bookkeeping:
        print_bookkeeping()


if __name__ == "__main__":
    main()
