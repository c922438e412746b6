"""What tradebeat costs to start and to keep running: wall and CPU time of the CLI commands, of loading
the definitions and of a heartbeat run up to its first exchange request; then the CPU per minute of a
real `dagster-daemon run` for an empty Dagster project, for tradebeat idle and for tradebeat beating
10 symbols, split by process (daemon, code server, run workers).

    uv run python benchmarks/startup.py                      # 5 runs each, 3 idle minutes per daemon
    uv run python benchmarks/startup.py --runs 3 --skip-idle
    uv run python benchmarks/startup.py --idle-minutes 5 --idle-rounds 2

Everything runs with PYTHONDONTWRITEBYTECODE=1 (as on the production machine), against a temporary
database and Dagster home and the sandbox exchange started in this process. The CLI is run as the
`tradebeat` beside this interpreter. Prints tables; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import idle_cpu

from tradebeat_pipeline.sandbox.market_data import replay_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.timewindows import DAY_MS

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TRADEBEAT = str(BIN / "tradebeat")
BEAT_SYMBOLS = [f"S{i:03d}/USDT" for i in range(10)]

# One heartbeat run, executed in process as the run worker would, for the minute that closed last
# (so it does not wait for a close): what the daemon's launch costs before the first request.
BEAT = """
import time
import dagster as dg
from tradebeat_pipeline.definitions import defs
from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, beat_tags
from tradebeat_pipeline.timewindows import month_of
now_ms = int(time.time() * 1000)
minute_ms = now_ms - now_ms % 60_000 - 60_000
month = month_of(minute_ms)
with dg.DagsterInstance.get() as instance:
    symbols = instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)
    result = defs.resolve_job_def("candles_job").execute_in_process(
        instance=instance,
        tags={**beat_tags((month, symbols[0]), (month, symbols[-1]), minute_ms), "dagster/priority": "10"},
        raise_on_error=False,
    )
raise SystemExit(0 if result.success else 1)
"""


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    rc: int
    extra: float | None = None  # launch -> first exchange request, for the beat


def timed(argv: Sequence[str], env: dict[str, str], cwd: Path) -> Timing:
    """Wall time and CPU (the child and everything it waited for, from wait4's rusage)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Timing(wall, usage.ru_utime + usage.ru_stime, proc.returncode)


def summarize(label: str, timings: list[Timing], expect_rc: set[int] | None = None) -> str:
    walls = [t.wall_s for t in timings]
    cpus = [t.cpu_s for t in timings]
    rcs = sorted({t.rc for t in timings})
    note = "" if expect_rc is None or set(rcs) <= expect_rc else f"  UNEXPECTED exit {rcs}"
    extra = [t.extra for t in timings if t.extra is not None]
    first = f"{statistics.median(extra):7.2f} {min(extra):7.2f}" if extra else f"{'':7} {'':7}"
    return (
        f"{label:<58} {statistics.median(walls):7.2f} {min(walls):7.2f} {max(walls):7.2f} "
        f"{statistics.median(cpus):7.2f} {min(cpus):7.2f}  {first}  {','.join(map(str, rcs))}{note}"
    )


def header() -> str:
    return (
        f"{'command':<58} {'wall p50':>7} {'min':>7} {'max':>7} {'CPU p50':>7} {'min':>7}  "
        f"{'1st req':>7} {'min':>7}  exit"
    )


def beat_once(env: dict[str, str], cwd: Path, sandbox: Sandbox) -> Timing:
    """A heartbeat run in its own process: wall and CPU of the whole run, and launch -> the first
    request the sandbox counted (exchange time, exchange info or klines)."""
    seen = len(sandbox.weight_log)
    launched = time.time()
    timing = timed([sys.executable, "-c", BEAT], env, cwd)
    after = [t for t, _ in sandbox.weight_log[seen:] if t >= launched]
    timing.extra = (min(after) - launched) if after else None
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--idle-minutes", type=float, default=3, help="CPU window per daemon (default 3)")
    parser.add_argument("--idle-rounds", type=int, default=1, help="a, b, c measured this many times")
    parser.add_argument("--settle", type=float, default=60, help="seconds before each CPU window")
    parser.add_argument("--skip-idle", action="store_true", help="only the command timings")
    args = parser.parse_args()

    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    work = Path(tempfile.mkdtemp(prefix="tradebeat-startup-"))
    now = int(time.time() * 1000)
    anchor = now - now % DAY_MS - 30 * DAY_MS  # as `tradebeat sandbox --replay`
    sandbox = Sandbox(replay_markets(anchor, len(BEAT_SYMBOLS)), Clock())
    server = SandboxServer(sandbox).start()
    try:
        env = home_env(work / "cli", server.url)
        cwd = work / "cli"
        setup = timed([TRADEBEAT, "symbols", "add", "BTC/USDT"], env, cwd)
        if setup.rc != 0:
            raise SystemExit(f"`tradebeat symbols add BTC/USDT` failed (exit {setup.rc})")
        commands: list[tuple[str, Callable[[], Timing], set[int] | None]] = [
            ("tradebeat --help", lambda: timed([TRADEBEAT, "--help"], env, cwd), {0}),
            (
                "tradebeat symbols add BTCUSDT (refused)",
                lambda: timed([TRADEBEAT, "symbols", "add", "BTCUSDT"], env, cwd),
                {2},
            ),
            ("tradebeat symbols list", lambda: timed([TRADEBEAT, "symbols", "list"], env, cwd), {0}),
            ("tradebeat status (no daemon)", lambda: timed([TRADEBEAT, "status"], env, cwd), None),
            (
                "tradebeat gaps BTC/USDT --start 2020-01-01 --end 2020-01-01",
                lambda: timed(
                    [TRADEBEAT, "gaps", "BTC/USDT", "--start", "2020-01-01", "--end", "2020-01-01"], env, cwd
                ),
                None,
            ),
            (
                'python -c "import tradebeat_pipeline.definitions"',
                lambda: timed([sys.executable, "-c", "import tradebeat_pipeline.definitions"], env, cwd),
                {0},
            ),
            (
                "heartbeat run (1 symbol, in process; 1st req = launch->request)",
                lambda: beat_once(env, cwd, sandbox),
                {0},
            ),
        ]
        print(f"{args.runs} runs each, PYTHONDONTWRITEBYTECODE=1, seconds", flush=True)
        print(header(), flush=True)
        for label, run, expect in commands:
            timings = [run() for _ in range(args.runs)]
            print(summarize(label, timings, expect), flush=True)

        if not args.skip_idle:
            idle(args, server.url, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def home_env(where: Path, url: str, **extra: str) -> dict[str, str]:
    home = where / "home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dagster_home" / "dagster.yaml", home)
    env: dict[str, str] = idle_cpu.daemon_env(home, where)
    env.update(
        {
            "BINANCE_API_URL": url,
            "BINANCE_ARCHIVE_URL": url,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


def idle(args: argparse.Namespace, url: str, work: Path) -> None:
    print(
        f"\nCPU of `dagster-daemon run` (daemon + code servers + run workers, its whole session), "
        f"{args.idle_minutes:g} min after {args.settle:g} s settling; s CPU per minute",
        flush=True,
    )
    results: dict[str, list[idle_cpu.Measurement]] = {}
    for round_ in range(args.idle_rounds):
        for label, prepare in (
            ("(a) empty Dagster project (one asset, default dagster.yaml)", prepare_empty),
            ("(b) tradebeat idle (no symbol)", prepare_idle),
            (f"(c) tradebeat beating {len(BEAT_SYMBOLS)} symbols", prepare_beating),
        ):
            where = work / f"daemon-{round_}-{label[1]}"
            workspace, home, env, settle = prepare(where, url, args.settle)
            m = idle_cpu.run_window(workspace, home, env, settle, args.idle_minutes, label, None, None)
            results.setdefault(label, []).append(m)
            print("  " + idle_cpu.describe(m), flush=True)
    print(f"\n{'':<58} {'s/min':>6}   breakdown (s/min)")
    for label, ms in results.items():
        per = statistics.median(m.per_minute for m in ms)
        kinds: dict[str, float] = {}
        for m in ms:
            for k, v in m.by_kind.items():
                kinds[k] = kinds.get(k, 0.0) + v / m.minutes / len(ms)
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        print(f"{label:<58} {per:6.2f}   {parts}")


def prepare_empty(where: Path, url: str, settle: float) -> tuple[Path, Path, dict[str, str], float]:
    _, home, workspace = idle_cpu.prepare("empty", None, work=where)
    env = idle_cpu.daemon_env(home, where, {"PYTHONDONTWRITEBYTECODE": "1"})
    return workspace, home, env, settle


def prepare_idle(where: Path, url: str, settle: float) -> tuple[Path, Path, dict[str, str], float]:
    _, home, workspace = idle_cpu.prepare("tradebeat", PROJECT / "dagster_home" / "dagster.yaml", work=where)
    env = idle_cpu.daemon_env(
        home,
        where,
        {"PYTHONDONTWRITEBYTECODE": "1", "BINANCE_API_URL": url, "BINANCE_ARCHIVE_URL": url},
    )
    return workspace, home, env, settle


def prepare_beating(where: Path, url: str, settle: float) -> tuple[Path, Path, dict[str, str], float]:
    workspace, home, env, _ = prepare_idle(where, url, settle)
    env["BACKFILL_MINUTES"] = "10"
    added = timed([TRADEBEAT, "symbols", "add", *BEAT_SYMBOLS], env, home)
    if added.rc != 0:
        raise SystemExit(f"`tradebeat symbols add` failed (exit {added.rc})")
    # The sensor onboards them (one backfill run) within its first ticks: let that pass first.
    return workspace, home, env, max(settle, 120)


if __name__ == "__main__":
    main()
