"""The SQLite store: schema, idempotent upserts, corrections, and refusing files it must not touch."""

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.quality import Coverage, Hole
from tradebeat_pipeline.store import StoreError, SymbolWrite, UnknownSymbol
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
