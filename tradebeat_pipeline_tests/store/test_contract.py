"""The candle store contract, run against every implementation (SQLite file, PostgreSQL server):
idempotent upserts, corrections, one transaction per write, reads, holes, rollups, and refusing a
database that is not tradebeat's or is newer than this code."""

import inspect
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest

from tradebeat_pipeline.quality import Coverage, Hole
from tradebeat_pipeline.store import CandleStore, StoreError, SymbolWrite, UnknownSymbol
from tradebeat_pipeline.store.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tradebeat_pipeline.store.postgres import VERSION_TABLE, PostgresStore
from tradebeat_pipeline.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tradebeat_pipeline_tests.store.test_sqlite import DAY1, INTERFACE, candles

Store = SQLiteStore | PostgresStore
BACKENDS = ["sqlite", "postgres"]


class Database:
    """A database as seen from outside any store: raw SQL, what is in it, and a store opened on it."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.path = tmp_path / "candles.sqlite"
        self.url = request.getfixturevalue("postgres_url") if kind == "postgres" else ""

    def open(self) -> Store:
        return PostgresStore(self.url) if self.kind == "postgres" else SQLiteStore(self.path)

    def execute(self, statement: str) -> None:
        if self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as pg:
                pg.execute(statement)
        else:
            with sqlite3.connect(self.path) as conn:
                conn.execute(statement)
            conn.close()

    def tables(self) -> set[str]:
        if self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as pg:
                listed = pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                return {r[0] for r in listed}
        with sqlite3.connect(self.path) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        return names

    def mark_newer_schema(self) -> None:
        """What a future tradebeat leaves behind: a schema version above this code's."""
        if self.kind == "postgres":
            self.execute(f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)")
            self.execute(f"INSERT INTO {VERSION_TABLE} VALUES ({PG_SCHEMA_VERSION + 1})")
        else:
            self.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    def snapshot(self) -> Any:
        """Everything a refusal must leave as it was: the file's bytes, or the server's tables and rows."""
        if self.kind == "sqlite":
            return self.path.read_bytes()
        with psycopg.connect(self.url, autocommit=True) as pg:
            tables = sorted(self.tables())
            return [(t, pg.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()) for t in tables]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    return Database(str(request.param), tmp_path, request)


@pytest.fixture
def store(database: Database) -> Iterator[Store]:
    s = database.open()
    s.register_symbol("BTC/USDT")
    yield s
    s.close()


def rows(store: Store) -> list[tuple[object, ...]]:
    return list(store.conn.execute("SELECT * FROM price_data ORDER BY timestamp").fetchall())


def test_writing_the_same_candles_twice_stores_them_once(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10))], now_ms=1)
    result = store.upsert_candles([("BTC/USDT", candles(DAY1, 10))], now_ms=2)
    assert result["BTC/USDT"].unchanged == 10
    assert len(rows(store)) == 10


def test_an_unchanged_candle_keeps_the_time_it_was_first_ingested(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1000)
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=2000)
    assert [r[-1] for r in rows(store)] == [1000, 1000, 1000]


def test_a_corrected_candle_gets_the_new_values_and_a_new_ingestion_time(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1000)
    corrected = candles(DAY1, 3)
    corrected.loc[1, "close"] = 101.5
    result = store.upsert_candles([("BTC/USDT", corrected)], now_ms=2000)
    assert result["BTC/USDT"].corrected == [DAY1 + 60_000]
    assert (result["BTC/USDT"].updated, result["BTC/USDT"].unchanged) == (1, 2)
    stored = rows(store)
    assert [r[5] for r in stored] == [100.0, 101.5, 100.0]  # close
    assert [r[-1] for r in stored] == [1000, 2000, 1000]  # ingested_at


def test_a_volume_that_becomes_known_is_a_correction(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 2))], now_ms=1000)
    known = candles(DAY1, 2)
    known.loc[0, "quote_volume"] = 250.0
    result = store.upsert_candles([("BTC/USDT", known)], now_ms=2000)
    assert result["BTC/USDT"].corrected == [DAY1]
    assert [(r[7], r[-1]) for r in rows(store)] == [(250.0, 2000), (None, 1000)]


def test_an_upsert_never_touches_rows_it_was_not_given(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10))], now_ms=1000)
    store.upsert_candles([("BTC/USDT", candles(DAY1 + 3 * 60_000, 2, price=50))], now_ms=2000)
    stored = rows(store)
    assert len(stored) == 10
    assert [r[2] for r in stored] == [100.0] * 3 + [50.0] * 2 + [100.0] * 5  # open


def test_days_changed_names_only_the_days_holding_candles_written_since(store: Store) -> None:
    day2 = DAY1 + 86_400_000
    store.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1000)
    store.upsert_candles([("BTC/USDT", candles(day2, 3))], now_ms=2000)
    corrected = candles(DAY1, 1, price=90)
    assert store.days_changed("BTC/USDT", DAY1, day2 + 86_400_000, since_ms=1500) == [day2]
    store.upsert_candles([("BTC/USDT", corrected)], now_ms=3000)  # a correction is a change too
    assert store.days_changed("BTC/USDT", DAY1, day2 + 86_400_000, since_ms=2500) == [DAY1]
    assert store.days_changed("BTC/USDT", day2, day2 + 86_400_000, since_ms=0) == [day2]


def test_a_batch_of_new_and_already_stored_candles_inserts_only_the_new(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 5))], now_ms=1000)
    result = store.upsert_candles([("BTC/USDT", candles(DAY1 + 2 * 60_000, 6))], now_ms=2000)
    assert (result["BTC/USDT"].inserted, result["BTC/USDT"].unchanged) == (3, 3)
    assert [r[-1] for r in rows(store)] == [1000] * 5 + [2000] * 3


def test_a_rewrite_of_thousands_of_candles_reports_each_new_and_corrected_one_in_order(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 2500))], now_ms=1000)
    rewrite = candles(DAY1, 2600)
    rewrite.loc[[2499, 0, 1500], "close"] = 99.0
    (result,) = store.upsert_candles([("BTC/USDT", rewrite)], now_ms=2000).values()
    assert (result.inserted, result.updated, result.unchanged) == (100, 3, 2497)
    assert result.corrected == [DAY1 + i * 60_000 for i in (0, 1500, 2499)]
    assert sum(r[-1] == 2000 for r in rows(store)) == 103


def test_a_trade_count_too_large_for_a_double_is_stored_and_read_back_exactly(store: Store) -> None:
    batch = candles(DAY1, 2)
    batch["trades"] = pd.array([2**60 + 1, 7], dtype="Int64")
    store.upsert_candles([("BTC/USDT", batch)], now_ms=1)
    (again,) = store.upsert_candles([("BTC/USDT", batch)], now_ms=2).values()
    assert again.unchanged == 2
    assert store.read_candles("BTC/USDT", DAY1, DAY1 + 2 * 60_000)["trades"].tolist() == [2**60 + 1, 7]


def test_missing_volumes_are_stored_as_null(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 1))], now_ms=1)
    (row,) = rows(store)
    assert row[7] is None and row[8] == 7 and row[10] is None


def test_a_missing_trade_count_is_stored_as_null_and_read_back_as_missing(store: Store) -> None:
    batch = candles(DAY1, 2)
    batch["trades"] = pd.array([None, 3], dtype="Int64")
    store.upsert_candles([("BTC/USDT", batch)], now_ms=1)
    assert [r[8] for r in rows(store)] == [None, 3]
    read = store.read_candles("BTC/USDT", DAY1, DAY1 + 2 * 60_000)
    assert read["trades"].isna().tolist() == [True, False] and str(read["trades"].dtype) == "Int64"


def test_a_write_is_one_transaction_all_batches_or_none(store: Store) -> None:
    with pytest.raises(UnknownSymbol):
        store.upsert_candles([("BTC/USDT", candles(DAY1, 5)), ("ETH/USDT", candles(DAY1, 5))])
    assert rows(store) == []


def test_reading_returns_candles_in_the_half_open_window_oldest_first(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10)[::-1])], now_ms=1)
    frame = store.read_candles("BTC/USDT", DAY1 + 2 * 60_000, DAY1 + 5 * 60_000)
    assert frame["timestamp"].tolist() == [DAY1 + i * 60_000 for i in (2, 3, 4)]


def test_reading_gives_back_exactly_what_was_written_in_the_contracts_dtypes(store: Store) -> None:
    written = candles(DAY1, 5)
    store.upsert_candles([("BTC/USDT", written)], now_ms=1)
    read = store.read_candles("BTC/USDT", DAY1, DAY1 + 5 * 60_000)
    nulls_as_nan = {"quote_volume": "float64", "taker_buy_quote_volume": "float64"}
    pd.testing.assert_frame_equal(read, written.astype(nulls_as_nan))


def test_reading_an_empty_window_gives_an_empty_frame_with_the_contracts_columns(store: Store) -> None:
    frame = store.read_candles("BTC/USDT", DAY1, DAY1 + 60_000)
    assert frame.empty and list(frame.columns) == list(candles(DAY1, 0).columns)


def test_the_candles_view_shows_iso_times_for_people(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 1))], now_ms=1)
    assert store.conn.execute("SELECT symbol, time_utc, close FROM candles").fetchall() == [
        ("BTC/USDT", "2020-01-01T00:00:00Z", 100.0)
    ]


def test_removing_a_symbol_keeps_its_candles(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 4))], now_ms=1)
    assert store.deactivate_symbol("BTC/USDT")
    assert store.list_symbols(active=True) == []
    (row,) = store.list_symbols(active=False)
    assert (row.symbol, row.candles) == ("BTC/USDT", 4)


def test_registering_a_removed_symbol_again_reactivates_it_with_the_same_id(store: Store) -> None:
    sid = store.register_symbol("BTC/USDT")
    store.deactivate_symbol("BTC/USDT")
    assert store.register_symbol("BTC/USDT") == sid
    assert store.active_symbols() == {"BTC/USDT"}
    assert not store.deactivate_symbol("NEVER/SEEN")


def test_span_count_and_newest_candle_describe_what_is_stored(store: Store) -> None:
    assert store.candle_span("BTC/USDT") == (None, None)
    store.upsert_candles([("BTC/USDT", candles(DAY1, 5))], now_ms=1)
    assert store.candle_span("BTC/USDT") == (DAY1, DAY1 + 4 * 60_000)
    assert store.count_candles("BTC/USDT", DAY1 + 60_000, DAY1 + 3 * 60_000) == 2
    assert store.newest_candles(["BTC/USDT", "NEVER/SEEN"], before_ms=DAY1 + 2 * 60_000) == {
        "BTC/USDT": DAY1 + 60_000,
        "NEVER/SEEN": None,
    }


def test_a_database_from_a_newer_tradebeat_is_refused_and_left_untouched(database: Database) -> None:
    database.mark_newer_schema()
    before = database.snapshot()
    with pytest.raises(StoreError, match="newer"):
        database.open().list_symbols()
    assert database.snapshot() == before


def test_another_applications_database_is_refused(database: Database) -> None:
    database.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="another application"):
        database.open().list_symbols()
    assert database.tables() == {"invoices"}


def test_an_ingest_records_the_holes_of_its_window_with_the_candles(store: Store) -> None:
    batch = pd.concat([candles(DAY1, 10), candles(DAY1 + 20 * 60_000, 10)], ignore_index=True)
    answer = Coverage(DAY1, DAY1 + 30 * 60_000, spans=((DAY1, DAY1 + 29 * 60_000),))
    (result,) = store.ingest([SymbolWrite("BTC/USDT", batch, [answer])], now_ms=5).values()
    hole = Hole(DAY1 + 10 * 60_000, DAY1 + 19 * 60_000, "exchange", 5)
    assert result.holes == [hole]
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == [hole]


def test_minutes_before_the_exchanges_first_candle_are_not_holes(store: Store) -> None:
    listed = DAY1 + 10 * 60_000
    write = SymbolWrite("BTC/USDT", candles(listed, 20), [Coverage(DAY1, DAY1 + 30 * 60_000)], listed)
    store.ingest([write])
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []
    report = store.gap_report("BTC/USDT", DAY1, DAY1 + 30 * 60_000)
    assert (report.expected, report.stored, report.holes) == (20, 20, [])


def test_the_first_candle_is_remembered_once_and_never_moved(store: Store) -> None:
    assert store.first_candles(["BTC/USDT"]) == {"BTC/USDT": None}
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 1), first_candle_ms=DAY1)])
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 1), first_candle_ms=DAY1 + 60_000)])
    assert store.first_candles(["BTC/USDT", "NEVER/SEEN"]) == {"BTC/USDT": DAY1, "NEVER/SEEN": None}


def test_the_gap_report_counts_stored_halted_and_missing_minutes(store: Store) -> None:
    batch = pd.concat([candles(DAY1, 10), candles(DAY1 + 15 * 60_000, 5)], ignore_index=True)
    batch.loc[0, ["high", "low", "volume"]] = [100.0, 100.0, 0.0]  # a halted minute: flat, no volume
    answer = Coverage(DAY1, DAY1 + 20 * 60_000, spans=((DAY1, DAY1 + 19 * 60_000),))
    store.ingest([SymbolWrite("BTC/USDT", batch, [answer])], now_ms=5)
    report = store.gap_report("BTC/USDT", DAY1, DAY1 + 20 * 60_000)
    assert (report.expected, report.stored, report.halted) == (20, 15, 1)
    assert report.holes == [Hole(DAY1 + 10 * 60_000, DAY1 + 14 * 60_000, "exchange", 5)]


def test_a_refetch_that_returns_the_minutes_removes_their_hole(store: Store) -> None:
    window = Coverage(DAY1, DAY1 + 30 * 60_000)
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 10), [window])])
    assert [h.kind for h in store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000)] == ["pending"]
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 30), [window])])
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []


def test_a_window_filled_by_earlier_and_new_candles_together_has_no_hole_left(store: Store) -> None:
    window = Coverage(DAY1, DAY1 + 20 * 60_000)
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 10), [window])])
    store.ingest([SymbolWrite("BTC/USDT", candles(DAY1 + 10 * 60_000, 10), [window])])
    assert store.holes("BTC/USDT", DAY1, DAY1 + 20 * 60_000) == []


def test_a_window_that_returned_nothing_is_one_hole(store: Store) -> None:
    window = Coverage(DAY1, DAY1 + 10 * 60_000)
    (result,) = store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 0), [window])], now_ms=5).values()
    assert result.holes == [Hole(DAY1, DAY1 + 9 * 60_000, "pending", 5)]


def test_holes_around_candles_stored_earlier_are_found_by_a_wider_window(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1 + 15 * 60_000, 5))], now_ms=1)
    window = Coverage(DAY1, DAY1 + 25 * 60_000)
    write = SymbolWrite("BTC/USDT", candles(DAY1 + 5 * 60_000, 5), [window])
    (result,) = store.ingest([write], now_ms=5).values()
    assert [(h.start, h.end) for h in result.holes] == [
        (DAY1, DAY1 + 4 * 60_000),
        (DAY1 + 10 * 60_000, DAY1 + 14 * 60_000),
        (DAY1 + 20 * 60_000, DAY1 + 24 * 60_000),
    ]


def test_a_failed_ingest_records_neither_candles_nor_holes(store: Store) -> None:
    window = Coverage(DAY1, DAY1 + 30 * 60_000)
    writes = [
        SymbolWrite("BTC/USDT", candles(DAY1, 10), [window]),
        SymbolWrite("NOT/REGISTERED", candles(DAY1, 10), [window]),
    ]
    with pytest.raises(UnknownSymbol):
        store.ingest(writes)
    assert rows(store) == []
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []


def count_in_transaction(store: Store) -> int:
    """The candles the store's own connection sees, its open transaction's included."""
    return len(rows(store))


def test_an_announced_stream_is_written_part_by_part_in_one_transaction(store: Store) -> None:
    seen_before_second_part: list[int] = []

    def arriving() -> Iterator[SymbolWrite]:
        yield SymbolWrite("BTC/USDT", candles(DAY1, 10))
        seen_before_second_part.append(count_in_transaction(store))
        yield SymbolWrite("BTC/USDT", candles(DAY1 + 10 * 60_000, 5))

    (result,) = store.ingest(arriving(), now_ms=1, symbols=["BTC/USDT"]).values()
    assert seen_before_second_part == [10]  # the first part was written before the second arrived
    assert result.inserted == 15 and len(rows(store)) == 15


def test_a_stream_that_fails_after_its_first_part_stores_nothing(store: Store) -> None:
    window = Coverage(DAY1, DAY1 + 30 * 60_000)

    def arriving() -> Iterator[SymbolWrite]:
        yield SymbolWrite("BTC/USDT", candles(DAY1, 10), [window])
        raise RuntimeError("the archive download failed")

    with pytest.raises(RuntimeError, match="archive download failed"):
        store.ingest(arriving(), symbols=["BTC/USDT"])
    assert rows(store) == []
    assert store.holes("BTC/USDT", DAY1, DAY1 + 30 * 60_000) == []


def test_a_part_for_a_symbol_the_stream_did_not_announce_is_refused_naming_it(store: Store) -> None:
    store.register_symbol("ETH/USDT")
    writes = [SymbolWrite("BTC/USDT", candles(DAY1, 3)), SymbolWrite("ETH/USDT", candles(DAY1, 3))]
    with pytest.raises(ValueError, match="ETH/USDT: a part for a symbol this write did not announce"):
        store.ingest(writes, symbols=["BTC/USDT"])
    assert rows(store) == []


def test_an_announced_symbol_that_is_not_registered_is_refused_before_anything_is_stored(
    store: Store,
) -> None:
    with pytest.raises(UnknownSymbol, match="NOT/REGISTERED"):
        store.ingest([SymbolWrite("BTC/USDT", candles(DAY1, 3))], symbols=["BTC/USDT", "NOT/REGISTERED"])
    assert rows(store) == []


def test_a_long_rewrite_over_partly_stored_minutes_inserts_corrects_and_keeps_exactly(store: Store) -> None:
    # 90,000 minutes, the first 40,000 stored: blocks of new, stored and mixed rows, out of order.
    store.upsert_candles([("BTC/USDT", candles(DAY1, 40_000))], now_ms=1000)
    rewrite = candles(DAY1 + 20_000 * 60_000, 70_000)
    changed = [0, 12_767, 12_768, 19_999]  # 20,000 + these: stored minutes, a block boundary among them
    rewrite.loc[changed, "close"] = 99.0
    rewrite.loc[30_000, "quote_volume"] = 5.0  # a new minute with a value where the others are NULL
    shuffled = rewrite.sample(frac=1.0, random_state=3)
    (result,) = store.upsert_candles([("BTC/USDT", shuffled)], now_ms=2000).values()
    assert (result.inserted, result.updated, result.unchanged) == (50_000, 4, 16_000 - 4 + 4_000)
    in_batch_order = [t for t in shuffled["timestamp"] if (t - DAY1) // 60_000 - 20_000 in changed]
    assert result.corrected == in_batch_order
    read = store.read_candles("BTC/USDT", DAY1, DAY1 + 90_000 * 60_000)
    expected = pd.concat([candles(DAY1, 20_000), rewrite], ignore_index=True)
    pd.testing.assert_frame_equal(
        read, expected.astype({"quote_volume": "float64", "taker_buy_quote_volume": "float64"})
    )
    assert sum(r[-1] == 2000 for r in rows(store)) == 50_004  # ingested_at: new and corrected only


def test_a_read_spanning_years_returns_every_candle_oldest_first(store: Store) -> None:
    daily = candles(DAY1, 4 * 366)
    daily["timestamp"] = [DAY1 + i * 86_400_000 for i in range(4 * 366)]  # one candle a day for 4 years
    store.upsert_candles([("BTC/USDT", daily)], now_ms=1)
    read = store.read_candles("BTC/USDT", DAY1, DAY1 + 5 * 366 * 86_400_000)
    assert read["timestamp"].tolist() == daily["timestamp"].tolist()


def test_the_database_refuses_a_candle_for_an_unknown_symbol_id(store: Store) -> None:
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.ForeignKeyViolation)):
        store.conn.execute("INSERT INTO price_data (symbol_id, timestamp, ingested_at) VALUES (999, 0, 0)")
    assert rows(store) == []


def test_the_database_refuses_to_delete_a_symbol_that_has_candles(store: Store) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 1))], now_ms=1)
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.ForeignKeyViolation)):
        store.conn.execute("DELETE FROM symbols WHERE symbol = 'BTC/USDT'")
    assert store.count_candles("BTC/USDT") == 1


def rollups(n: int, trades: list[int | None] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [DAY1 + i * 300_000 for i in range(n)],
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 10.0,
            "quote_volume": 15.0,
            "trades": trades if trades is not None else [4] * n,
            "minutes": 5,
            "complete": [i % 2 == 0 for i in range(n)],
        }
    )


def test_rollups_read_back_as_written_and_a_rewrite_replaces_the_bucket(store: Store) -> None:
    assert store.upsert_rollups([("BTC/USDT", "5m", rollups(3))]) == 3
    rewritten = rollups(3).iloc[1:2].assign(close=9.0, minutes=4)
    assert store.upsert_rollups([("BTC/USDT", "5m", rewritten)]) == 1
    read = store.read_rollups("BTC/USDT", "5m", DAY1, DAY1 + 15 * 60_000)
    expected = rollups(3)
    expected.loc[1, ["close", "minutes"]] = [9.0, 4]
    pd.testing.assert_frame_equal(read, expected, check_dtype=False)
    assert read["complete"].dtype == bool
    assert store.read_rollups("BTC/USDT", "1h", DAY1, DAY1 + 15 * 60_000).empty


def test_a_rollup_of_an_unknown_symbol_writes_nothing(store: Store) -> None:
    with pytest.raises(UnknownSymbol):
        store.upsert_rollups([("BTC/USDT", "5m", rollups(2)), ("NOT/REGISTERED", "5m", rollups(2))])
    assert store.read_rollups("BTC/USDT", "5m", DAY1, DAY1 + 15 * 60_000).empty


@pytest.mark.parametrize("implementation", [SQLiteStore, PostgresStore])
@pytest.mark.parametrize("name", [*INTERFACE, "__enter__", "__exit__"])
def test_each_store_implements_each_method_with_the_interfaces_signature(
    implementation: type[Store], name: str
) -> None:
    declared = inspect.signature(getattr(CandleStore, name))
    implemented = inspect.signature(getattr(implementation, name))
    assert list(implemented.parameters.values()) == list(declared.parameters.values())
    if name != "__enter__":  # the interface says Self, the implementation names itself
        assert implemented.return_annotation == declared.return_annotation
