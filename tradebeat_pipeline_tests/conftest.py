"""Shared fixtures: the real sandbox exchange over HTTP, a fresh SQLite file, a temporary Dagster home,
and a real PostgreSQL server with a fresh database per test.

Nothing here is a mock: ccxt talks HTTP to the sandbox, the store writes a real file, and runs are
recorded in a real Dagster instance. Only the exchange's clock is set by hand.
"""

import gzip
import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

PG_LIB = Path("/usr/lib/postgresql")  # Debian's postgresql package: <version>/bin, not on PATH


@dataclass(frozen=True)
class PostgresServer:
    """A throwaway cluster on 127.0.0.1 with trust authentication for its one superuser."""

    port: int
    user: str = "tradebeat"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def _pg_tool(name: str) -> str:
    installed = sorted(
        PG_LIB.glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    found = shutil.which(name) or (str(installed[-1]) if installed else None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)", False)
    return found


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a temporary folder, as the unprivileged `postgres` user when run as
    root (PostgreSQL refuses to run as root). Durability is switched off: tests never crash it. A
    server that cannot start fails the tests that need it, with initdb's or the server's own words."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="tradebeat-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    server = PostgresServer(free_port())
    options = f"-h 127.0.0.1 -p {server.port} -k {root} -F -c synchronous_commit=off -c full_page_writes=off"
    steps = [
        [initdb, "-D", str(data), "-A", "trust", "-U", server.user, "-E", "UTF8", "--no-sync"],
        [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "120", "start"],
    ]
    try:
        for step in steps:
            done = subprocess.run([*as_user, *step], cwd=root, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = log.read_text()[-2000:] if log.exists() else ""
                pytest.fail(
                    f"the PostgreSQL test server could not start: {Path(step[0]).name} exited with "
                    f"{done.returncode}: {done.stderr.strip()[-2000:]} {tail}",
                    pytrace=False,
                )
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                cwd=root,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
