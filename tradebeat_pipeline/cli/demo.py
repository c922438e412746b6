"""`tradebeat sandbox` and `tradebeat demo`: the offline Binance-compatible exchange, and the whole
system against it (sandbox in live replay + `dagster dev`), supervised so that Ctrl-C or `kill`
stops every process it started."""

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tradebeat_pipeline.errors import Failed
from tradebeat_pipeline.settings import DEFAULT_DAGSTER_HOME, PROJECT_DIR, Settings
from tradebeat_pipeline.timewindows import DAY_MS, now_ms

EXIT_OK = 0


def sandbox(args: argparse.Namespace, settings: Settings) -> int:
    from tradebeat_pipeline.sandbox.market_data import historical_markets, replay_markets
    from tradebeat_pipeline.sandbox.server import Clock, Sandbox, serve_forever

    if args.replay:
        now = now_ms()
        anchor = now - now % DAY_MS - 30 * DAY_MS  # history reaches back 30 days
        sandbox = Sandbox(
            replay_markets(anchor, args.synthetic_markets), Clock(), weight_limit=args.weight_limit
        )
    else:
        sandbox = Sandbox(
            historical_markets(args.synthetic_markets), Clock(args.now), weight_limit=args.weight_limit
        )
    print(
        f"sandbox exchange on http://127.0.0.1:{args.port} "
        f"({'live replay' if args.replay else 'historical'}); Ctrl-C stops it",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(sandbox, "127.0.0.1", args.port))
    return EXIT_OK


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """Sandbox in live replay + `dagster dev`, with a demo database and Dagster home of their own so
    replayed candles never mix with real ones. Ctrl-C stops both and every process they started."""
    home = DEFAULT_DAGSTER_HOME / "demo"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_DAGSTER_HOME / "dagster.yaml", home / "dagster.yaml")
    exchange_url = f"http://127.0.0.1:{args.exchange_port}"
    env = _demo_environment(home, exchange_url, args.symbols)
    processes: list[subprocess.Popen[bytes]] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # `kill` stops it as Ctrl-C does
        signal.signal(signum, _interrupt)
    try:
        processes.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "tradebeat_pipeline.cli",
                    "sandbox",
                    "--replay",
                    "--synthetic-markets",
                    "20",  # S000/USDT..S019/USDT, for adding symbols from the UI
                    "--port",
                    str(args.exchange_port),
                ],
                env,
                cwd=home,
            )
        )
        _wait_for_port(args.exchange_port, processes[0])
        dagster = str(Path(sys.executable).with_name("dagster"))
        # cwd is the demo home: `dagster dev` loads a .env from its cwd, and the project's is for Binance.
        processes.append(
            _start(
                [
                    dagster,
                    "dev",
                    "-w",
                    str(PROJECT_DIR / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(args.port),
                ],
                env,
                cwd=home,
            )
        )
        print(
            f"tradebeat demo: sandbox exchange {exchange_url} (live replay of recorded candles), "
            f"symbols {args.symbols}; Dagster UI on http://127.0.0.1:{args.port} once it has "
            "started. Ctrl-C stops everything.\n"
            f"Its health, from another shell in {PROJECT_DIR}:\n"
            f"  DAGSTER_HOME={home} DB_PATH={env['DB_PATH']} BINANCE_API_URL={exchange_url} "
            f"BINANCE_ARCHIVE_URL={exchange_url} "
            "uv run tradebeat status",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
    finally:
        _stop(processes)
    return EXIT_OK


def _demo_environment(home: Path, exchange_url: str, symbols: str) -> dict[str, str]:
    """Every demo process's environment: its own home and database, the sandbox, no real keys."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DB_PATH": str(PROJECT_DIR / "data" / "demo.sqlite"),
        "BINANCE_API_URL": exchange_url,
        "BINANCE_ARCHIVE_URL": exchange_url,  # the sandbox serves Binance's archive layout too
        "BINANCE_API_KEY": "",  # never send real keys to the sandbox
        "BINANCE_SECRET_KEY": "",
        "SYMBOLS": symbols,
        "TRADEBEAT_ENV_FILE": str(home / "no.env"),  # the project's .env is for real Binance
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start(argv: list[str], env: dict[str, str], cwd: Path) -> "subprocess.Popen[bytes]":
    # A session of its own, so stopping it reaches every process it started.
    return subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)  # noqa: S603 (our own argv)


def _wait_for_port(port: int, process: "subprocess.Popen[bytes]", timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Failed(f"the sandbox exchange exited (is port {port} in use? try --exchange-port)")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise Failed(f"the sandbox exchange did not listen on port {port} within {timeout_s:.0f}s")


def _stop(processes: list["subprocess.Popen[bytes]"]) -> None:
    """SIGINT each process group (dagster dev shuts its children down), then SIGKILL stragglers."""
    for process in reversed(processes):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
    for process in reversed(processes):
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its group
        process.wait()
