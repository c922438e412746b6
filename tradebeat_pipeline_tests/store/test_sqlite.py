"""The SQLite store: schema, idempotent upserts, corrections, and refusing files it must not touch."""

import inspect
import os
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.errors import Failed
from tradebeat_pipeline.quality import Coverage, Hole
from tradebeat_pipeline.store import CandleStore, StoreError, SymbolWrite, UnknownSymbol, open_store
from tradebeat_pipeline.store.sqlite import SCHEMA_VERSION, SQLiteStore

DAY1 = 1577836800000  # 2020-01-01T00:00Z


def candles(start: int, n: int, price: float = 100.0) -> pd.DataFrame:
    ts = [start + i * 60_000 for i in range(n)]
    return pd.DataFrame(
        {
            "timestamp": ts,
            "open": price,
            "high": price + 1,
            "low": price - 1,
            "close": price,
            "volume": 2.5,
            "quote_volume": None,
            "trades": pd.array([7] * n, dtype="Int64"),
            "taker_buy_volume": 1.0,
            "taker_buy_quote_volume": None,
        }
    )[list(CANDLE_COLUMNS)]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "candles.sqlite")
    s.register_symbol("BTC/USDT")
    return s


def rows(store: SQLiteStore) -> list[tuple[object, ...]]:
    return store.conn.execute("SELECT * FROM price_data ORDER BY timestamp").fetchall()


def test_a_new_database_gets_the_versioned_schema_in_wal_mode(store: SQLiteStore) -> None:
    conn = store.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"symbols", "price_data", "candles"} <= names


def test_writing_the_same_candles_twice_stores_them_once(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10))], now_ms=1)
    result = store.upsert_candles([("BTC/USDT", candles(DAY1, 10))], now_ms=2)
    assert result["BTC/USDT"].unchanged == 10
    assert len(rows(store)) == 10


def test_an_unchanged_candle_keeps_the_time_it_was_first_ingested(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1000)
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=2000)
    assert [r[-1] for r in rows(store)] == [1000, 1000, 1000]


def test_a_corrected_candle_gets_the_new_values_and_a_new_ingestion_time(
    store: SQLiteStore,
) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1000)
    corrected = candles(DAY1, 3)
    corrected.loc[1, "close"] = 101.5
    result = store.upsert_candles([("BTC/USDT", corrected)], now_ms=2000)
    assert result["BTC/USDT"].corrected == [DAY1 + 60_000]
    stored = rows(store)
    assert [r[5] for r in stored] == [100.0, 101.5, 100.0]  # close
    assert [r[-1] for r in stored] == [1000, 2000, 1000]  # ingested_at


def test_an_upsert_never_touches_rows_it_was_not_given(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10))], now_ms=1000)
    store.upsert_candles([("BTC/USDT", candles(DAY1 + 3 * 60_000, 2, price=50))], now_ms=2000)
    stored = rows(store)
    assert len(stored) == 10
    assert [r[2] for r in stored] == [100.0] * 3 + [50.0] * 2 + [100.0] * 5  # open


def test_a_batch_of_new_and_already_stored_candles_inserts_only_the_new(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 5))], now_ms=1000)
    result = store.upsert_candles([("BTC/USDT", candles(DAY1 + 2 * 60_000, 6))], now_ms=2000)
    assert (result["BTC/USDT"].inserted, result["BTC/USDT"].unchanged) == (3, 3)
    assert [r[-1] for r in rows(store)] == [1000] * 5 + [2000] * 3


def test_missing_volumes_are_stored_as_null(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 1))], now_ms=1)
    (row,) = rows(store)
    assert row[7] is None and row[8] == 7 and row[10] is None


def test_a_write_is_one_transaction_all_batches_or_none(store: SQLiteStore) -> None:
    with pytest.raises(UnknownSymbol):
        store.upsert_candles([("BTC/USDT", candles(DAY1, 5)), ("ETH/USDT", candles(DAY1, 5))])
    assert rows(store) == []


def test_reading_returns_candles_in_the_half_open_window_oldest_first(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10)[::-1])], now_ms=1)
    frame = store.read_candles("BTC/USDT", DAY1 + 2 * 60_000, DAY1 + 5 * 60_000)
    assert frame["timestamp"].tolist() == [DAY1 + i * 60_000 for i in (2, 3, 4)]


def test_the_candles_view_shows_iso_times_for_people(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 1))], now_ms=1)
    assert store.conn.execute("SELECT symbol, time_utc, close FROM candles").fetchall() == [
        ("BTC/USDT", "2020-01-01T00:00:00Z", 100.0)
    ]


def test_removing_a_symbol_keeps_its_candles(store: SQLiteStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 4))], now_ms=1)
    assert store.deactivate_symbol("BTC/USDT")
    assert store.list_symbols(active=True) == []
    (row,) = store.list_symbols(active=False)
    assert (row.symbol, row.candles) == ("BTC/USDT", 4)


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my trading notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a SQLite database"):
        SQLiteStore(path).list_symbols()
    assert path.read_bytes() == before


def test_a_database_from_a_newer_tradebeat_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path).list_symbols()
    assert path.read_bytes() == before


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        SQLiteStore(path).list_symbols()
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert names == {"invoices"}


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file read-only even for root (which ignores mode bits): the immutable attribute."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o444)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o644)


def test_a_read_only_database_gives_a_clear_error_and_stays_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite"
    with SQLiteStore(path) as created:
        created.list_symbols()
    for extra in tmp_path.glob("ro.sqlite-*"):
        extra.unlink()
    before = path.read_bytes()
    with read_only(path), pytest.raises(StoreError, match="read-only"):
        SQLiteStore(path).register_symbol("BTC/USDT")
    assert path.read_bytes() == before


V1_SCHEMA = """
CREATE TABLE symbols (id INTEGER PRIMARY KEY, symbol TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1);
CREATE TABLE price_data (symbol_id INTEGER NOT NULL REFERENCES symbols(id), timestamp INTEGER NOT NULL,
    open REAL, high REAL, low REAL, close REAL, volume REAL, quote_volume REAL, trades INTEGER,
    taker_buy_volume REAL, taker_buy_quote_volume REAL, ingested_at INTEGER NOT NULL,
    PRIMARY KEY (symbol_id, timestamp)) WITHOUT ROWID;
INSERT INTO symbols VALUES (1, 'BTC/USDT', '2026-01-01T00:00:00Z', 1);
INSERT INTO price_data VALUES (1, 1577836800000, 1, 2, 0.5, 1.5, 3, NULL, 4, NULL, NULL, 99);
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_upgraded_in_place_keeping_its_candles(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    conn.close()
    with SQLiteStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert rows(store) == [(1, DAY1, 1.0, 2.0, 0.5, 1.5, 3.0, None, 4, None, None, 99)]
        assert store.holes("BTC/USDT", DAY1, DAY1 + 60_000) == []
        assert store.first_candles(["BTC/USDT"]) == {"BTC/USDT": None}


def test_an_ingest_records_the_holes_of_its_window_with_the_candles(store: SQLiteStore) -> None:
    batch = pd.concat([candles(DAY1, 10), candles(DAY1 + 20 * 60_000, 10)], ignore_index=True)
    answer = Coverage(DAY1, DAY1 + 30 * 60_000, spans=((DAY1, DAY1 + 29 * 60_000),))
    (result,) = store.ingest([SymbolWrite("BTC/USDT", batch, [answer])], now_ms=5).values()
    hole = Hole(DAY1 + 10 * 60_000, DAY1 + 19 * 60_000, "exchange", 5)
    assert result.holes == [hole]
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == [hole]


def test_minutes_before_the_exchanges_first_candle_are_not_holes(store: SQLiteStore) -> None:
    listed = DAY1 + 10 * 60_000
    write = SymbolWrite("BTC/USDT", candles(listed, 20), [Coverage(DAY1, DAY1 + 30 * 60_000)], listed)
    store.ingest([write])
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []
    report = store.gap_report("BTC/USDT", DAY1, DAY1 + 30 * 60_000)
    assert (report.expected, report.stored, report.holes) == (20, 20, [])


def test_a_refetch_that_returns_the_minutes_removes_their_hole(store: SQLiteStore) -> None:
    window = Coverage(DAY1, DAY1 + 30 * 60_000)
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 10), [window])])
    assert [h.kind for h in store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000)] == ["pending"]
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 30), [window])])
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []


def test_a_failed_ingest_records_neither_candles_nor_holes(store: SQLiteStore) -> None:
    window = Coverage(DAY1, DAY1 + 30 * 60_000)
    writes = [
        SymbolWrite("BTC/USDT", candles(DAY1, 10), [window]),
        SymbolWrite("NOT/REGISTERED", candles(DAY1, 10), [window]),
    ]
    with pytest.raises(UnknownSymbol):
        store.ingest(writes)
    assert rows(store) == []
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []


INTERFACE = [
    "active_symbols",
    "candle_span",
    "close",
    "count_candles",
    "deactivate_symbol",
    "first_candles",
    "gap_report",
    "holes",
    "ingest",
    "list_symbols",
    "newest_candles",
    "read_candles",
    "read_rollups",
    "register_symbol",
    "upsert_candles",
    "upsert_rollups",
]


def protocol_methods() -> list[str]:
    return sorted(n for n, v in vars(CandleStore).items() if callable(v) and not n.startswith("_"))


def test_the_interface_declares_every_method_callers_use_and_no_ids() -> None:
    assert protocol_methods() == INTERFACE
    assert {"__enter__", "__exit__"} <= set(vars(CandleStore))


@pytest.mark.parametrize("name", [*INTERFACE, "__enter__", "__exit__"])
def test_sqlite_store_implements_each_method_with_the_interfaces_signature(name: str) -> None:
    declared = inspect.signature(getattr(CandleStore, name))
    implemented = inspect.signature(getattr(SQLiteStore, name))
    assert list(implemented.parameters.values()) == list(declared.parameters.values())
    if name != "__enter__":  # the interface says Self, the implementation names itself
        assert implemented.return_annotation == declared.return_annotation


def test_open_store_creates_a_working_store_at_a_fresh_path(tmp_path: Path) -> None:
    path = tmp_path / "new" / "candles.sqlite"
    with open_store(path) as store:
        store.register_symbol("BTC/USDT")
        store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1)
    with open_store(path) as reopened:
        assert [(r.symbol, r.first_candle, r.last_candle, r.candles) for r in reopened.list_symbols()] == [
            ("BTC/USDT", DAY1, DAY1 + 2 * 60_000, 3)
        ]
        assert reopened.read_candles("BTC/USDT", DAY1, DAY1 + 3 * 60_000)["close"].tolist() == [100.0] * 3


def test_a_store_error_is_a_failure_and_a_runtime_error() -> None:
    assert (StoreError.__module__, StoreError.__name__) == ("tradebeat_pipeline.store", "StoreError")
    assert issubclass(StoreError, Failed) and issubclass(StoreError, RuntimeError)


def drop_everything(path: Path) -> None:
    """Another program empties the file under an open store."""
    with sqlite3.connect(path) as other:
        other.executescript(
            "DROP VIEW candles; DROP TABLE gaps; DROP TABLE rollups; DROP TABLE price_data; "
            "DROP TABLE symbols;"
        )
    other.close()


def test_a_driver_error_surfaces_as_a_store_error_naming_db_path_and_the_problem(
    store: SQLiteStore,
) -> None:
    drop_everything(store.path)
    with pytest.raises(StoreError) as raised:
        store.holes("BTC/USDT", DAY1, DAY1 + 60_000)
    assert str(raised.value) == f"DB_PATH {store.path}: holes failed: no such table: symbols"
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


ONE_ROLLUP = pd.DataFrame(
    {
        "timestamp": [DAY1],
        "open": 1.0,
        "high": 1.0,
        "low": 1.0,
        "close": 1.0,
        "volume": 1.0,
        "quote_volume": 1.0,
        "trades": 1,
        "minutes": 5,
        "complete": True,
    }
)
CALLS: dict[str, Callable[[CandleStore], object]] = {
    "active_symbols": lambda s: s.active_symbols(),
    "candle_span": lambda s: s.candle_span("BTC/USDT"),
    "count_candles": lambda s: s.count_candles("BTC/USDT"),
    "deactivate_symbol": lambda s: s.deactivate_symbol("BTC/USDT"),
    "first_candles": lambda s: s.first_candles(["BTC/USDT"]),
    "gap_report": lambda s: s.gap_report("BTC/USDT", DAY1, DAY1 + 60_000),
    "holes": lambda s: s.holes("BTC/USDT", DAY1, DAY1 + 60_000),
    "ingest": lambda s: s.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 1))]),
    "list_symbols": lambda s: s.list_symbols(),
    "newest_candles": lambda s: s.newest_candles(["BTC/USDT"]),
    "read_candles": lambda s: s.read_candles("BTC/USDT", DAY1, DAY1 + 60_000),
    "read_rollups": lambda s: s.read_rollups("BTC/USDT", "5m", DAY1, DAY1 + 60_000),
    "register_symbol": lambda s: s.register_symbol("ETH/USDT"),
    "upsert_candles": lambda s: s.upsert_candles([("BTC/USDT", candles(DAY1, 1))]),
    "upsert_rollups": lambda s: s.upsert_rollups([("BTC/USDT", "5m", ONE_ROLLUP)]),
}


def test_the_broken_database_cases_call_every_method_of_the_interface_but_close() -> None:
    assert sorted(CALLS) == [n for n in INTERFACE if n != "close"]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_method_reports_a_database_emptied_under_it_as_a_store_error(
    store: SQLiteStore, name: str
) -> None:
    drop_everything(store.path)
    db_path = re.escape(str(store.path))
    with pytest.raises(StoreError, match=rf"^DB_PATH {db_path}: \w+ failed: no such table: \w+$"):
        CALLS[name](store)
