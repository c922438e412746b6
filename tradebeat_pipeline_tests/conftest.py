"""Shared fixtures: the real sandbox exchange over HTTP, a fresh SQLite file, a temporary Dagster home,
and a real PostgreSQL server with a fresh database per test.

Nothing here is a mock: ccxt talks HTTP to the sandbox, the store writes a real file, and runs are
recorded in a real Dagster instance. Only the exchange's clock is set by hand.
"""

import contextlib
import gzip
import hashlib
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest

# Private: Dagster has no public way to build the origin a queued run must carry, and tests need
# queued runs in a real instance without a code server.
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from tradebeat_pipeline import logs
from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.sandbox.market_data import historical_markets
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline_tests.pg_cluster import ClusterUnavailable, fresh_database, running_cluster

# Tests import these from here (the server start-up itself is pg_cluster.py's).
from tradebeat_pipeline_tests.pg_cluster import PostgresServer as PostgresServer
from tradebeat_pipeline_tests.pg_cluster import free_port as free_port

T = TypeVar("T")


def run_origin(job: str) -> RemoteJobOrigin:
    """Where a queued run of this project's `job` was launched from (Dagster requires one)."""
    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("tradebeat_pipeline"), "__repository__")
    return RemoteJobOrigin(repository, job)


# Every column of a stored candle, in the contract's order.
CANDLE_VALUES = ", ".join(CANDLE_COLUMNS)


def ms(text: str) -> int:
    """Epoch ms of an ISO-8601 UTC instant."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1000)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer(Sandbox(historical_markets(synthetic=100), Clock(ms("2026-01-01T00:00:00Z"))))
    with server:
        yield server


def fresh_sandbox(server: SandboxServer) -> Sandbox:
    """The running sandbox, with its clock after all recorded data, no faults and no history."""
    state = server.sandbox
    state.clock.fixed_ms = ms("2026-01-01T00:00:00Z")
    state.reset()
    return state


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[Sandbox]:
    state = fresh_sandbox(sandbox_server)
    yield state
    state.reset()


@pytest.fixture
def env(tmp_path: Path, sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point everything at the sandbox, a fresh database and a fresh Dagster home; returns DB_PATH."""
    db_path = tmp_path / "tradebeat.sqlite"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)  # the instance users run
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DB_PATH", str(db_path))
    monkeypatch.setenv("BINANCE_API_URL", sandbox_server.url)
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", sandbox_server.url)  # its archive files, same port
    monkeypatch.setenv("TRADEBEAT_ENV_FILE", str(tmp_path / "no.env"))
    monkeypatch.setenv("EXCHANGE_RETRY_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    for name in ("BINANCE_API_KEY", "BINANCE_SECRET_KEY", "LOG_LEVEL", "BACKFILL_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    yield db_path
    logs.uninstall(tmp_path / "logs")


@pytest.fixture
def rest_only(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives off: history comes from the REST API alone, for tests of the REST path itself."""
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", "off")


@pytest.fixture
def instance(env: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture
def btc(env: Path, sandbox: Sandbox) -> Path:
    """BTC/USDT registered (store and partition); returns DB_PATH."""
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    return env


def stored_rows(
    db_path: Path,
    symbol: str | None = "BTC/USDT",
    columns: str = CANDLE_VALUES,
    *,
    start: int = 0,
    end: int = 2**62,
) -> list[tuple[Any, ...]]:
    """Stored candles (of one symbol, or all when None) with open time in [start, end), oldest
    first, read with plain SQL: the test's own view of the file, independent of the store's code."""
    where = "timestamp >= ? AND timestamp < ?" + ("" if symbol is None else " AND symbol = ?")
    params: tuple[Any, ...] = (start, end) if symbol is None else (start, end, symbol)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            f"SELECT {columns} FROM price_data JOIN symbols ON symbols.id = symbol_id "
            f"WHERE {where} ORDER BY symbol, timestamp",
            params,
        ).fetchall()
    conn.close()
    return rows


def stored_times(db_path: Path, symbol: str = "BTC/USDT") -> list[int]:
    """Open times of a symbol's stored candles, oldest first."""
    return [r[0] for r in stored_rows(db_path, symbol, "timestamp")]


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 120, poll_s: float = 0.05) -> T:
    """Poll the system for a condition until it holds (synchronisation, not a sleep standing in for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def archive_rows(name: str) -> list[list[str]]:
    """The bundled archive's rows as published (strings), read independently of the sandbox."""
    path = files("tradebeat_pipeline.sandbox") / "data" / name
    with gzip.open(str(path), "rt") as f:
        return [line.strip().split(",") for line in f]


def database_checksum(db_path: Path) -> str:
    """A digest of every row of every table, to prove a refused command changed nothing."""
    if not db_path.exists():
        return "absent"
    digest = hashlib.sha256()
    with sqlite3.connect(db_path) as conn:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        for table in tables:
            digest.update(table.encode())
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                digest.update(repr(row).encode())
    conn.close()
    return digest.hexdigest()


# -- a real PostgreSQL server -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster (pg_cluster.py: initdb + pg_ctl in a temporary folder, as `postgres` when
    run as root, durability off). A server that cannot start fails the tests that need it, with
    initdb's or the server's own words; it never skips them."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_cluster())
        except ClusterUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    with fresh_database(postgres_server) as url:
        yield url
