"""`tradebeat sandbox`, `tradebeat demo` and `tradebeat dev`: the offline Binance-compatible exchange,
the whole system against it (sandbox in live replay + `dagster dev`), and `dagster dev` for real use
with the project's instance; the last two supervised so that Ctrl-C or `kill` stops every process
they started, cleanly: the runs in flight are cancelled (CANCELED, not FAILURE)
before the processes that run them stop."""

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import IO

from tradebeat_pipeline.chart_server import CHART_PAGE, chart_url, serve_charts
from tradebeat_pipeline.errors import Failed
from tradebeat_pipeline.settings import DEFAULT_DAGSTER_HOME, PROJECT_DIR, Settings, dagster_home
from tradebeat_pipeline.timewindows import DAY_MS, now_ms

EXIT_OK = 0
# Dagster's run statuses (`DagsterRunStatus` values) of a run that has not ended yet.
UNFINISHED = ("NOT_STARTED", "QUEUED", "STARTING", "STARTED", "CANCELING")
# How long a clean stop waits for the cancelled runs to end before it stops the processes anyway.
CANCEL_TIMEOUT_S = 15.0
# A signal this soon after the first is the same stop delivered twice (`kill` of uv's process group
# reaches this process directly and forwarded by uv; so does Ctrl-C), not a user in a hurry.
SAME_STOP_S = 2.0
# The demo's own database, apart from the real one.
DEMO_DB = PROJECT_DIR / "data" / "demo.sqlite"
# S000/USDT..S019/USDT: markets the demo's sandbox lists beside the recorded ones, to add from the UI.
SYNTHETIC_MARKETS = 20


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
    charts_port = settings.charts_port if args.charts_port is None else args.charts_port
    env = demo_environment(home, exchange_url, args.symbols, charts_port)
    sandbox = replay_sandbox_argv(args.exchange_port)
    banner = (
        f"tradebeat demo: sandbox exchange {exchange_url} (live replay of recorded candles), "
        f"symbols {args.symbols}; Dagster UI on http://127.0.0.1:{args.port} once it has "
        f"started; charts on {chart_url(charts_port, CHART_PAGE)}. Ctrl-C stops everything.\n"
        f"Its health, from another shell in {PROJECT_DIR}:\n"
        f"  DAGSTER_HOME={home} DB_PATH={env['DB_PATH']} BINANCE_API_URL={exchange_url} "
        f"BINANCE_ARCHIVE_URL={exchange_url} "
        "uv run tradebeat status"
    )
    # cwd is the demo home: `dagster dev` loads a .env from its cwd, and the project's is for Binance.
    return _supervise(
        "tradebeat demo",
        home,
        env,
        home,
        ui_port=args.port,
        charts_port=charts_port,
        banner=banner,
        sandbox=(sandbox, args.exchange_port),
    )


def dev(args: argparse.Namespace, settings: Settings) -> int:
    """`dagster dev` for real use, set up as tradebeat needs it: the project's Dagster home
    (DAGSTER_HOME, else dagster_home/), whose dagster.yaml keeps beats one at a time and ticks
    pruned, and CHARTS_DIR served on CHARTS_PORT so the UI's chart link opens. Ctrl-C stops it
    cleanly, as the demo does."""
    home = dagster_home()
    if not (home / "dagster.yaml").is_file():
        raise Failed(
            f"DAGSTER_HOME {home} has no dagster.yaml: without it beats are not queued one at a time "
            f"and ticks are never pruned; copy {DEFAULT_DAGSTER_HOME / 'dagster.yaml'} there"
        )
    charts_port = settings.charts_port if args.charts_port is None else args.charts_port
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CHARTS_DIR": str(settings.charts_dir),
        "CHARTS_PORT": str(charts_port),
    }
    banner = (
        f"tradebeat dev: Dagster UI on http://127.0.0.1:{args.port} once it has started "
        f"(DAGSTER_HOME={home}); exchange {settings.api_url}; charts on "
        f"{chart_url(charts_port, CHART_PAGE)}. Ctrl-C stops everything."
    )
    return _supervise(
        "tradebeat dev", home, env, PROJECT_DIR, ui_port=args.port, charts_port=charts_port, banner=banner
    )


def _supervise(
    label: str,
    home: Path,
    env: dict[str, str],
    cwd: Path,
    *,
    ui_port: int,
    charts_port: int,
    banner: str,
    sandbox: tuple[list[str], int] | None = None,
) -> int:
    """Run `dagster dev` (after the sandbox exchange, when given as its argv and port) and the charts
    server until a signal or a process ends, then stop cleanly: cancel the runs in flight, stop
    every process started, and mark CANCELED whatever they left unfinished."""
    processes: list[subprocess.Popen[bytes]] = []
    forwarder: threading.Thread | None = None
    stopping = _Stopping()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # `kill` stops it as Ctrl-C does
        signal.signal(signum, stopping.signalled)
    charts: ThreadingHTTPServer | None = None
    try:
        charts = _serve_charts(Path(env["CHARTS_DIR"]), charts_port)
        if sandbox is not None:
            processes.append(start_process(sandbox[0], env, cwd=cwd))
            wait_for_port(sandbox[1], processes[-1])
        processes.append(start_process(dagster_dev_argv(ui_port), env, cwd=cwd, output=subprocess.PIPE))
        output = processes[-1].stdout
        assert output is not None
        forwarder = threading.Thread(
            target=forward_output,
            args=(output, sys.stderr.buffer, lambda: stopping.stopping),
            name="dagster dev output",
            daemon=True,
        )
        forwarder.start()
        print(banner, flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # Ctrl-C or `kill`: the way it ends
    finally:
        print(f"{label}: stopping; cancelling the runs in flight", flush=True)
        cancel_runs(home, timeout_s=CANCEL_TIMEOUT_S, hurry=lambda: stopping.hurry, by=label)
        stop_processes(processes)
        cancel_runs(home, timeout_s=0, by=label)  # what the processes left unfinished: nothing runs it now
        if charts is not None:
            charts.shutdown()
            charts.server_close()
        if forwarder is not None:
            forwarder.join(timeout=5)
    return EXIT_OK


# The first line of a record that Dagster logs on the console (colour codes optional).
_RECORD_START = re.compile(rb"^(\x1b\[[0-9;]*m)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def forward_output(source: Iterable[bytes], sink: IO[bytes], stopping: Callable[[], bool]) -> None:
    """Copy `dagster dev`'s console output line by line. Once the demo is stopping (`stopping()` is
    true), the tracebacks of what the stop interrupts are left out: a record about the interruption
    of a cancelled run keeps its one-line summary, and a helper process's KeyboardInterrupt
    traceback (Dagster's watch_orphans, say) is dropped whole, even interleaved with other output.
    Interrupting them is how the demo stops, not an error to debug."""
    dropping = False
    for line in source:
        if _RECORD_START.match(line):
            dropping = False
        elif stopping() and (
            b"DagsterExecutionInterruptedError" in line
            or line.startswith((b"Traceback (most recent call last):", b"  "))
            or line.strip() == b"KeyboardInterrupt"
        ):
            if b"DagsterExecutionInterruptedError" in line:
                dropping = True  # this record's error and stack trace, up to the next record
            continue
        if not dropping:
            sink.write(line)
            sink.flush()


class _Stopping:
    """The demo's signal handler. The first SIGINT/TERM/HUP raises KeyboardInterrupt, which starts
    the stop; a later one never interrupts the stop itself (that would leave the demo's processes
    running), and one more than SAME_STOP_S later (a second Ctrl-C) only cuts short the wait for
    the cancelled runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.stopping = False
        self.hurry = False
        self.first_s = 0.0

    def signalled(self, signum: int, frame: object) -> None:
        if self.stopping:
            self.hurry = self.hurry or self.clock() - self.first_s > SAME_STOP_S
            return
        self.stopping = True
        self.first_s = self.clock()
        raise KeyboardInterrupt


def cancel_runs(
    home: Path, *, timeout_s: float, hurry: Callable[[], bool] = lambda: False, by: str = "tradebeat demo"
) -> list[str]:
    """Cancel every unfinished run of the Dagster instance in `home` and wait, up to `timeout_s`
    (less once `hurry()` turns true), for them to end; return the ids of those still unfinished.

    A run with a worker is cancelled through the run launcher (its code server interrupts the worker,
    which ends the run CANCELED); one without a worker (queued, not started) is simply marked
    CANCELED, as the run coordinator does. Called with `timeout_s=0` once the demo's processes are
    stopped, it marks CANCELED whatever they left unfinished. Best effort: a clean stop must never
    be prevented by a run it could not cancel."""
    # Here, not at the top: `tradebeat --help` must not import Dagster, nor the supervisor pandas.
    import dagster as dg

    from tradebeat_pipeline.health import STOPPED_BY_TAG

    left: list[str] = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            statuses = [dg.DagsterRunStatus(s) for s in UNFINISHED]
            runs = instance.get_runs(filters=dg.RunsFilter(statuses=statuses))
            for run in runs:
                instance.add_run_tags(run.run_id, {STOPPED_BY_TAG: by})
                if timeout_s <= 0 or run.status == dg.DagsterRunStatus.CANCELING:
                    continue  # nothing to ask: it is being cancelled, or nothing runs it any more
                try:
                    instance.run_coordinator.cancel_run(run.run_id)
                except dg.DagsterError as exc:  # e.g. its code server already gone
                    print(f"{by}: could not cancel run {run.run_id}: {exc}", flush=True)
            deadline = time.monotonic() + timeout_s
            while True:
                unfinished = [
                    r for r in (instance.get_run_by_id(run.run_id) for run in runs) if r and not r.is_finished
                ]
                if not unfinished or time.monotonic() >= deadline or hurry():
                    break
                time.sleep(0.2)
            for run in unfinished:
                if timeout_s > 0:
                    left.append(run.run_id)
                    continue
                if run.status != dg.DagsterRunStatus.CANCELING:
                    instance.report_run_canceling(run, message=f"Canceling: `{by}` stopped.")
                instance.report_run_canceled(run, message=f"`{by}` stopped before the run ended.")
    except Exception as exc:  # the processes are stopped next, whatever failed here
        print(f"{by}: could not cancel the runs in flight: {exc}", flush=True)
    return left


def _serve_charts(directory: Path, port: int) -> ThreadingHTTPServer:
    try:
        return serve_charts(directory, port)
    except OSError as exc:
        raise Failed(f"cannot serve the charts on 127.0.0.1:{port} ({exc}); try --charts-port") from exc


def replay_sandbox_argv(port: int) -> list[str]:
    """The demo's sandbox exchange: live replay, with SYNTHETIC_MARKETS made-up markets to add."""
    return [
        sys.executable,
        "-m",
        "tradebeat_pipeline.cli",
        "sandbox",
        "--replay",
        "--synthetic-markets",
        str(SYNTHETIC_MARKETS),
        "--port",
        str(port),
    ]


def dagster_dev_argv(ui_port: int) -> list[str]:
    """`dagster dev` on the project's workspace, its UI on 127.0.0.1:`ui_port`."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    return [dagster, "dev", "-w", str(PROJECT_DIR / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(ui_port)]


def demo_environment(
    home: Path, exchange_url: str, symbols: str, charts_port: int, db_path: Path = DEMO_DB
) -> dict[str, str]:
    """Every demo process's environment: its own home, database and charts, the sandbox, no real keys."""
    return {
        **os.environ,
        "CHARTS_DIR": str(home / "charts"),
        "CHARTS_PORT": str(charts_port),
        "DAGSTER_HOME": str(home),
        "DB_PATH": str(db_path),
        "BINANCE_API_URL": exchange_url,
        "BINANCE_ARCHIVE_URL": exchange_url,  # the sandbox serves Binance's archive layout too
        "BINANCE_API_KEY": "",  # never send real keys to the sandbox
        "BINANCE_SECRET_KEY": "",
        "SYMBOLS": symbols,
        "TRADEBEAT_ENV_FILE": str(home / "no.env"),  # the project's .env is for real Binance
    }


def start_process(
    argv: list[str], env: dict[str, str], cwd: Path, output: int | None = None
) -> "subprocess.Popen[bytes]":
    # A session of its own, so stopping it reaches every process it started; `output`: where its
    # stdout and stderr go (this process's unless subprocess.PIPE).
    stderr = None if output is None else subprocess.STDOUT
    return subprocess.Popen(  # noqa: S603 (our own argv)
        argv, env=env, cwd=cwd, start_new_session=True, stdout=output, stderr=stderr
    )


def wait_for_port(port: int, process: "subprocess.Popen[bytes]", timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Failed(f"the sandbox exchange exited (is port {port} in use? try --exchange-port)")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise Failed(f"the sandbox exchange did not listen on port {port} within {timeout_s:.0f}s")


def stop_processes(processes: list["subprocess.Popen[bytes]"]) -> None:
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
