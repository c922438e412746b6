"""What only the SQLite store does: its file, WAL mode, read-only files, upgrading old files, driver errors
(the behaviour both stores share is in test_contract.py)."""

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
from tradebeat_pipeline.store import CandleStore, StoreError, SymbolWrite, open_store
from tradebeat_pipeline.store.sqlite import PAGE_SIZE, SCHEMA_VERSION, SQLiteStore

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


def test_a_new_database_gets_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.executescript(V1_SCHEMA)
    conn.close()
    with SQLiteStore(tmp_path / "new.sqlite") as new, SQLiteStore(old) as upgraded:
        new.list_symbols()
        assert new.conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
        assert upgraded.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert upgraded.count_candles("BTC/USDT") == 1


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my trading notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a SQLite database"):
        SQLiteStore(path).list_symbols()
    assert path.read_bytes() == before


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


INTERFACE = [
    "active_symbols",
    "candle_span",
    "close",
    "count_candles",
    "days_changed",
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
    "days_changed": lambda s: s.days_changed("BTC/USDT", DAY1, DAY1 + 60_000, 0),
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
