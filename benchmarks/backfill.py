"""Backfill throughput: the Dagster pipeline against a bare ccxt loop, same sandbox, same schema.

    uv run python benchmarks/backfill.py [--days 30 365] [--share 1.0]

The sandbox exchange runs in its own process (as a real exchange would be another machine) and
declares a large REQUEST_WEIGHT budget; both contenders throttle to `--share` of it. Candles are the
sandbox's synthetic SYN/USDT market, which has every minute since 2017-08-17.
"""

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import ccxt.async_support as ccxt
import dagster as dg

from tradebeat_pipeline import cli
from tradebeat_pipeline.exchange.binance import parse_klines
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline.timewindows import day_window

SYMBOL, MARKET_ID = "SYN/USDT", "SYNUSDT"
END_DAY = date(2025, 12, 31)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sandbox(port: int, weight_limit: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradebeat_pipeline.cli",
            "sandbox",
            "--port",
            str(port),
            "--weight-limit",
            str(weight_limit),
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


async def bare_loop(url: str, db: Path, start: date, end: date, share: float, weight_limit: int) -> int:
    """ccxt paging sequentially (since = last open + 1 min) into the same schema, no Dagster."""
    exchange = ccxt.binance({"enableRateLimit": True, "options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"] = {
        k: v.replace("https://api.binance.com", url) for k, v in exchange.urls["api"].items()
    }
    exchange.rateLimit = 60_000 / (weight_limit * share / 5)
    exchange.tokenBucket = None
    exchange.init_rest_rate_limiter()
    since, stop = day_window(start)[0], day_window(end)[1]
    total = 0
    with open_store(db) as store:
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
    os.environ.update(env)
    assert cli.main(["symbols", "add", SYMBOL]) == 0
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["backfill", SYMBOL, "--start", start.isoformat(), "--end", end.isoformat()]) == 0
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
        "fetch": first["STEP_OUTPUT"] - first["STEP_START"],
        "upsert": first["ASSET_MATERIALIZATION"] - first["STEP_OUTPUT"],
        "events": first["HANDLED_OUTPUT"] - first["ASSET_MATERIALIZATION"],
    }


def count(db: Path) -> int:
    with open_store(db) as store:
        return store.count_candles(SYMBOL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, nargs="+", default=[30, 365])
    parser.add_argument("--share", type=float, default=1.0, help="share of the sandbox's weight budget")
    parser.add_argument("--weight-limit", type=int, default=1_000_000)
    args = parser.parse_args()

    port = free_port()
    sandbox = start_sandbox(port, args.weight_limit)
    url = f"http://127.0.0.1:{port}"
    print(f"sandbox {url}, weight limit {args.weight_limit}/min, budget share {args.share}")
    print(
        f"{'days':>5} {'candles':>9} {'bare s':>8} {'bare c/s':>10} {'pipeline s':>11} "
        f"{'pipeline c/s':>13} {'ratio':>6}"
    )
    breakdowns: list[str] = []
    try:
        for days in args.days:
            start, end = END_DAY - timedelta(days=days - 1), END_DAY
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                t = time.perf_counter()
                bare_n = asyncio.run(
                    bare_loop(url, work / "bare.sqlite", start, end, args.share, args.weight_limit)
                )
                bare_s = time.perf_counter() - t

                (work / "home").mkdir()
                shutil.copy(Path(cli.__file__).parent.parent / "dagster_home" / "dagster.yaml", work / "home")
                env = {
                    **os.environ,
                    "DAGSTER_HOME": str(work / "home"),
                    "DB_PATH": str(work / "p.sqlite"),
                    "BINANCE_API_URL": url,
                    "RATE_BUDGET_SHARE": str(args.share),
                    "TRADEBEAT_ENV_FILE": str(work / "none.env"),
                    "LOG_LEVEL": "WARNING",
                }
                home_before = dir_bytes(work / "home")
                pipe_s = pipeline(env, start, end)
                pipe_n = count(work / "p.sqlite")
                assert pipe_n == bare_n == days * 1440, (pipe_n, bare_n)
                phases = run_phases()
                growth = dir_bytes(work / "home") - home_before
            print(
                f"{days:>5} {pipe_n:>9} {bare_s:>8.1f} {bare_n / bare_s:>10,.0f} {pipe_s:>11.1f} "
                f"{pipe_n / pipe_s:>13,.0f} {pipe_s / bare_s:>6.2f}"
            )
            bookkeeping = phases["planning"] + phases["events"]
            breakdowns.append(
                f"{days:>5} days: Dagster planning {phases['planning']:.1f}s, fetch {phases['fetch']:.1f}s, "
                f"store upsert {phases['upsert']:.1f}s, Dagster materialization events "
                f"{phases['events']:.1f}s; Dagster bookkeeping {bookkeeping / days * 1000:.0f} ms and "
                f"{growth / days / 1024:.1f} KB of instance storage per partition"
            )
        print("\n".join(breakdowns))
    finally:
        sandbox.terminate()
        sandbox.wait()


if __name__ == "__main__":
    main()
