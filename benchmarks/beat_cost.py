"""What a heartbeat costs as its month fills up: the same beat on the first and on the last day of a
month, at K symbols, in this process (real ccxt over HTTP to an in-process sandbox, a real SQLite
store, a real Dagster instance), the exchange's clock set by hand.

    uv run python benchmarks/beat_cost.py [--symbols 10 100] [--beats 5]

For each case the month is first loaded up to the beat (one backfill run of the current month), then
`--beats` consecutive beats run; it prints each beat's CPU seconds and wall seconds (the run from
launch to its last check: no waiting, the local clock is long past the beat's minute) and the
candles the month holds. A beat's cost must not grow with the month: it fetches, writes and judges
only its own minutes. The sandbox serves from a thread of this process, so its CPU is counted too
(the same few requests per beat in both cases).
"""

import argparse
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tradebeat_pipeline.cli import main as cli
from tradebeat_pipeline.cli.runs import instance, materialize_beat, materialize_history
from tradebeat_pipeline.sandbox.market_data import historical_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline.timewindows import MINUTE_MS, month_of, parse_instant

CASES = {"first day": "2025-12-01T06:00:00Z", "last day": "2025-12-31T23:50:00Z"}


def run_case(symbols: int, first_beat: str, beats: int) -> tuple[list[float], list[float], int]:
    work = Path(tempfile.mkdtemp(prefix="tradebeat-beat-cost-"))
    (work / "home").mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", work / "home")
    minute = parse_instant(first_beat)
    sandbox = Sandbox(historical_markets(symbols), Clock(minute), weight_limit=10_000_000)
    names = [f"S{i:03d}/USDT" for i in range(symbols)]
    with SandboxServer(sandbox) as server:
        os.environ.update(
            DAGSTER_HOME=str(work / "home"),
            DB_PATH=str(work / "beat.sqlite"),
            BINANCE_API_URL=server.url,
            BINANCE_ARCHIVE_URL=server.url,
            TRADEBEAT_ENV_FILE=str(work / "none.env"),
            LOG_DIR=str(work / "logs"),
            LOG_LEVEL="WARNING",
            RATE_BUDGET_SHARE="1",
        )
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(["symbols", "add", *names]) == 0
        month = month_of(minute)
        cpu, wall = [], []
        with instance() as dagster:
            assert materialize_history(dagster, names, month, month, log_level="WARNING").success
            for i in range(beats):
                beat = minute + i * MINUTE_MS
                sandbox.clock.fixed_ms = beat + MINUTE_MS + 7_000  # 7 s after the minute closed
                c, w = time.process_time(), time.perf_counter()
                assert materialize_beat(dagster, names, month, month, beat).success
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
        with open_store(work / "beat.sqlite") as store:
            held = sum(store.count_candles(n) for n in names)
    shutil.rmtree(work)
    return cpu, wall, held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--beats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'symbols':>7} {'beat on':<10} {'month holds':>12} {'CPU s/beat (median)':>20} "
        f"{'wall s/beat (median)':>21}"
    )
    for symbols in args.symbols:
        for label, first_beat in CASES.items():
            cpu, wall, held = run_case(symbols, first_beat, args.beats)
            print(
                f"{symbols:>7} {label:<10} {held:>12,} {statistics.median(cpu):>20.2f} "
                f"{statistics.median(wall):>21.2f}   (each: {', '.join(f'{x:.2f}' for x in wall)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
