"""The whole system live: a real `dagster-daemon` runs the heartbeat and the symbols sensor against the
sandbox exchange replaying recorded candles on the wall clock. Slow by nature (it waits for real
minutes to close), so marked `slow`; CI runs it.

The heartbeat and the onboarding backfill run on two setups: `sqlite` (dagster_home/dagster.yaml, the
store and the rate budget in files, the code loaded by the daemon itself) and `postgres`, the
deployment of deploy/: deploy/dagster.yaml (instance on a real PostgreSQL server), the store and the
rate budget in a database of the same server (DATABASE_URL), and the code location served by a
`dagster code-server` that the daemon reaches through deploy/workspace.yaml. Its one change:
DockerRunLauncher is swapped for Dagster's default launcher (runs as processes of the code server),
since no Docker daemon runs here.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import psycopg
import pytest
import time_machine

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.partitions import beat_minute_of
from tradebeat_pipeline.sandbox.market_data import ReplayedSeries, replay_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline.timewindows import DAY_MS
from tradebeat_pipeline_tests.conftest import stored_rows, wait_for
from tradebeat_pipeline_tests.pg_cluster import PostgresServer, deployment_instance, free_port, fresh_database

pytestmark = pytest.mark.slow

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
BUFFER_S = 3.0
MIN = 60_000
T = TypeVar("T")
DEPLOY = PROJECT_DIR / "deploy"
# Every live test runs on both setups: the embedded one, and the instance, store and budget on PostgreSQL.
ON_BOTH = pytest.mark.parametrize("live", ["sqlite", "postgres"], indirect=True)
CODE = ["-m", "tradebeat_pipeline.definitions", "--location-name", "tradebeat"]  # as compose's `code`


def dagster_tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class LiveSystem:
    home: Path
    db: Path
    env: dict[str, str]
    sandbox: Sandbox
    workspace: Path = PROJECT_DIR / "workspace.yaml"
    database_url: str | None = None  # the store on PostgreSQL, else the SQLite file `db`
    daemon: "subprocess.Popen[bytes] | None" = None
    code_server: "subprocess.Popen[bytes] | None" = None

    def start_code_server(self, port: int) -> None:
        """The code location as deploy/docker-compose.yml's `code` service serves it, on 127.0.0.1."""
        self.code_server = subprocess.Popen(
            [dagster_tool("dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(port), *CODE],
            env=self.env,
            cwd=self.home,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(self.home / "code-server.log").open("ab"),
        )
        health = [dagster_tool("dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)]
        wait_for(
            "the code server to serve",
            lambda: subprocess.run(health, env=self.env, capture_output=True, check=False).returncode == 0,
            timeout_s=180,
            poll_s=1,
        )

    def stop_code_server(self) -> None:
        server, self.code_server = self.code_server, None
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # with the runs it started
            server.wait(timeout=60)

    def start_daemon(self) -> None:
        self.daemon = subprocess.Popen(
            [dagster_tool("dagster-daemon"), "run", "-w", str(self.workspace)],
            env=self.env,
            cwd=self.home,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(self.home / "daemon.log").open("ab"),
        )

    def stop_daemon(self, *, everything: bool = False) -> None:
        """SIGTERM the daemon as an operator would (a run in flight may finish); `everything` also
        kills whatever it started, for teardown."""
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        finally:
            if everything:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGKILL)

    def runs(self, kind: str, status: dg.DagsterRunStatus | None = None) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.get() as instance:
            filters = dg.RunsFilter(
                tags={"tradebeat/kind": kind}, statuses=[status] if status is not None else []
            )
            return [r.dagster_run for r in instance.get_run_records(filters=filters)]

    def rows(self, symbol: str) -> dict[int, tuple[float, ...]]:
        """Stored candles by open time, read with plain SQL (the test's own view of the database)."""
        columns = "timestamp, open, high, low, close, volume, ingested_at"
        if self.database_url is None:
            found = stored_rows(self.db, symbol, columns)
        else:
            with psycopg.connect(self.database_url) as db:
                found = db.execute(
                    f"SELECT {columns} FROM price_data JOIN symbols ON symbols.id = symbol_id "
                    "WHERE symbol = %s ORDER BY timestamp",
                    (symbol,),
                ).fetchall()
        return {r[0]: tuple(r[1:]) for r in found}


def at_least(count: int, runs: list[dg.DagsterRun]) -> list[dg.DagsterRun] | None:
    return runs if len(runs) >= count else None


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    setup = str(request.param)
    work = tmp_path_factory.mktemp(f"live-{setup}")
    home = work / "dagster_home"
    home.mkdir()
    now = int(time.time() * 1000)
    sandbox = Sandbox(replay_markets(now - now % DAY_MS - 30 * DAY_MS), Clock())
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(SandboxServer(sandbox))
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "DB_PATH": str(work / "live.sqlite"),
            "BINANCE_API_URL": server.url,
            "TRADEBEAT_ENV_FILE": str(work / "none.env"),
            "HEARTBEAT_BUFFER_SECONDS": str(BUFFER_S),
            "BACKFILL_MINUTES": "60",
            "LOG_DIR": str(work / "logs"),
        }
        for name in ("SYMBOLS", "DATABASE_URL"):
            env.pop(name, None)
        system = LiveSystem(home, work / "live.sqlite", env, sandbox)
        if setup == "sqlite":
            shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)
        else:
            postgres: PostgresServer = request.getfixturevalue("postgres_server")
            instance_db = stack.enter_context(fresh_database(postgres, "dagster"))
            system.database_url = stack.enter_context(fresh_database(postgres, "store"))
            code_port = free_port()
            env |= deployment_instance(home, postgres, instance_db)
            env |= {
                "DATABASE_URL": system.database_url,
                "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
                "DAGSTER_CODE_SERVER_PORT": str(code_port),
            }
            system.workspace = DEPLOY / "workspace.yaml"
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            assert main(["symbols", "add", *SYMBOLS]) == 0
            if setup == "postgres":
                system.start_code_server(code_port)
            system.start_daemon()
            yield system
        finally:
            system.stop_daemon(everything=True)
            system.stop_code_server()
            os.environ.clear()
            os.environ.update(saved)


def two_successful_beats(live: LiveSystem) -> list[dg.DagsterRun]:
    """Wait for the daemon's first two successful heartbeat runs (or more), and return them."""
    return wait_for(
        "two successful heartbeat runs",
        lambda: at_least(2, live.runs("heartbeat", dg.DagsterRunStatus.SUCCESS)),
        timeout_s=300,
        poll_s=1,
    )


def final_values(sandbox: Sandbox, symbol: str, minute: int) -> tuple[float, ...] | None:
    """The candle the replaying exchange gives for a closed minute (None in an outage)."""
    series = sandbox.markets[symbol.replace("/", "")].series
    assert isinstance(series, ReplayedSeries)
    rows = series.klines(minute, minute, 1)
    return tuple(float(str(v)) for v in rows[0][1:6]) if rows else None


@ON_BOTH
def test_every_beat_is_one_run_that_stores_each_closed_minute_with_final_values(live: LiveSystem) -> None:
    beats = two_successful_beats(live)
    with dg.DagsterInstance.get() as instance:
        every_beat = [
            r.dagster_run
            for r in instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "heartbeat"}))
        ]
    minutes = [beat_minute_of(r.tags) for r in every_beat]
    assert len(minutes) == len(set(minutes)), "a beat minute got more than one run"
    for run in beats:
        assert run.tags["dagster/asset_partition_range_start"].endswith("|BTC/USDT")
        assert run.tags["dagster/asset_partition_range_end"].endswith("|SOL/USDT")

    for run in beats:
        minute = beat_minute_of(run.tags)
        for symbol in SYMBOLS:
            stored = live.rows(symbol)
            exchange_has = final_values(live.sandbox, symbol, minute)
            if exchange_has is None:  # the replayed day holds a real exchange outage here
                assert minute not in stored
                continue
            *values, ingested_at = stored[minute]
            assert tuple(values) == exchange_has  # final values, not the partial ones served mid-minute
            assert ingested_at - (minute + MIN) <= (BUFFER_S + 10) * 1000


@ON_BOTH
def test_a_beat_is_launched_as_its_minute_closes_without_waiting_in_the_run_queue(live: LiveSystem) -> None:
    beats = two_successful_beats(live)
    with dg.DagsterInstance.get() as instance:
        for run in beats:
            record = instance.get_run_record_by_id(run.run_id)
            assert record is not None
            # Created by the tick as its minute closes, not a minute ahead of it.
            assert record.create_timestamp.timestamp() * 1000 >= beat_minute_of(run.tags) + MIN
            enqueued = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
            assert enqueued.records == [], "a beat with the beat slot free waited in the queue"


@ON_BOTH
def test_symbols_added_together_get_their_history_in_one_automatic_backfill_run(live: LiveSystem) -> None:
    (run,) = wait_for(
        "the onboarding backfill",
        lambda: live.runs("backfill", dg.DagsterRunStatus.SUCCESS),
        timeout_s=180,
        poll_s=1,
    )
    assert run.tags["dagster/asset_partition_range_start"].endswith("|BTC/USDT")
    assert run.tags["dagster/asset_partition_range_end"].endswith("|SOL/USDT")
    history_start = int(time.time() * 1000) - 60 * MIN  # BACKFILL_MINUTES=60 in this system
    for symbol in SYMBOLS:
        assert any(t < history_start for t in live.rows(symbol)), f"{symbol} got no history"


def status_at(at_s: float, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """`tradebeat status --json` judged at the instant `at_s` (only this process's clock is moved)."""
    capsys.readouterr()
    with time_machine.travel(at_s, tick=False):
        code = main(["status", "--json"])
    return code, json.loads(capsys.readouterr().out)


def recent_beat(live: LiveSystem) -> list[dg.DagsterRun] | None:
    """A successful beat for a minute that closed in the last two minutes, with history loaded."""
    if not live.runs("backfill", dg.DagsterRunStatus.SUCCESS):
        return None
    now = time.time() * 1000
    beats = live.runs("heartbeat", dg.DagsterRunStatus.SUCCESS)
    return [r for r in beats if now - beat_minute_of(r.tags) <= 3 * MIN] or None


@ON_BOTH
def test_status_is_healthy_while_the_daemon_beats(
    live: LiveSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_for("a recent successful beat", lambda: recent_beat(live), timeout_s=300, poll_s=1)
    code, report = status_at(time.time(), capsys)
    assert (code, report["status"], report["reasons"]) == (0, "healthy", [])
    assert report["daemon"]["alive"]
    assert [s["symbol"] for s in report["symbols"]] == sorted(SYMBOLS)
    assert all(s["lag_minutes"] <= 2 and s["candles_today"] > 0 for s in report["symbols"])


@ON_BOTH
def test_status_is_degraded_when_symbols_fall_behind_the_freshness_limit(
    live: LiveSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_for("a recent successful beat", lambda: recent_beat(live), timeout_s=300, poll_s=1)
    # 210 s later with no new candle: at least 3 minutes behind whatever second of the minute it is,
    # while the daemon's heartbeat and the last beat are still under 5 minutes old.
    code, report = status_at(time.time() + 210, capsys)
    assert (code, report["status"]) == (1, "degraded")
    assert all("min behind (limit 2)" in reason for reason in report["reasons"])


@ON_BOTH
def test_status_is_down_when_no_beat_ran_for_five_minutes(
    live: LiveSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_for("a recent successful beat", lambda: recent_beat(live), timeout_s=300, poll_s=1)
    code, report = status_at(time.time() + 420, capsys)
    assert (code, report["status"]) == (2, "down")
    assert any("no heartbeat run for" in reason for reason in report["reasons"])


@ON_BOTH
def test_minutes_missed_while_the_daemon_was_down_are_filled_by_the_next_beat(live: LiveSystem) -> None:
    wait_for(
        "a first beat", lambda: live.runs("heartbeat", dg.DagsterRunStatus.SUCCESS), timeout_s=300, poll_s=1
    )
    live.stop_daemon()
    stopped_at = int(time.time() * 1000)
    down_until = stopped_at - stopped_at % MIN + 3 * MIN  # three minute boundaries pass while down
    time.sleep(max(0.0, down_until / 1000 - time.time()))  # the downtime itself is the scenario
    live.start_daemon()

    restarted = down_until - MIN
    wait_for(
        "a beat after the restart",
        lambda: [
            r
            for r in live.runs("heartbeat", dg.DagsterRunStatus.SUCCESS)
            if beat_minute_of(r.tags) >= down_until
        ],
        timeout_s=300,
        poll_s=1,
    )
    for symbol in SYMBOLS:
        stored = set(live.rows(symbol))
        series = live.sandbox.markets[symbol.replace("/", "")].series
        expected = {int(str(r[0])) for r in series.klines(stopped_at - 5 * MIN, restarted, 1000)}
        assert expected - stored == set(), f"{symbol}: minutes missed during downtime not filled"
