"""The shared request-weight ledger in the PostgreSQL store's database, so run workers on every machine
of a deployment spend one budget per exchange host (`budget.py` keeps the rules; no Dagster inside).

One row per exchange host holds the same JSON ledger the file holds. Each use is one transaction:
the row is locked (`SELECT ... FOR UPDATE`), read, rewritten and committed, so writers take turns
exactly as under the file's `flock`; reads take no lock. The time is the server's, read once the row
is held, so machines whose clocks disagree still count the same seconds. Each process keeps one
connection per database (`_CONNECTIONS`), used by one thread at a time.
"""

import atexit
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from tradebeat_pipeline.budget import BudgetUnavailable, LedgerRecord
from tradebeat_pipeline.store.postgres import _SCHEMA_LOCK, BUDGET_TABLE, VERSION_TABLE, _password, describe

Conn = psycopg.Connection[tuple[Any, ...]]

_CREATE = f"CREATE TABLE {BUDGET_TABLE} (host text PRIMARY KEY, ledger text NOT NULL)"
_TABLES = (
    "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
)
_INSERT = f"INSERT INTO {BUDGET_TABLE} (host, ledger) VALUES (%s, '') ON CONFLICT (host) DO NOTHING"
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"

# (process id, URL) -> its connection: a forked child never uses its parent's socket.
_CONNECTIONS: dict[tuple[int, str], Conn] = {}
_TABLE_MADE: set[tuple[int, str]] = set()  # connections that have seen the table exist
_USE = threading.Lock()  # one use of a connection at a time, whichever thread


class PostgresLedger:
    """The ledger of exchange host `host`, a row of table `rate_budget` in the store's database."""

    def __init__(self, url: str, host: str, *, connect_timeout_s: int = 10) -> None:
        self.url = url
        self.host = host
        self.where = describe(url)
        self._secret = _password(url)
        self.connect_timeout_s = connect_timeout_s

    def __str__(self) -> str:
        return f"{self.where} ({BUDGET_TABLE}, host {self.host})"

    __repr__ = __str__  # never the URL: it may hold a password

    def exists(self) -> bool:
        """Whether any process ever wrote this host's ledger; creates nothing."""
        with self._reported(), _USE:
            conn = self._connection(create=False)
            (table,) = conn.execute("SELECT to_regclass(%s)", (BUDGET_TABLE,)).fetchone() or (None,)
            if table is None:
                return False
            found = conn.execute(f"SELECT 1 FROM {BUDGET_TABLE} WHERE host = %s", (self.host,)).fetchone()
            return found is not None

    @contextmanager
    def held(self, *, write: bool) -> Iterator[LedgerRecord]:
        """The row, locked until the block ends when writing, then rewritten in the same transaction."""
        with self._reported(), _USE:
            conn = self._connection(create=write)
            with conn.transaction():
                raw = self._row(conn, lock=write)
                if raw is None and write:
                    conn.execute(_INSERT, (self.host,))
                    raw = self._row(conn, lock=True)
                (now,) = conn.execute(_NOW).fetchone() or (None,)
                record = LedgerRecord((raw or "").encode(), float(now))
                yield record
                if write and record.replacement is not None:
                    conn.execute(
                        f"UPDATE {BUDGET_TABLE} SET ledger = %s WHERE host = %s",
                        (record.replacement.decode(), self.host),
                    )

    def _row(self, conn: Conn, *, lock: bool) -> str | None:
        if lock:
            found = conn.execute(
                f"SELECT ledger FROM {BUDGET_TABLE} WHERE host = %s FOR UPDATE", (self.host,)
            ).fetchone()
        else:
            (table,) = conn.execute("SELECT to_regclass(%s)", (BUDGET_TABLE,)).fetchone() or (None,)
            if table is None:
                return None
            found = conn.execute(
                f"SELECT ledger FROM {BUDGET_TABLE} WHERE host = %s", (self.host,)
            ).fetchone()
        return None if found is None else str(found[0])

    def _connection(self, *, create: bool) -> Conn:
        """This process's connection to the database, opened on first use; `create` makes sure the
        table exists (once per connection)."""
        key = (os.getpid(), self.url)
        conn = _CONNECTIONS.get(key)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self.connect_timeout_s,
                application_name="tradebeat",
            )
            _CONNECTIONS[key] = conn
            _TABLE_MADE.discard(key)
        if create and key not in _TABLE_MADE:
            self._create_table(conn)
            _TABLE_MADE.add(key)
        return conn

    def _create_table(self, conn: Conn) -> None:
        """The table, in tradebeat's database only: under the store's schema lock, so the store and
        the ledger never both decide the database is empty; another application's is refused."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            tables = {r[0] for r in conn.execute(_TABLES)}
            if BUDGET_TABLE in tables:
                return
            if tables and VERSION_TABLE not in tables:
                raise BudgetUnavailable(
                    f"{self.where} holds another application's tables ({', '.join(sorted(tables))}); "
                    "point DATABASE_URL at tradebeat's own database"
                )
            conn.execute(_CREATE)

    @contextmanager
    def _reported(self) -> Iterator[None]:
        """psycopg's errors as `BudgetUnavailable` naming host and database, never the password; the
        connection is dropped so the next use opens a new one."""
        try:
            yield
        except psycopg.Error as exc:
            conn = _CONNECTIONS.pop((os.getpid(), self.url), None)
            if conn is not None:
                conn.close()
            message = str(exc).strip()
            if self._secret:
                message = message.replace(self._secret, "***")
            raise BudgetUnavailable(f"{self.where}: the shared rate budget failed: {message}") from exc


@atexit.register
def _close_all() -> None:
    """Close this process's connections as it exits (the server then frees them at once)."""
    for key, conn in list(_CONNECTIONS.items()):
        if key[0] == os.getpid():
            conn.close()
