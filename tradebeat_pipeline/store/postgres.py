"""The shared candle store: PostgreSQL through psycopg 3, one transaction per write (no Dagster inside).

Candles go in with COPY in PostgreSQL's binary format, encoded by numpy (`_copy_stream`): no Python
object is made per value. A write into a range holding no candle yet (a backfill's month) is COPied
straight into `price_data`; any other goes to a temporary table first, from which one UPDATE
rewrites only the rows whose values differ and one INSERT adds the rest. A write locks its symbols'
rows first (in id order), so concurrent writers of one symbol take turns instead of deadlocking and
the new/corrected counts stay exact; a stream that announces its symbols is written as it arrives.
Candles come out as one binary string per column and time span (`_READ_CANDLES_SQL`), decoded by
numpy. Rollups travel as fixed-width binary COPY rows (`_Wire`).
"""

import itertools
import logging
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import psycopg
from psycopg.conninfo import conninfo_to_dict

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
    driver_errors_reported,
    gap_kind,
    listed_start,
    log_corrections,
    minutes_of,
    missing_runs_asked,
    plan_hole_runs,
    refuse_unannounced,
    touching_window,
)
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS

log = logging.getLogger("tradebeat.store")

Conn = psycopg.Connection[tuple[Any, ...]]
Cursor = psycopg.Cursor[tuple[Any, ...]]

SCHEMA_VERSION = 2
VERSION_TABLE = "tradebeat_schema"
# The shared request-weight ledger's table (budget_ledger.py): tradebeat's too, though outside the
# versioned schema, since it is created by the first exchange request rather than the first write.
BUDGET_TABLE = "rate_budget"
# Any process creating or upgrading the schema holds this transaction-level advisory lock.
_SCHEMA_LOCK = 0x7472616465  # "trade"

_GAPS_TABLE = f"""
CREATE TABLE gaps (
    symbol_id integer NOT NULL REFERENCES symbols(id),
    start bigint NOT NULL,
    "end" bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in GAP_KINDS)})),
    detected_at bigint NOT NULL,
    PRIMARY KEY (symbol_id, start)
)"""

_ROLLUPS_TABLE = f"""
CREATE TABLE rollups (
    symbol_id integer NOT NULL REFERENCES symbols(id),
    timeframe text NOT NULL CHECK (timeframe IN ({", ".join(repr(t) for t in ROLLUP_TIMEFRAMES)})),
    timestamp bigint NOT NULL,
    open double precision,
    high double precision,
    low double precision,
    close double precision,
    volume double precision,
    quote_volume double precision,
    trades bigint,
    minutes integer NOT NULL,
    complete boolean NOT NULL,
    PRIMARY KEY (symbol_id, timeframe, timestamp)
)"""

# price_data's symbol_id references symbols(id) as a foreign key would, but checked once per
# statement over the rows it wrote instead of once per row: PostgreSQL's own foreign-key check
# runs a query for every row, which made a full-history write (4.4 M candles) ~3x slower
# (benchmarks/store_speed.py). The referenced symbols are locked FOR KEY SHARE as a foreign key
# locks them, so a symbol cannot be deleted under a write; `symbols` refuses losing an id with
# candles (delete, id change, truncate).
_SYMBOL_REFERENCE: tuple[str, ...] = (
    """CREATE OR REPLACE FUNCTION tradebeat_candles_reference_symbols() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids integer[];
BEGIN
    SELECT array_agg(symbol_id) INTO ids FROM (SELECT symbol_id FROM written GROUP BY symbol_id) AS w;
    IF (SELECT count(*) FROM (SELECT 1 FROM symbols WHERE id = ANY(ids) FOR KEY SHARE) AS held)
        < coalesce(cardinality(ids), 0) THEN
        RAISE EXCEPTION 'price_data rows reference a symbol id missing from symbols'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$""",
    """CREATE OR REPLACE FUNCTION tradebeat_symbols_keep_candles() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM price_data) THEN
            RAISE EXCEPTION 'symbols cannot be truncated while price_data holds candles'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM price_data WHERE symbol_id = OLD.id) THEN
        RAISE EXCEPTION 'symbol % (id %) still has candles in price_data', OLD.symbol, OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$""",
    "CREATE TRIGGER candles_reference_symbols_on_insert AFTER INSERT ON price_data REFERENCING NEW TABLE "
    "AS written FOR EACH STATEMENT EXECUTE FUNCTION tradebeat_candles_reference_symbols()",
    "CREATE TRIGGER candles_reference_symbols_on_update AFTER UPDATE ON price_data REFERENCING NEW TABLE "
    "AS written FOR EACH STATEMENT EXECUTE FUNCTION tradebeat_candles_reference_symbols()",
    "CREATE TRIGGER symbols_keep_candles BEFORE DELETE OR UPDATE OF id ON symbols "
    "FOR EACH ROW EXECUTE FUNCTION tradebeat_symbols_keep_candles()",
    "CREATE TRIGGER symbols_keep_candles_on_truncate BEFORE TRUNCATE ON symbols "
    "FOR EACH STATEMENT EXECUTE FUNCTION tradebeat_symbols_keep_candles()",
)

# The same tables as the SQLite store (sqlite.py), in PostgreSQL's types; statements run in order.
SCHEMA: tuple[str, ...] = (
    f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)",
    """CREATE TABLE symbols (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    symbol text NOT NULL UNIQUE,
    created_at text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    first_candle_ms bigint  -- the exchange's first candle: no minute before it is a hole
)""",
    """CREATE TABLE price_data (
    symbol_id integer NOT NULL,  -- references symbols(id): see _SYMBOL_REFERENCE
    timestamp bigint NOT NULL,
    open double precision,
    high double precision,
    low double precision,
    close double precision,
    volume double precision,
    quote_volume double precision,
    trades bigint,
    taker_buy_volume double precision,
    taker_buy_quote_volume double precision,
    ingested_at bigint NOT NULL,
    PRIMARY KEY (symbol_id, timestamp)
)""",
    *_SYMBOL_REFERENCE,
    """CREATE VIEW candles AS
SELECT s.symbol AS symbol,
       to_char(to_timestamp(p.timestamp / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS time_utc,
       p.open, p.high, p.low, p.close, p.volume
FROM price_data AS p JOIN symbols AS s ON s.id = p.symbol_id""",
    _GAPS_TABLE,
    _ROLLUPS_TABLE,
)
# Steps from each older version to the next, run in one transaction with the version bump.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE price_data DROP CONSTRAINT price_data_symbol_id_fkey", *_SYMBOL_REFERENCE),
}


Kind = Literal["int4", "int8", "float8", "bool"]
_NUMPY: dict[Kind, str] = {"int4": ">i4", "int8": ">i8", "float8": ">f8", "bool": "u1"}
_SQL_TYPE: dict[Kind, str] = {
    "int4": "integer",
    "int8": "bigint",
    "float8": "double precision",
    "bool": "boolean",
}
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, no flags, no header extension
_COPY_TRAILER = b"\xff\xff"
_NULL_FLAG = "_null"


@dataclass(frozen=True)
class _Column:
    """One column of a binary COPY stream: its values in any numeric dtype, and where they are NULL."""

    kind: Kind
    values: np.ndarray
    missing: np.ndarray | None = None

    def take(self, rows: np.ndarray | slice) -> "_Column":
        """The column at `rows` (positions or a slice)."""
        return _Column(self.kind, self.values[rows], None if self.missing is None else self.missing[rows])


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) positions of `n` rows cut into blocks of at most `size`."""
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


# Rows encoded at a time: a block's buffer stays in the CPU's caches, which made encoding a
# full history (4.4 M rows) ~10x faster than one array of it, and the server parses each block
# while the next is encoded.
_COPY_BLOCK_ROWS = 65_536


def _copy_stream(columns: Sequence[_Column]) -> Iterator[memoryview | bytes]:
    """A binary COPY stream from columns of equal length, a block of rows at a time, built by
    numpy: each row a copy of one template (field count, every field's length), its values put in
    big-endian; where some are NULL, their values are taken out and their length set to -1."""
    parts: list[tuple[str, str]] = [("count", ">i2")]
    for i, column in enumerate(columns):
        parts += [(f"len{i}", ">i4"), (f"value{i}", _NUMPY[column.kind])]
    layout = np.dtype(parts)
    template = np.zeros(1, dtype=layout)
    template["count"] = len(columns)
    for i in range(len(columns)):
        template[f"len{i}"] = layout[f"value{i}"].itemsize
    offsets = {name: field[1] for name, field in (layout.fields or {}).items()}
    yield _COPY_HEADER
    n = len(columns[0].values)
    for lo in range(0, n, _COPY_BLOCK_ROWS):
        hi = min(n, lo + _COPY_BLOCK_ROWS)
        rows = np.repeat(template, hi - lo)
        nulls: list[tuple[int, np.ndarray]] = []
        for i, column in enumerate(columns):
            rows[f"value{i}"] = column.values[lo:hi]
            missing = None if column.missing is None else column.missing[lo:hi]
            if missing is not None and missing.any():
                rows[f"len{i}"][missing] = -1
                nulls.append((i, missing))
        raw = rows.view(np.uint8).reshape(hi - lo, layout.itemsize)
        if nulls:
            keep = np.ones(raw.shape, dtype=bool)
            for i, missing in nulls:
                offset, size = offsets[f"value{i}"], layout[f"value{i}"].itemsize
                keep[missing, offset : offset + size] = False
            raw = raw[keep]
        yield raw.reshape(-1).data
    yield _COPY_TRAILER


def _copy_in(cur: Cursor, table: str, columns: dict[str, _Column]) -> None:
    """COPY `columns` (by name) into `table`, the columns not named taking their default (NULL)."""
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"
    with cur.copy(statement) as copy:
        for block in _copy_stream(list(columns.values())):
            copy.write(block)


def _candle_columns(candles: pd.DataFrame) -> dict[str, _Column]:
    """The contract columns of a batch for `_copy_stream`, a NaN or NA as NULL (as SQLite stores a
    NaN); a column NULL throughout is left out, so the table's NULL default fills it for free."""
    columns: dict[str, _Column] = {}
    for c in CANDLE_COLUMNS:
        series = candles[c]
        if dtype(c) == "float64":
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            missing = np.isnan(values)
        else:
            missing = series.isna().to_numpy(dtype=bool)
            values = series.to_numpy(dtype=np.int64, na_value=0)
        if c == "timestamp" or not missing.all():
            columns[c] = _Column("int8" if dtype(c) != "float64" else "float8", values, missing)
    return columns


@dataclass(frozen=True)
class _Wire:
    """A frame's columns as fixed-width binary COPY rows (rollups). `nullable` integer columns
    travel with a `<name>_null` flag column after them; NULL floats travel as NaN."""

    columns: tuple[tuple[str, Kind], ...]
    nullable: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[tuple[str, Kind], ...]:
        """The columns on the wire, flag columns included."""
        out: list[tuple[str, Kind]] = []
        for name, kind in self.columns:
            out.append((name, kind))
            if name in self.nullable:
                out.append((name + _NULL_FLAG, "bool"))
        return tuple(out)

    @property
    def dtype(self) -> np.dtype:
        parts: list[tuple[str, str]] = [("_n", ">i2")]
        for name, kind in self.fields:
            parts += [(name + "_len", ">i4"), (name, _NUMPY[kind])]
        return np.dtype(parts)

    def select_list(self) -> str:
        """SELECT expressions that never yield NULL, in wire order and of the wire's types."""
        exprs = []
        for name, kind in self.columns:
            if name in self.nullable:
                exprs += [f"coalesce({name}, 0)::{_SQL_TYPE[kind]}", f"{name} IS NULL"]
            elif kind == "float8":
                exprs.append(f"coalesce({name}, 'NaN')::{_SQL_TYPE[kind]}")
            else:
                exprs.append(f"{name}::{_SQL_TYPE[kind]}")
        return ", ".join(exprs)

    def value_list(self) -> str:
        """Expressions over a table loaded from the wire that restore the NULLs, in column order."""
        exprs = []
        for name, kind in self.columns:
            if name in self.nullable:
                exprs.append(f"CASE WHEN {name}{_NULL_FLAG} THEN NULL ELSE {name} END")
            elif kind == "float8":
                exprs.append(f"NULLIF({name}, 'NaN')")
            else:
                exprs.append(name)
        return ", ".join(exprs)

    def temp_table(self, table: str) -> str:
        columns = ", ".join(f"{name} {_SQL_TYPE[kind]}" for name, kind in self.fields)
        return f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS"

    def encode(self, frame: pd.DataFrame) -> bytes:
        """The frame as a complete binary COPY stream."""
        dtype = self.dtype
        rows = np.empty(len(frame), dtype=dtype)
        rows["_n"] = len(self.fields)
        for name, kind in self.columns:
            series = frame[name]
            if name in self.nullable:
                missing = series.isna().to_numpy(dtype=bool)
                rows[name] = series.where(~missing, 0).to_numpy(dtype=np.int64)
                rows[name + _NULL_FLAG] = missing
            elif kind == "float8":
                rows[name] = series.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                rows[name] = series.to_numpy(dtype=np.int64 if kind == "int8" else bool)
        for name, _ in self.fields:
            rows[name + "_len"] = dtype[name].itemsize
        return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER

    def decode(self, data: bytes) -> dict[str, np.ndarray]:
        """Native-endian columns (and flag columns) of a binary COPY stream from `select_list`."""
        dtype = self.dtype
        body = memoryview(data)[len(_COPY_HEADER) : len(data) - len(_COPY_TRAILER)]
        if bytes(data[: len(_COPY_HEADER)]) != _COPY_HEADER or len(body) % dtype.itemsize:
            raise StoreError(f"unexpected binary COPY layout ({len(data)} bytes)")
        rows = np.frombuffer(body, dtype=dtype)
        widths_ok = (rows["_n"] == len(self.fields)).all() and all(
            (rows[name + "_len"] == dtype[name].itemsize).all() for name, _ in self.fields
        )
        if not widths_ok:
            raise StoreError("unexpected binary COPY layout (a field of unexpected width)")
        return {name: rows[name].astype(dtype[name].newbyteorder("=")) for name, _ in self.fields}


_ROLLUP_WIRE = _Wire(
    tuple(
        (c, "bool" if c == "complete" else "int8" if c in ("timestamp", "trades", "minutes") else "float8")
        for c in ROLLUP_COLUMNS
    ),
    nullable=("trades",),
)

_INCOMING_CANDLES = "tradebeat_incoming_candles"
_INCOMING_CANDLES_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_INCOMING_CANDLES} ("
    + ", ".join(f"{c} {'double precision' if dtype(c) == 'float64' else 'bigint'}" for c in CANDLE_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_INCOMING_ROLLUPS = "tradebeat_incoming_rollups"
_PRICE_COLUMNS = ("symbol_id", *CANDLE_COLUMNS, "ingested_at")
_RANGE = "WHERE symbol_id = %s AND timestamp >= %s AND timestamp < %s"
_ANY_IN_RANGE_SQL = f"SELECT EXISTS (SELECT 1 FROM price_data {_RANGE})"
# Both statements work on one block of the incoming rows, in [%(lo)s, %(hi)s): the writer holds
# its symbol's row lock, so no other writer adds or changes these rows meanwhile, and the counts
# are exact. Only rows whose values differ are rewritten, so an unchanged row keeps its first
# `ingested_at`.
_BLOCK = "AND p.timestamp >= %(lo)s AND p.timestamp < %(hi)s"
_CORRECT_CANDLES_SQL = (
    f"UPDATE price_data AS p SET ({', '.join((*VALUE_COLUMNS, 'ingested_at'))}) = "
    f"({', '.join(f'i.{c}' for c in VALUE_COLUMNS)}, %(now)s) FROM {_INCOMING_CANDLES} AS i "
    f"WHERE p.symbol_id = %(sid)s AND p.timestamp = i.timestamp {_BLOCK} "
    f"AND ({', '.join(f'p.{c}' for c in VALUE_COLUMNS)}) "
    f"IS DISTINCT FROM ({', '.join(f'i.{c}' for c in VALUE_COLUMNS)}) RETURNING p.timestamp"
)
_ADD_CANDLES_SQL = (
    f"INSERT INTO price_data ({', '.join(_PRICE_COLUMNS)}) "
    f"SELECT %(sid)s, {', '.join(f'i.{c}' for c in CANDLE_COLUMNS)}, %(now)s FROM {_INCOMING_CANDLES} AS i "
    "WHERE NOT EXISTS (SELECT 1 FROM price_data AS p "
    f"WHERE p.symbol_id = %(sid)s AND p.timestamp = i.timestamp {_BLOCK}) ORDER BY i.timestamp"
)
# Incoming rows diffed against the stored ones at a time: the joins' hash tables then fit in the
# server's default work_mem, which made rewriting a full history ~2x faster than one block of it.
_DIFF_BLOCK_ROWS = 32_768


def _column_bytes(column: str) -> str:
    """One column of a range as one binary string of its big-endian values, NULL as NaN for a
    float (pandas' NULL) and 0 for an integer (told by its own flag column, `_null`)."""
    if dtype(column) == "float64":
        return f"string_agg(float8send(coalesce({column}, 'NaN')), '')"
    if dtype(column) == "Int64":
        return f"string_agg(int8send(coalesce({column}, 0)), ''), string_agg(boolsend({column} IS NULL), '')"
    return f"string_agg(int8send({column}), '')"


# A read returns one row per time span: the row count, then each column as one binary string
# (`_column_bytes`), in the order rows were scanned (the reader sorts them should a scan not have
# followed the key). No Python object is made per value, and the server builds strings of at most
# a span's worth of rows (`_READ_SPAN_MS`) however long the range.
_READ_CANDLES_SQL = (
    f"SELECT count(*), {', '.join(_column_bytes(c) for c in CANDLE_COLUMNS)} "
    f"FROM (SELECT {', '.join(CANDLE_COLUMNS)} FROM price_data {_RANGE}) AS r"
)
_READ_SPAN_MS = 366 * DAY_MS  # ~527,000 one-minute rows: a symbol-year in one row, ~4 MB a column
_READ_ROLLUPS_SQL = (
    f"COPY (SELECT {_ROLLUP_WIRE.select_list()} FROM rollups WHERE symbol_id = %s AND timeframe = %s "
    "AND timestamp >= %s AND timestamp < %s ORDER BY timestamp) TO STDOUT (FORMAT binary)"
)
_MERGE_ROLLUPS_SQL = (
    f"INSERT INTO rollups (symbol_id, timeframe, {', '.join(ROLLUP_COLUMNS)}) "
    f"SELECT %s, %s, {_ROLLUP_WIRE.value_list()} FROM {_INCOMING_ROLLUPS} ORDER BY timestamp "
    "ON CONFLICT (symbol_id, timeframe, timestamp) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ROLLUP_COLUMNS[1:])
)
_STORED_SQL = "SELECT 1 FROM price_data WHERE symbol_id = %s AND timestamp = %s"
# A window's whole minutes and halted minutes in one scan (the gap report needs both).
_ALIGNED_AND_HALTED_SQL = (
    "SELECT count(*) FILTER (WHERE timestamp %% %s = 0), "
    "count(*) FILTER (WHERE open = high AND high = low AND low = close AND volume = 0) "
    f"FROM price_data {_RANGE}"
)
_FIRST_IN_SQL = f"SELECT min(timestamp) FROM price_data {_RANGE}"
_GAPS_SQL = (
    "SELECT timestamp, next FROM (SELECT timestamp, lead(timestamp, 1, %s) OVER (ORDER BY timestamp) AS next "
    f"FROM price_data {_RANGE}) AS stored WHERE next - timestamp > %s ORDER BY timestamp"
)
_HOLES_SQL = (
    'SELECT start, "end", kind, detected_at FROM gaps '
    'WHERE symbol_id = %s AND start < %s AND "end" >= %s ORDER BY start'
)


def describe(url: str) -> str:
    """`postgresql://host:port/database` of a URL: what messages name, never the user or password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "DATABASE_URL (not a valid PostgreSQL URL)"
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"DATABASE_URL postgresql://{host}{port}/{parts.get('dbname') or ''}"


def _password(url: str) -> str | None:
    try:
        return str(conninfo_to_dict(url).get("password") or "") or None
    except psycopg.Error:
        return None


def _one(conn: Conn | Cursor, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    if row is None:
        raise StoreError(f"query returned no row: {sql.split(' FROM ')[0]}")
    return row


def _copy_out(conn: Conn, sql: str, params: Sequence[object]) -> bytes:
    with conn.cursor() as cur, cur.copy(sql, params) as copy:
        return b"".join(copy)


def _copy_wire_in(conn: Conn, wire: _Wire, table: str, frame: pd.DataFrame) -> None:
    """Load a frame into an empty session-private table `table` shaped like `wire`."""
    conn.execute(wire.temp_table(table))
    conn.execute(f"TRUNCATE {table}")
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
        copy.write(wire.encode(frame))


# What `_READ_CANDLES_SQL` returns after its count, column by column.
_READ_NAMES: tuple[str, ...] = tuple(
    n for c in CANDLE_COLUMNS for n in ((c, c + _NULL_FLAG) if dtype(c) == "Int64" else (c,))
)
_READ_KINDS: tuple[Kind, ...] = tuple(
    "bool" if n.endswith(_NULL_FLAG) else "float8" if dtype(n) == "float64" else "int8" for n in _READ_NAMES
)


def _big_endian(data: bytes, kind: Kind) -> np.ndarray:
    """A column of `_READ_CANDLES_SQL` (big-endian values back to back) as a native numpy array."""
    wire = np.dtype(_NUMPY[kind])
    if len(data) % wire.itemsize:
        raise StoreError(f"unexpected read layout ({len(data)} bytes of {kind})")
    return np.frombuffer(data, dtype=wire).astype(wire.newbyteorder("="))


# psycopg's exceptions stop at every public method, as a StoreError naming host and database only.
@driver_errors_reported(psycopg.Error, lambda store: store.where, secret=lambda store: store._secret)
class PostgresStore:
    """PostgreSQL: many processes on many machines share one store; one transaction per write."""

    def __init__(self, url: str, *, connect_timeout_s: int = 10) -> None:
        self.url = url
        self.where = describe(url)
        self._secret = _password(url)
        self.connect_timeout_s = connect_timeout_s
        self._conn: Conn | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.where})"

    def __enter__(self) -> "PostgresStore":
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
    def conn(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._open()
        return self._conn

    def _open(self) -> Conn:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self.connect_timeout_s,
                application_name="tradebeat",
            )
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot connect ({self._scrub(str(exc).strip())})") from exc
        try:
            self._create_or_migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _create_or_migrate(self, conn: Conn) -> None:
        """Create the schema in an empty database, or upgrade an older one step by step, atomically;
        refuse another application's database or a newer schema before touching anything."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
                )
            }
            if VERSION_TABLE not in tables:
                if tables - {BUDGET_TABLE}:
                    raise StoreError(
                        f"{self.where} holds another application's tables ({', '.join(sorted(tables))}); "
                        "point DATABASE_URL at a new, empty database"
                    )
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (SCHEMA_VERSION,))
                log.info("%s: created the tradebeat schema, version %d", self.where, SCHEMA_VERSION)
                return
            foreign = tables - {*STORE_TABLES, VERSION_TABLE, BUDGET_TABLE}
            if foreign:
                raise StoreError(
                    f"{self.where} holds another application's tables ({', '.join(sorted(foreign))}) "
                    "beside tradebeat's; point DATABASE_URL at a database of its own"
                )
            (version,) = _one(conn, f"SELECT max(version) FROM {VERSION_TABLE}")
            if version is None or version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} has schema version {version}, newer than this tradebeat understands "
                    f"({SCHEMA_VERSION}); upgrade tradebeat instead of downgrading data"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
                conn.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (step + 1,))
                log.info("%s: schema upgraded from version %d to %d", self.where, step, step + 1)

    @contextmanager
    def _transaction(self) -> Iterator[Conn]:
        """One write transaction (READ COMMITTED; writers of a symbol serialise on its row lock)."""
        conn = self.conn
        with conn.transaction():
            yield conn

    def _lock_symbols(self, conn: Conn, symbols: Sequence[str]) -> dict[str, tuple[int, int | None]]:
        """(id, first_candle_ms) of each symbol, its row locked until the transaction ends; locks
        are taken in id order, so two writers never wait on each other in a circle."""
        wanted = sorted(set(symbols))
        locked = {
            r[0]: (int(r[1]), None if r[2] is None else int(r[2]))
            for r in conn.execute(
                "SELECT symbol, id, first_candle_ms FROM symbols WHERE symbol = ANY(%s) "
                "ORDER BY id FOR NO KEY UPDATE",
                (wanted,),
            )
        }
        for symbol in symbols:
            if symbol not in locked:
                raise UnknownSymbol(f"symbol {symbol} is not registered; add it with `tradebeat symbols add`")
        return locked

    # -- symbols -----------------------------------------------------------------------------

    def register_symbol(self, symbol: str) -> int:
        """Add a symbol, or reactivate it; its stored data is kept either way."""
        with self._transaction() as conn:
            (sid,) = _one(
                conn,
                "INSERT INTO symbols (symbol, created_at, is_active) VALUES (%s, %s, true) "
                "ON CONFLICT (symbol) DO UPDATE SET is_active = true RETURNING id",
                (symbol, created_now()),
            )
        return int(sid)

    def deactivate_symbol(self, symbol: str) -> bool:
        """Mark a symbol inactive; returns False if it was never registered."""
        with self._transaction() as conn:
            cur = conn.execute("UPDATE symbols SET is_active = false WHERE symbol = %s", (symbol,))
        return cur.rowcount > 0

    def _symbol_id(self, symbol: str) -> int:
        row = self.conn.execute("SELECT id FROM symbols WHERE symbol = %s", (symbol,)).fetchone()
        if row is None:
            raise UnknownSymbol(f"symbol {symbol} is not registered; add it with `tradebeat symbols add`")
        return int(row[0])

    def active_symbols(self) -> set[str]:
        """The active symbols, without `list_symbols`'s per-symbol candle counts (hot path)."""
        return {r[0] for r in self.conn.execute("SELECT symbol FROM symbols WHERE is_active")}

    def list_symbols(self, *, active: bool | None = True) -> list[SymbolRow]:
        """Symbols with their stored span and candle count; `active=None` lists all of them."""
        where = "" if active is None else "WHERE s.is_active = %s"
        params: tuple[bool, ...] = () if active is None else (active,)
        rows = self.conn.execute(
            "SELECT s.symbol, s.created_at, s.is_active, "
            "(SELECT min(timestamp) FROM price_data WHERE symbol_id = s.id), "
            "(SELECT max(timestamp) FROM price_data WHERE symbol_id = s.id), "
            "(SELECT count(*) FROM price_data WHERE symbol_id = s.id) "
            f"FROM symbols AS s {where} ORDER BY s.id",
            params,
        ).fetchall()
        return [
            SymbolRow(r[0], r[1], bool(r[2]), None if r[3] is None else int(r[3]), r[4], int(r[5]))
            for r in rows
        ]

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
        against exactly the candles stored with it, and a crash leaves neither. The symbols are
        locked first, in one order: those announced in `symbols` once the first part is here (so
        a stream is written as it arrives), else those of the parts, after awaiting them all."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        results: dict[str, UpsertResult] = {}
        arriving = iter(writes)
        if symbols is None:
            parts = list(arriving)
            wanted = list(dict.fromkeys(w.symbol for w in parts))
            arriving = iter(parts)
        else:
            wanted = list(symbols)
        first = next(arriving, None)  # nothing is locked while the first part is on its way
        if first is None:
            return results
        with self._transaction() as conn:
            locked = self._lock_symbols(conn, wanted)
            for write in itertools.chain([first], arriving):
                refuse_unannounced(write, symbols)
                sid, listed = locked[write.symbol]
                if write.first_candle_ms is not None and listed is None:
                    conn.execute(
                        "UPDATE symbols SET first_candle_ms = %s WHERE id = %s", (write.first_candle_ms, sid)
                    )
                    listed = write.first_candle_ms
                    locked[write.symbol] = (sid, listed)
                result = self._upsert_one(conn, sid, write.candles, now)
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

    def _upsert_one(self, conn: Conn, sid: int, candles: pd.DataFrame, ingested_at: int) -> UpsertResult:
        """One symbol's candles, in time order: straight into `price_data` where their range holds
        none yet, else a block at a time through the temporary table, rewriting only the rows
        that differ and adding the new ones."""
        if candles.empty:
            return UpsertResult()
        columns = _candle_columns(candles)
        arrived = columns["timestamp"].values
        if not bool(np.all(arrived[1:] >= arrived[:-1])):
            order = np.argsort(arrived, kind="stable")
            columns = {name: column.take(order) for name, column in columns.items()}
        ts = columns["timestamp"].values
        n, inserted, changed = len(ts), 0, []
        if not self._any_stored(conn, sid, ts):
            self._copy_new(conn, sid, columns, ingested_at)
            return UpsertResult(inserted=n)
        for lo, hi in _blocks(n, _DIFF_BLOCK_ROWS):
            block = {name: column.take(slice(lo, hi)) for name, column in columns.items()}
            if not self._any_stored(conn, sid, ts[lo:hi]):
                self._copy_new(conn, sid, block, ingested_at)
                inserted += hi - lo
                continue
            conn.execute(_INCOMING_CANDLES_TABLE)
            conn.execute(f"TRUNCATE {_INCOMING_CANDLES}")
            with conn.cursor() as cur:
                _copy_in(cur, _INCOMING_CANDLES, block)
            params = {"sid": sid, "now": ingested_at, "lo": int(ts[lo]), "hi": int(ts[hi - 1]) + 1}
            changed += [int(r[0]) for r in conn.execute(_CORRECT_CANDLES_SQL, params).fetchall()]
            inserted += conn.execute(_ADD_CANDLES_SQL, params).rowcount
        # Corrections are reported in the order the batch brought them.
        corrected = arrived[np.isin(arrived, np.array(changed, dtype=np.int64))].tolist() if changed else []
        return UpsertResult(inserted, len(corrected), n - inserted - len(corrected), corrected)

    def _any_stored(self, conn: Conn, sid: int, ts: np.ndarray) -> bool:
        """Whether any candle is stored between the first and last of these sorted open times."""
        (stored,) = _one(conn, _ANY_IN_RANGE_SQL, (sid, int(ts[0]), int(ts[-1]) + 1))
        return bool(stored)

    def _copy_new(self, conn: Conn, sid: int, columns: dict[str, _Column], ingested_at: int) -> None:
        """COPY candles whose range holds none yet straight into `price_data`."""
        n = len(columns["timestamp"].values)
        row = {"symbol_id": _Column("int4", np.full(n, sid))}
        stamp = {"ingested_at": _Column("int8", np.full(n, ingested_at))}
        with conn.cursor() as cur:
            _copy_in(cur, "price_data", {**row, **columns, **stamp})

    def _record_holes(
        self, conn: Conn, sid: int, cov: Coverage, listed: int | None, now: int, written: np.ndarray
    ) -> list[Hole]:
        """Replace what is recorded inside the fetched window with what this fetch showed;
        `written` are the minute open times just stored, sorted."""
        touching = self._holes(conn, sid, *touching_window(cov))
        start = listed_start(cov.start, listed)
        runs = missing_runs_asked(start, cov.end, written, self._stored_minutes(conn, sid))

        def is_stored(ms: int) -> bool:
            return conn.execute(_STORED_SQL, (sid, ms)).fetchone() is not None

        plan = plan_hole_runs(cov, runs, touching, is_stored=is_stored, now_ms=now)
        with conn.cursor() as cur:
            cur.executemany(
                "DELETE FROM gaps WHERE symbol_id = %s AND start = %s", [(sid, h.start) for h in touching]
            )
            cur.executemany(
                'INSERT INTO gaps (symbol_id, start, "end", kind, detected_at) VALUES (%s, %s, %s, %s, %s)',
                [(sid, h.start, h.end, h.kind, h.detected_at) for h in plan.rows],
            )
        return plan.new

    def _stored_minutes(self, conn: Conn, sid: int, *, halted: list[int] | None = None) -> StoredMinutes:
        """`missing_runs_asked`'s questions about one symbol, as queries; with `halted`, the scan
        counting the whole minutes also counts the halted ones into it."""

        def aligned_count(start: int, end: int) -> int:
            aligned, flat = _one(conn, _ALIGNED_AND_HALTED_SQL, (MINUTE_MS, sid, start, end))
            if halted is not None:
                halted.append(int(flat))
            return int(aligned)

        def first(start: int, end: int) -> int | None:
            (found,) = _one(conn, _FIRST_IN_SQL, (sid, start, end))
            return None if found is None else int(found)

        def gap_edges(start: int, end: int) -> Iterable[tuple[int, int]]:
            return [(int(a), int(b)) for a, b in conn.execute(_GAPS_SQL, (end, sid, start, end, MINUTE_MS))]

        return StoredMinutes(aligned_count, first, gap_edges)

    def _holes(self, conn: Conn, sid: int, start_ms: int, end_ms: int) -> list[Hole]:
        rows = conn.execute(_HOLES_SQL, (sid, end_ms, start_ms)).fetchall()
        return [Hole(int(a), int(b), gap_kind(k), int(d)) for a, b, k, d in rows]

    def holes(self, symbol: str, start_ms: int, end_ms: int) -> list[Hole]:
        """Recorded holes overlapping [start_ms, end_ms)."""
        return self._holes(self.conn, self._symbol_id(symbol), start_ms, end_ms)

    def gap_report(self, symbol: str, start_ms: int, end_ms: int) -> GapReport:
        """[start_ms, end_ms) accounted for: stored, halted, and every missing minute with its kind
        (minutes before the exchange's first candle are not expected)."""
        conn = self.conn
        sid = self._symbol_id(symbol)
        (listed,) = _one(conn, "SELECT first_candle_ms FROM symbols WHERE id = %s", (sid,))
        start = listed_start(start_ms, listed)
        end = max(start, end_ms)
        halted: list[int] = []
        runs = missing_runs_asked(
            start, end, np.empty(0, dtype=np.int64), self._stored_minutes(conn, sid, halted=halted)
        )
        if not halted:  # the window was not minute-aligned or empty: nothing counted them yet
            halted.append(int(_one(conn, _ALIGNED_AND_HALTED_SQL, (MINUTE_MS, sid, start, end))[1]))
        return gap_report_of_runs(
            symbol, start, end, runs, self._holes(conn, sid, start, end), halted=halted[0]
        )

    def first_candles(self, symbols: Sequence[str]) -> dict[str, int | None]:
        """Where each symbol's history begins on the exchange, when known."""
        rows = self.conn.execute(
            "SELECT symbol, first_candle_ms FROM symbols WHERE symbol = ANY(%s)", (list(symbols),)
        ).fetchall()
        known = {r[0]: None if r[1] is None else int(r[1]) for r in rows}
        return {symbol: known.get(symbol) for symbol in symbols}

    def read_candles(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Candles with open time in [start_ms, end_ms), oldest first."""
        return self._read(self.conn, self._symbol_id(symbol), start_ms, end_ms)

    def _read(self, conn: Conn, sid: int, start_ms: int, end_ms: int) -> pd.DataFrame:
        """The range a span at a time (`_READ_CANDLES_SQL`), each column decoded by numpy."""
        spans: list[list[np.ndarray]] = []
        with conn.cursor(binary=True) as cur:
            for lo in range(start_ms, end_ms, _READ_SPAN_MS):
                count, *columns = _one(cur, _READ_CANDLES_SQL, (sid, lo, min(end_ms, lo + _READ_SPAN_MS)))
                if count:
                    spans.append(
                        [_big_endian(data, kind) for data, kind in zip(columns, _READ_KINDS, strict=True)]
                    )
        if not spans:
            return empty_candles()
        values = [np.concatenate(parts) for parts in zip(*spans, strict=True)]
        if len({len(v) for v in values}) != 1:
            raise StoreError("unexpected read layout (columns of different lengths)")
        ts = values[0]
        if not bool(np.all(ts[1:] > ts[:-1])):  # the scan did not follow the key: sort by time
            order = np.argsort(ts, kind="stable")
            values = [v[order] for v in values]
        by_name = dict(zip(_READ_NAMES, values, strict=True))
        frame: dict[str, object] = {}
        for c in CANDLE_COLUMNS:
            if dtype(c) == "Int64":
                frame[c] = pd.arrays.IntegerArray(by_name[c], by_name[c + _NULL_FLAG].astype(bool))
            else:
                frame[c] = by_name[c]
        return pd.DataFrame(frame, copy=False)

    def newest_candles(self, symbols: Sequence[str], before_ms: int | None = None) -> dict[str, int | None]:
        """Open time of each symbol's newest stored candle (before `before_ms`; None when none)."""
        newest: dict[str, int | None] = {}
        for symbol in symbols:
            (last,) = _one(
                self.conn,
                "SELECT max(p.timestamp) FROM (SELECT %s::text AS symbol) AS wanted "
                "LEFT JOIN symbols AS s ON s.symbol = wanted.symbol "
                "LEFT JOIN price_data AS p ON p.symbol_id = s.id AND p.timestamp < %s",
                (symbol, before_ms if before_ms is not None else 2**62),
            )
            newest[symbol] = None if last is None else int(last)
        return newest

    def upsert_rollups(self, batches: Sequence[tuple[str, str, pd.DataFrame]]) -> int:
        """(symbol, timeframe, buckets) batches in ONE transaction; a bucket is replaced whole."""
        written = 0
        with self._transaction() as conn:
            symbols = self._lock_symbols(conn, [symbol for symbol, _, _ in batches])
            for symbol, timeframe, frame in batches:
                if len(frame):
                    _copy_wire_in(conn, _ROLLUP_WIRE, _INCOMING_ROLLUPS, frame.loc[:, list(ROLLUP_COLUMNS)])
                    conn.execute(_MERGE_ROLLUPS_SQL, (symbols[symbol][0], timeframe))
                written += len(frame)
        return written

    def read_rollups(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Stored buckets with open time in [start_ms, end_ms), oldest first; trade counts are
        integers, or floats with NaN where one is unknown (as the SQLite store returns them)."""
        data = _copy_out(self.conn, _READ_ROLLUPS_SQL, (self._symbol_id(symbol), timeframe, start_ms, end_ms))
        columns = _ROLLUP_WIRE.decode(data)
        missing = columns.pop("trades" + _NULL_FLAG).astype(bool)
        if missing.any():
            columns["trades"] = np.where(missing, np.nan, columns["trades"].astype(np.float64))
        columns["complete"] = columns["complete"].astype(bool)
        return pd.DataFrame(columns, copy=False).loc[:, list(ROLLUP_COLUMNS)]

    def candle_span(self, symbol: str) -> tuple[int | None, int | None]:
        """Open times of a symbol's oldest and newest stored candles (two primary-key lookups)."""
        first, last = _one(
            self.conn,
            "SELECT min(timestamp), max(timestamp) FROM price_data WHERE symbol_id = %s",
            (self._symbol_id(symbol),),
        )
        if first is None:
            return None, None
        return int(first), int(last)

    def count_candles(self, symbol: str, start_ms: int = 0, end_ms: int = 2**62) -> int:
        """Stored candles with open time in [start_ms, end_ms)."""
        (count,) = _one(
            self.conn,
            "SELECT count(*) FROM price_data WHERE symbol_id = %s AND timestamp >= %s AND timestamp < %s",
            (self._symbol_id(symbol), start_ms, end_ms),
        )
        return int(count)

    def days_changed(self, symbol: str, start_ms: int, end_ms: int, since_ms: int) -> list[int]:
        """Starts of the UTC days in [start_ms, end_ms) holding a candle written at or after `since_ms`."""
        rows = self.conn.execute(
            "SELECT DISTINCT timestamp / %s * %s FROM price_data "
            "WHERE symbol_id = %s AND timestamp >= %s AND timestamp < %s AND ingested_at >= %s ORDER BY 1",
            (DAY_MS, DAY_MS, self._symbol_id(symbol), start_ms, end_ms, since_ms),
        ).fetchall()
        return [int(r[0]) for r in rows]


# mypy fails here as soon as PostgresStore drifts from the interface every caller is typed against.
_CONFORMS: type[CandleStore] = PostgresStore
