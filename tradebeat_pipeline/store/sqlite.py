"""The embedded candle store: SQLite in WAL mode, one transaction per write (no Dagster inside)."""

import functools
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from tradebeat_pipeline.candles import CANDLE_COLUMNS, dtype, empty_candles
from tradebeat_pipeline.quality import GAP_KINDS, Coverage, GapReport, Hole, gap_report_of_runs
from tradebeat_pipeline.rollups import ROLLUP_COLUMNS, ROLLUP_TIMEFRAMES
from tradebeat_pipeline.store import (
    CandleStore,
    StoreError,
    SymbolRow,
    SymbolWrite,
    UnknownSymbol,
    UpsertResult,
)
from tradebeat_pipeline.store.common import (
    STORE_TABLES,
    VALUE_COLUMNS,
    StoredMinutes,
    created_now,
    diff_candles,
    driver_errors_reported,
    gap_kind,
    listed_start,
    log_corrections,
    minutes_of,
    missing_runs_asked,
    plan_hole_runs,
    refuse_unannounced,
    sorted_times,
    time_range,
    touching_window,
)
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS

log = logging.getLogger("tradebeat.store")

SCHEMA_VERSION = 3
SQLITE_HEADER = b"SQLite format 3\x00"
# Pages of a new file: 16 KiB made full-history writes ~20 % and year reads ~30 % faster than
# SQLite's 4 KiB (benchmarks/store_speed.py). Only an empty file takes it; older files keep theirs.
PAGE_SIZE = 16384

# Holes in the stored minutes and why they are there (see quality.py); `start` and `end` are the
# open times of the first and last missing minute, both inclusive.
_GAPS_TABLE = f"""
CREATE TABLE IF NOT EXISTS gaps (
    symbol_id INTEGER NOT NULL REFERENCES symbols(id),
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in GAP_KINDS)})),
    detected_at INTEGER NOT NULL,
    PRIMARY KEY (symbol_id, start)
) WITHOUT ROWID
"""

# 5m/1h/1d candles rolled up from price_data (rollups.py); `minutes` of the bucket had a candle.
_ROLLUPS_TABLE = f"""
CREATE TABLE IF NOT EXISTS rollups (
    symbol_id INTEGER NOT NULL REFERENCES symbols(id),
    timeframe TEXT NOT NULL CHECK (timeframe IN ({", ".join(repr(t) for t in ROLLUP_TIMEFRAMES)})),
    timestamp INTEGER NOT NULL,
    open REAL,
    high REAL,
    low REAL,
    close REAL,
    volume REAL,
    quote_volume REAL,
    trades INTEGER,
    minutes INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    PRIMARY KEY (symbol_id, timeframe, timestamp)
) WITHOUT ROWID
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS symbols (
    id INTEGER PRIMARY KEY,
    symbol TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    first_candle_ms INTEGER  -- the exchange's first candle: no minute before it is a hole
);
CREATE TABLE IF NOT EXISTS price_data (
    symbol_id INTEGER NOT NULL REFERENCES symbols(id),
    timestamp INTEGER NOT NULL,
    open REAL,
    high REAL,
    low REAL,
    close REAL,
    volume REAL,
    quote_volume REAL,
    trades INTEGER,
    taker_buy_volume REAL,
    taker_buy_quote_volume REAL,
    ingested_at INTEGER NOT NULL,
    PRIMARY KEY (symbol_id, timestamp)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS candles AS
SELECT s.symbol AS symbol,
       strftime('%Y-%m-%dT%H:%M:%SZ', p.timestamp / 1000, 'unixepoch') AS time_utc,
       p.open, p.high, p.low, p.close, p.volume
FROM price_data AS p JOIN symbols AS s ON s.id = p.symbol_id;
{_GAPS_TABLE};
{_ROLLUPS_TABLE};
"""
# Steps from each older version to the next, run in one transaction with the version bump.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE symbols ADD COLUMN first_candle_ms INTEGER", _GAPS_TABLE),
    2: (_ROLLUPS_TABLE,),
}

_INSERT_COLUMNS = ("symbol_id", *CANDLE_COLUMNS, "ingested_at")
# Only rows whose values differ are rewritten, so an unchanged row keeps its first `ingested_at`.
_ON_CONFLICT = (
    "ON CONFLICT(symbol_id, timestamp) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*VALUE_COLUMNS, "ingested_at"))
    + " WHERE "
    + " OR ".join(f"price_data.{c} IS NOT excluded.{c}" for c in VALUE_COLUMNS)
)
_UPSERT_SQL = (
    f"INSERT INTO price_data ({', '.join(_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _INSERT_COLUMNS)}) " + _ON_CONFLICT
)
# Candles per upsert statement: Python's sqlite3 spends most of a row's cost on the statement
# round trip, so one statement binds this many rows (benchmarks/store_speed.py measures it), fewer
# if the library allows fewer variables.
_ROWS_PER_STATEMENT = 1000
# Integers a double carries exactly: below this, timestamps and trade counts bind as doubles.
_EXACT_IN_DOUBLE = 2**53
# What the upsert rewrote, told by SQLite itself, so no stored row is read back into Python to
# diff it: this connection's trigger notes each corrected open time in a temporary table.
_CORRECTIONS_SCHEMA = (
    "CREATE TEMP TABLE IF NOT EXISTS corrected_candles (timestamp INTEGER NOT NULL)",
    "CREATE TEMP TRIGGER IF NOT EXISTS note_corrected_candle AFTER UPDATE ON main.price_data "
    "BEGIN INSERT INTO corrected_candles (timestamp) VALUES (new.timestamp); END",
)
_RANGE = "WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ?"
_SELECT_RANGE_SQL = f"SELECT {', '.join(CANDLE_COLUMNS)} FROM price_data {_RANGE} ORDER BY timestamp"
# Values (not NULLs) per column in a range: a column NULL throughout (the extras of the 2023
# recordings) is left out of the read, so no Python object is made for it.
_COUNT_VALUES_SQL = f"SELECT {', '.join(f'count({c})' for c in CANDLE_COLUMNS)} FROM price_data {_RANGE}"


_STORED_SQL = "SELECT 1 FROM price_data WHERE symbol_id = ? AND timestamp = ?"
# A window's holes without reading its stored minutes: the aligned minutes are counted (a full
# window has no hole), else the first stored minute and each stored minute followed by a gap.
_ALIGNED_COUNT_SQL = (
    "SELECT count(*) FROM price_data WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ? "
    "AND timestamp % ? = 0"
)
_ANY_IN_RANGE_SQL = (
    "SELECT 1 FROM price_data WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ? LIMIT 1"
)
_FIRST_IN_SQL = (
    "SELECT min(timestamp) FROM price_data WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ?"
)
_GAPS_SQL = (
    "SELECT timestamp, next FROM (SELECT timestamp, lead(timestamp, 1, ?) OVER (ORDER BY timestamp) AS next "
    "FROM price_data WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ?) "
    "WHERE next - timestamp > ? ORDER BY timestamp"
)
_HALTED_SQL = (
    "SELECT count(*) FROM price_data WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ? "
    "AND open = high AND high = low AND low = close AND volume = 0"
)


_UPSERT_ROLLUP_SQL = (
    f"INSERT INTO rollups (symbol_id, timeframe, {', '.join(ROLLUP_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in range(len(ROLLUP_COLUMNS) + 2))}) "
    "ON CONFLICT(symbol_id, timeframe, timestamp) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ROLLUP_COLUMNS[1:])
)


# sqlite3's exceptions stop at every public method, as a StoreError naming DB_PATH.
@driver_errors_reported(sqlite3.Error, lambda store: f"DB_PATH {store.path}")
class SQLiteStore:
    """SQLite in WAL mode: readers never block the writer, one transaction per write."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> "SQLiteStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection; the next use opens it again."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- connection and schema -------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self._refuse_foreign_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"DB_PATH {self.path}: cannot open ({exc})") from exc
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"DB_PATH {self.path} has schema version {version}, newer than this tradebeat "
                    f"understands ({SCHEMA_VERSION}); upgrade tradebeat instead of downgrading data"
                )
            if version < SCHEMA_VERSION:
                self._create_or_migrate(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL survives a process crash; a power cut may lose the last commits, which
            # the next heartbeat or backfill simply fetches again.
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.OperationalError as exc:
            conn.close()
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise StoreError(f"DB_PATH {self.path} is read-only: {exc}") from exc
            raise StoreError(f"DB_PATH {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"DB_PATH {self.path} is not a usable SQLite database: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return conn

    def _refuse_foreign_file(self) -> None:
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise StoreError(f"DB_PATH {self.path} is a directory, expected a SQLite file")
        with self.path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise StoreError(f"DB_PATH {self.path} is not a SQLite database; refusing to touch it")

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a new file, or upgrade an older one step by step, atomically."""
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a no-op unless the file is still empty
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                foreign = conn.execute(
                    f"SELECT count(*) FROM sqlite_master WHERE name NOT IN "
                    f"({', '.join('?' for _ in STORE_TABLES)})",
                    STORE_TABLES,
                ).fetchone()[0]
                if foreign:
                    raise StoreError(
                        f"DB_PATH {self.path} holds another application's tables; point DB_PATH at a new file"
                    )
                # executescript() would COMMIT first; run each statement inside this transaction.
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step]:
                        conn.execute(statement)
                    log.info("DB_PATH %s: schema upgraded from version %d to %d", self.path, step, step + 1)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taking the write lock up front avoids deadlocking upgrades."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc):
                raise StoreError(f"DB_PATH {self.path} is read-only; nothing was written") from exc
            if "locked" in str(exc):
                raise StoreError(
                    f"DB_PATH {self.path} stayed locked by another writer for "
                    f"{self.busy_timeout_s:g}s; nothing was written"
                ) from exc
            raise

    # -- symbols -----------------------------------------------------------------------------

    def register_symbol(self, symbol: str) -> int:
        """Add a symbol, or reactivate it; its stored data is kept either way."""
        created = created_now()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO symbols (symbol, created_at, is_active) VALUES (?, ?, 1) "
                "ON CONFLICT(symbol) DO UPDATE SET is_active = 1",
                (symbol, created),
            )
            row = conn.execute("SELECT id FROM symbols WHERE symbol = ?", (symbol,)).fetchone()
        return int(row[0])

    def deactivate_symbol(self, symbol: str) -> bool:
        """Mark a symbol inactive; returns False if it was never registered."""
        with self._transaction() as conn:
            cur = conn.execute("UPDATE symbols SET is_active = 0 WHERE symbol = ?", (symbol,))
        return cur.rowcount > 0

    def _symbol_id(self, symbol: str) -> int:
        return self._symbol_id_in(self.conn, symbol)

    def active_symbols(self) -> set[str]:
        """The active symbols, without `list_symbols`'s per-symbol candle counts (hot path)."""
        return {r[0] for r in self.conn.execute("SELECT symbol FROM symbols WHERE is_active = 1")}

    def list_symbols(self, *, active: bool | None = True) -> list[SymbolRow]:
        """Symbols with their stored span and candle count; `active=None` lists all of them."""
        where = "" if active is None else "WHERE s.is_active = ?"
        params: tuple[int, ...] = () if active is None else (int(active),)
        rows = self.conn.execute(
            "SELECT s.symbol, s.created_at, s.is_active, "
            "(SELECT min(timestamp) FROM price_data WHERE symbol_id = s.id), "
            "(SELECT max(timestamp) FROM price_data WHERE symbol_id = s.id), "
            "(SELECT count(*) FROM price_data WHERE symbol_id = s.id) "
            f"FROM symbols AS s {where} ORDER BY s.id",
            params,
        ).fetchall()
        return [SymbolRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows]

    # -- candles -----------------------------------------------------------------------------

    def upsert_candles(
        self, batches: Sequence[tuple[str, pd.DataFrame]], *, now_ms: int | None = None
    ) -> dict[str, UpsertResult]:
        """Write every batch in ONE transaction: all of it lands, or none of it does."""
        return self.ingest([SymbolWrite(symbol, candles) for symbol, candles in batches], now_ms=now_ms)

    def ingest(
        self,
        writes: Iterable[SymbolWrite],
        *,
        now_ms: int | None = None,
        symbols: Collection[str] | None = None,
    ) -> dict[str, UpsertResult]:
        """Candles and the holes their fetches revealed, in ONE transaction: a hole is recorded
        against exactly the candles stored with it, and a crash leaves neither. SQLite's one write
        lock covers every symbol, so `symbols` only bounds which symbols the parts may name."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        results: dict[str, UpsertResult] = {}
        arriving = iter(writes)
        first = next(arriving, None)  # a stream takes the write lock only once its first part is here
        if first is None:
            return results
        with self._transaction() as conn:
            for symbol in sorted(symbols or ()):
                self._symbol_id_in(conn, symbol)  # every announced symbol is registered
            for write in itertools.chain([first], arriving):
                refuse_unannounced(write, symbols)
                sid = self._symbol_id_in(conn, write.symbol)
                if write.first_candle_ms is not None:
                    conn.execute(
                        "UPDATE symbols SET first_candle_ms = ? WHERE id = ? AND first_candle_ms IS NULL",
                        (write.first_candle_ms, sid),
                    )
                result = self._upsert_one(conn, sid, write.candles, now)
                listed = conn.execute("SELECT first_candle_ms FROM symbols WHERE id = ?", (sid,)).fetchone()[
                    0
                ]
                minutes = minutes_of(write.candles)
                holes = [
                    h
                    for cov in write.coverage
                    for h in self._record_holes(conn, sid, cov, listed, now, minutes)
                ]
                result = UpsertResult(
                    result.inserted, result.updated, result.unchanged, result.corrected, holes
                )
                results[write.symbol] = results.get(write.symbol, UpsertResult()) + result
        log_corrections(results)
        return results

    def _record_holes(
        self,
        conn: sqlite3.Connection,
        sid: int,
        cov: Coverage,
        listed: int | None,
        now: int,
        written: np.ndarray,
    ) -> list[Hole]:
        """Replace what is recorded inside the fetched window with what this fetch showed;
        `written` are the minute open times just stored, sorted."""
        touching = self._holes(conn, sid, *touching_window(cov))
        runs = missing_runs_asked(
            listed_start(cov.start, listed), cov.end, written, _stored_minutes(conn, sid)
        )

        def is_stored(ms: int) -> bool:
            return conn.execute(_STORED_SQL, (sid, ms)).fetchone() is not None

        plan = plan_hole_runs(cov, runs, touching, is_stored=is_stored, now_ms=now)
        conn.executemany(
            "DELETE FROM gaps WHERE symbol_id = ? AND start = ?", [(sid, h.start) for h in touching]
        )
        conn.executemany(
            'INSERT INTO gaps (symbol_id, start, "end", kind, detected_at) VALUES (?, ?, ?, ?, ?)',
            [(sid, h.start, h.end, h.kind, h.detected_at) for h in plan.rows],
        )
        return plan.new

    def _holes(self, conn: sqlite3.Connection, sid: int, start_ms: int, end_ms: int) -> list[Hole]:
        rows = conn.execute(
            'SELECT start, "end", kind, detected_at FROM gaps '
            'WHERE symbol_id = ? AND start < ? AND "end" >= ? ORDER BY start',
            (sid, end_ms, start_ms),
        ).fetchall()
        return [Hole(int(a), int(b), gap_kind(k), int(d)) for a, b, k, d in rows]

    def holes(self, symbol: str, start_ms: int, end_ms: int) -> list[Hole]:
        """Recorded holes overlapping [start_ms, end_ms)."""
        return self._holes(self.conn, self._symbol_id(symbol), start_ms, end_ms)

    def gap_report(self, symbol: str, start_ms: int, end_ms: int) -> GapReport:
        """[start_ms, end_ms) accounted for: stored, halted, and every missing minute with its kind
        (minutes before the exchange's first candle are not expected)."""
        sid = self._symbol_id(symbol)
        listed = self.conn.execute("SELECT first_candle_ms FROM symbols WHERE id = ?", (sid,)).fetchone()[0]
        start = listed_start(start_ms, listed)
        end = max(start, end_ms)
        runs = missing_runs_asked(start, end, np.empty(0, dtype=np.int64), _stored_minutes(self.conn, sid))
        halted = self.conn.execute(_HALTED_SQL, (sid, start, end)).fetchone()[0]
        return gap_report_of_runs(
            symbol, start, end, runs, self._holes(self.conn, sid, start, end), halted=int(halted)
        )

    def first_candles(self, symbols: Sequence[str]) -> dict[str, int | None]:
        """Where each symbol's history begins on the exchange, when known."""
        known: dict[str, int | None] = {}
        for symbol in symbols:
            row = self.conn.execute(
                "SELECT first_candle_ms FROM symbols WHERE symbol = ?", (symbol,)
            ).fetchone()
            known[symbol] = None if row is None or row[0] is None else int(row[0])
        return known

    def _symbol_id_in(self, conn: sqlite3.Connection, symbol: str) -> int:
        row = conn.execute("SELECT id FROM symbols WHERE symbol = ?", (symbol,)).fetchone()
        if row is None:
            raise UnknownSymbol(f"symbol {symbol} is not registered; add it with `tradebeat symbols add`")
        return int(row[0])

    def _upsert_one(
        self, conn: sqlite3.Connection, sid: int, candles: pd.DataFrame, ingested_at: int
    ) -> UpsertResult:
        if candles.empty:
            return UpsertResult()
        values = _as_doubles(candles)
        if values is None:
            # Repeated open times (each counted against the stored rows) or integers beyond a
            # double: diff in Python against the stored rows, as for any store.
            diff = diff_candles(candles, self._read(conn, sid, *time_range(candles)))
            conn.executemany(_UPSERT_SQL, _rows(sid, diff.to_write, ingested_at))
            return diff.result
        if conn.execute(_ANY_IN_RANGE_SQL, (sid, *time_range(candles))).fetchone() is None:
            # Nothing stored in the batch's range: every candle is new, no conflict is possible.
            _write_values(conn, sid, values, ingested_at, upsert=False)
            return UpsertResult(inserted=len(values))
        for statement in _CORRECTIONS_SCHEMA:
            conn.execute(statement)
        conn.execute("DELETE FROM corrected_candles")
        written = _write_values(conn, sid, values, ingested_at, upsert=True)
        rows = conn.execute("SELECT timestamp FROM corrected_candles ORDER BY rowid").fetchall()
        corrected = [int(r[0]) for r in rows]
        inserted = written - len(corrected)
        return UpsertResult(inserted, len(corrected), len(candles) - written, corrected)

    def read_candles(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Candles with open time in [start_ms, end_ms), oldest first."""
        return self._read(self.conn, self._symbol_id(symbol), start_ms, end_ms)

    def _read(self, conn: sqlite3.Connection, sid: int, start_ms: int, end_ms: int) -> pd.DataFrame:
        params = (sid, start_ms, end_ms)
        try:
            values = _doubles(conn.execute(_SELECT_RANGE_SQL, params), len(CANDLE_COLUMNS))
            columns = list(CANDLE_COLUMNS)
        except TypeError:  # a NULL (numpy takes no None here): read the columns holding values
            counts = dict(
                zip(CANDLE_COLUMNS, conn.execute(_COUNT_VALUES_SQL, params).fetchone(), strict=True)
            )
            columns = [c for c in CANDLE_COLUMNS if counts[c]]
            cursor = conn.execute(
                f"SELECT {', '.join(columns)} FROM price_data {_RANGE} ORDER BY timestamp", params
            )
            if all(counts[c] == counts["timestamp"] for c in columns):
                values = _doubles(cursor, len(columns))
            else:  # NULLs among values: numpy reads None as NaN from whole rows
                values = np.array(cursor.fetchall(), dtype=np.float64).reshape(-1, len(columns))
        if not len(values):
            return empty_candles()
        return _candle_frame(values, columns, lambda c: _exact_column(conn, c, params))

    def newest_candles(self, symbols: Sequence[str], before_ms: int | None = None) -> dict[str, int | None]:
        """Open time of each symbol's newest stored candle (before `before_ms`; None when none)."""
        newest: dict[str, int | None] = {}
        for symbol in symbols:
            row = self.conn.execute(
                "SELECT max(p.timestamp) FROM symbols AS s LEFT JOIN price_data AS p "
                "ON p.symbol_id = s.id AND p.timestamp < ? WHERE s.symbol = ?",
                (before_ms if before_ms is not None else 2**62, symbol),
            ).fetchone()
            newest[symbol] = None if row is None or row[0] is None else int(row[0])
        return newest

    def upsert_rollups(self, batches: Sequence[tuple[str, str, pd.DataFrame]]) -> int:
        """(symbol, timeframe, buckets) batches in ONE transaction; a bucket is replaced whole."""
        written = 0
        with self._transaction() as conn:
            for symbol, timeframe, frame in batches:
                sid = self._symbol_id_in(conn, symbol)
                n = len(frame)
                columns = _columns(frame.loc[:, list(ROLLUP_COLUMNS)])
                conn.executemany(_UPSERT_ROLLUP_SQL, zip([sid] * n, [timeframe] * n, *columns, strict=True))
                written += n
        return written

    def read_rollups(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Stored buckets with open time in [start_ms, end_ms), oldest first."""
        rows = self.conn.execute(
            f"SELECT {', '.join(ROLLUP_COLUMNS)} FROM rollups WHERE symbol_id = ? AND timeframe = ? "
            "AND timestamp >= ? AND timestamp < ? ORDER BY timestamp",
            (self._symbol_id(symbol), timeframe, start_ms, end_ms),
        ).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=list(ROLLUP_COLUMNS))
        frame["complete"] = frame["complete"].astype(bool)
        return frame

    def candle_span(self, symbol: str) -> tuple[int | None, int | None]:
        """Open times of a symbol's oldest and newest stored candles. Two queries on purpose: SQLite
        answers a lone min() or max() with one primary-key lookup, but both together with a scan."""
        sid = self._symbol_id(symbol)
        first = self.conn.execute(
            "SELECT min(timestamp) FROM price_data WHERE symbol_id = ?", (sid,)
        ).fetchone()
        last = self.conn.execute(
            "SELECT max(timestamp) FROM price_data WHERE symbol_id = ?", (sid,)
        ).fetchone()
        if first[0] is None:
            return None, None
        return int(first[0]), int(last[0])

    def count_candles(self, symbol: str, start_ms: int = 0, end_ms: int = 2**62) -> int:
        """Stored candles with open time in [start_ms, end_ms)."""
        row = self.conn.execute(
            "SELECT count(*) FROM price_data WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ?",
            (self._symbol_id(symbol), start_ms, end_ms),
        ).fetchone()
        return int(row[0])

    def days_changed(self, symbol: str, start_ms: int, end_ms: int, since_ms: int) -> list[int]:
        """Starts of the UTC days in [start_ms, end_ms) holding a candle written at or after `since_ms`."""
        rows = self.conn.execute(
            "SELECT DISTINCT timestamp - timestamp % ? FROM price_data "
            "WHERE symbol_id = ? AND timestamp >= ? AND timestamp < ? AND ingested_at >= ? ORDER BY 1",
            (DAY_MS, self._symbol_id(symbol), start_ms, end_ms, since_ms),
        ).fetchall()
        return [int(r[0]) for r in rows]


def _columns(frame: pd.DataFrame) -> list[list[object]]:
    """Each column as plain Python values for sqlite3 (it rejects numpy scalars): NaN/NA become
    NULL, booleans 0/1; a column without NA skips the slow object conversion."""
    columns: list[list[object]] = []
    for c in frame.columns:
        series = frame[c]
        if series.dtype == bool:
            series = series.astype(int)
        if series.isna().any():
            columns.append(series.astype(object).where(series.notna(), None).tolist())
        else:
            columns.append(series.tolist())
    return columns


def _as_doubles(candles: pd.DataFrame) -> np.ndarray | None:
    """The candles as one row-major float64 matrix in `CANDLE_COLUMNS` order, NaN where a value is
    missing, so each statement binds plain doubles: SQLite stores a NaN as NULL, and its INTEGER
    columns store an integral double as the integer. None when that would not be exact: repeated
    open times, or an integer a double cannot carry."""
    ts = candles["timestamp"].to_numpy(dtype=np.int64)
    ordered = sorted_times(ts)
    if bool(np.any(ordered[1:] == ordered[:-1])):
        return None
    values = np.empty((len(candles), len(CANDLE_COLUMNS)), dtype=np.float64)
    for i, c in enumerate(CANDLE_COLUMNS):
        column = candles[c]
        values[:, i] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if column.dtype.kind != "f" and not _exact_integers(values[:, i]):
            return None  # an integer past 2**53 was rounded: bind the originals instead
    return values


def _exact_integers(column: np.ndarray) -> bool:
    """Every number of a double column converted from integers is below 2**53, so exact."""
    magnitude = np.abs(column[~np.isnan(column)])
    return not len(magnitude) or bool(magnitude.max() < _EXACT_IN_DOUBLE)


def _write_values(
    conn: sqlite3.Connection, sid: int, values: np.ndarray, ingested_at: int, *, upsert: bool
) -> int:
    """Insert (or upsert) the rows of `values` (see `_as_doubles`) as few statements; returns the
    rows inserted or rewritten."""
    variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, min(_ROWS_PER_STATEMENT, (variables - 2) // len(CANDLE_COLUMNS)))
    written = 0
    for first in range(0, len(values), per_statement):
        block = values[first : first + per_statement]
        params = [sid, ingested_at, *block.ravel().tolist()]
        written += conn.execute(_values_insert_sql(len(block), upsert), params).rowcount
    return written


@functools.lru_cache(maxsize=8)
def _values_insert_sql(rows: int, upsert: bool) -> str:
    """The insert (or upsert) of `rows` candles in one statement: symbol id and ingestion time are
    bound once (?1, ?2), then each candle's values in `CANDLE_COLUMNS` order."""
    row = "(" + ", ".join("?" for _ in CANDLE_COLUMNS) + ")"
    picked = ", ".join(f"column{i + 1}" for i in range(len(CANDLE_COLUMNS)))
    sql = (
        f"INSERT INTO price_data ({', '.join(_INSERT_COLUMNS)}) SELECT ?1, {picked}, ?2 "
        f"FROM (VALUES {', '.join([row] * rows)})"
    )
    # `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the INSERT, not to a join.
    return f"{sql} WHERE true {_ON_CONFLICT}" if upsert else sql


def _stored_minutes(conn: sqlite3.Connection, sid: int) -> StoredMinutes:
    """`missing_runs_asked`'s questions about one symbol, as SQLite queries."""

    def aligned_count(start: int, end: int) -> int:
        return int(conn.execute(_ALIGNED_COUNT_SQL, (sid, start, end, MINUTE_MS)).fetchone()[0])

    def first(start: int, end: int) -> int | None:
        (found,) = conn.execute(_FIRST_IN_SQL, (sid, start, end)).fetchone()
        return None if found is None else int(found)

    def gap_edges(start: int, end: int) -> Iterable[tuple[int, int]]:
        return conn.execute(_GAPS_SQL, (end, sid, start, end, MINUTE_MS))

    return StoredMinutes(aligned_count, first, gap_edges)


def _doubles(cursor: Iterable[tuple[object, ...]], width: int) -> np.ndarray:
    """Fetched rows streamed into one float64 matrix: no list of row tuples is kept, so each row's
    objects are freed as soon as numpy has its values. A NULL raises TypeError."""
    return np.fromiter(itertools.chain.from_iterable(cursor), dtype=np.float64).reshape(-1, width)


def _exact_column(conn: sqlite3.Connection, column: str, params: tuple[int, int, int]) -> np.ndarray:
    """One integer column of a range read as Python integers (for values a double cannot carry)."""
    rows = conn.execute(f"SELECT {column} FROM price_data {_RANGE} ORDER BY timestamp", params)
    return np.array([0 if v is None else v for (v,) in rows], dtype=np.int64)


def _candle_frame(
    values: np.ndarray, columns: Sequence[str], exact: Callable[[str], np.ndarray]
) -> pd.DataFrame:
    """A double matrix of `columns` (NULL as NaN) as the contract frame: integer columns back to
    integers, exactly (a double carries them below 2**53; `exact(column)` reads a larger one
    again), and the columns not read NULL throughout."""
    n = len(values)
    frame: dict[str, object] = {}
    for c in CANDLE_COLUMNS:
        if c not in columns:
            missing = np.ones(n, dtype=bool)
            column = np.full(n, np.nan)
        else:
            column = values[:, list(columns).index(c)]
            missing = np.isnan(column)
        if dtype(c) == "float64":
            frame[c] = np.ascontiguousarray(column)
            continue
        integers = np.where(missing, 0.0, column).astype(np.int64) if _exact_integers(column) else exact(c)
        frame[c] = pd.arrays.IntegerArray(integers, missing) if dtype(c) == "Int64" else integers
    return pd.DataFrame(frame, copy=False)


def _rows(sid: int, candles: pd.DataFrame, ingested_at: int) -> Iterator[tuple[object, ...]]:
    n = len(candles)
    return zip([sid] * n, *_columns(candles.loc[:, list(CANDLE_COLUMNS)]), [ingested_at] * n, strict=True)


# mypy fails here as soon as SQLiteStore drifts from the interface every caller is typed against.
_CONFORMS: type[CandleStore] = SQLiteStore
