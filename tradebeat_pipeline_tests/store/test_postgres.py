"""What only the PostgreSQL store does: its versioned schema on a server, COPY for bulk writes,
concurrent writers from other connections, and messages that never show the password."""

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tradebeat_pipeline.settings import Settings, SettingsError
from tradebeat_pipeline.store import StoreError, UpsertResult, open_store
from tradebeat_pipeline.store import postgres as pg_module
from tradebeat_pipeline.store.postgres import SCHEMA_VERSION, VERSION_TABLE, PostgresStore
from tradebeat_pipeline.store.sqlite import SQLiteStore
from tradebeat_pipeline_tests.conftest import PostgresServer
from tradebeat_pipeline_tests.store.test_sqlite import CALLS, DAY1, candles


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(postgres_url)
    s.register_symbol("BTC/USDT")
    yield s
    s.close()


def with_password(url: str, password: str) -> str:
    return url.replace("postgresql://tradebeat@", f"postgresql://tradebeat:{password}@")


def test_a_new_database_gets_the_versioned_schema(store: PostgresStore) -> None:
    assert store.conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall() == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in store.conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {VERSION_TABLE, "symbols", "price_data", "gaps", "rollups"}


def test_a_hundred_thousand_candles_go_through_copy_in_one_write(store: PostgresStore) -> None:
    result = store.upsert_candles([("BTC/USDT", candles(DAY1, 100_000))], now_ms=1)
    assert result["BTC/USDT"].inserted == 100_000
    assert store.count_candles("BTC/USDT") == 100_000
    read = store.read_candles("BTC/USDT", DAY1, DAY1 + 100_000 * 60_000)
    assert np.array_equal(read["timestamp"].to_numpy(), DAY1 + np.arange(100_000) * 60_000)
    again = store.upsert_candles([("BTC/USDT", candles(DAY1, 100_000))], now_ms=2)
    assert again["BTC/USDT"].unchanged == 100_000


def test_a_newer_schema_version_is_refused_naming_the_database_not_the_password(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as other:
        other.execute(f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)")
        other.execute(f"INSERT INTO {VERSION_TABLE} VALUES (%s)", (SCHEMA_VERSION + 1,))
    database = postgres_url.rsplit("/", 1)[1]
    named = rf"postgresql://127\.0\.0\.1:\d+/{database} has schema version"
    with pytest.raises(StoreError, match=named) as raised:
        PostgresStore(with_password(postgres_url, "s3cret-pw")).list_symbols()
    assert "s3cret-pw" not in str(raised.value)
    with psycopg.connect(postgres_url, autocommit=True) as other:
        assert other.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall() == [(SCHEMA_VERSION + 1,)]
        assert other.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (1,)


def test_an_older_schema_is_upgraded_step_by_step(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with PostgresStore(postgres_url) as old:
        old.register_symbol("BTC/USDT")
    monkeypatch.setattr(pg_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(pg_module.MIGRATIONS, SCHEMA_VERSION, ("ALTER TABLE symbols ADD COLUMN note text",))
    with PostgresStore(postgres_url) as upgraded:
        versions = upgraded.conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall()
        assert versions == [(SCHEMA_VERSION + 1,)]
        assert upgraded.conn.execute("SELECT symbol, note FROM symbols").fetchall() == [("BTC/USDT", None)]


def test_a_version_1_database_gets_its_candles_foreign_key_checked_per_statement(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as made:
        made.register_symbol("BTC/USDT")
        made.upsert_candles([("BTC/USDT", candles(DAY1, 3))], now_ms=1)
    with psycopg.connect(postgres_url, autocommit=True) as other:  # what version 1 created
        other.execute("DROP TRIGGER candles_reference_symbols_on_insert ON price_data")
        other.execute("DROP TRIGGER candles_reference_symbols_on_update ON price_data")
        other.execute("DROP TRIGGER symbols_keep_candles ON symbols")
        other.execute("DROP TRIGGER symbols_keep_candles_on_truncate ON symbols")
        other.execute(
            "ALTER TABLE price_data ADD CONSTRAINT price_data_symbol_id_fkey "
            "FOREIGN KEY (symbol_id) REFERENCES symbols(id)"
        )
        other.execute(f"UPDATE {VERSION_TABLE} SET version = 1")
    with PostgresStore(postgres_url) as upgraded:
        conn = upgraded.conn
        assert conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall() == [(SCHEMA_VERSION,)]
        foreign_keys = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'price_data'::regclass AND contype = 'f'"
        ).fetchall()
        assert foreign_keys == [] and upgraded.count_candles("BTC/USDT") == 3
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO price_data (symbol_id, timestamp, ingested_at) VALUES (999, 0, 0)")


def test_a_symbol_with_candles_can_be_neither_renumbered_nor_truncated_away(store: PostgresStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 1))], now_ms=1)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        store.conn.execute("UPDATE symbols SET id = 999 WHERE symbol = 'BTC/USDT'")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        store.conn.execute("TRUNCATE symbols CASCADE")
    store.conn.execute("UPDATE symbols SET is_active = false")  # any other change is allowed
    assert store.count_candles("BTC/USDT") == 1


def test_a_read_puts_rows_scanned_out_of_time_order_back_in_order(store: PostgresStore) -> None:
    store.upsert_candles([("BTC/USDT", candles(DAY1, 100))], now_ms=1)
    store.upsert_candles([("BTC/USDT", candles(DAY1, 10, price=50))], now_ms=2)  # new row versions, last
    store.conn.execute("SET enable_indexscan = off")  # a plain scan: the table's physical order
    store.conn.execute("SET enable_bitmapscan = off")
    read = store.read_candles("BTC/USDT", DAY1, DAY1 + 100 * 60_000)
    assert read["timestamp"].tolist() == [DAY1 + i * 60_000 for i in range(100)]
    assert read["open"].tolist() == [50.0] * 10 + [100.0] * 90


def test_an_unreachable_server_is_a_store_error_without_the_password(postgres_server: PostgresServer) -> None:
    url = with_password(postgres_server.url("no_such_database"), "s3cret-pw")
    with pytest.raises(StoreError, match="no_such_database") as raised:
        PostgresStore(url).active_symbols()
    assert "s3cret-pw" not in str(raised.value) and "s3cret-pw" not in repr(PostgresStore(url))


def test_two_writers_of_overlapping_batches_neither_fail_nor_double_count(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as setup:
        setup.register_symbol("BTC/USDT")
        setup.register_symbol("ETH/USDT")
    results: list[dict[str, UpsertResult]] = []
    errors: list[BaseException] = []

    def writer(offset: int, order: list[str]) -> None:
        try:
            with PostgresStore(postgres_url) as mine:
                for i in range(10):
                    batch = candles(DAY1 + (offset + i * 50) * 60_000, 200)
                    results.append(mine.upsert_candles([(s, batch) for s in order], now_ms=i))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(0, ["BTC/USDT", "ETH/USDT"])),
        threading.Thread(target=writer, args=(25, ["ETH/USDT", "BTC/USDT"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with PostgresStore(postgres_url) as check:
        stored = check.count_candles("BTC/USDT")
        assert stored == check.count_candles("ETH/USDT") == 25 + 9 * 50 + 200
    assert sum(r["BTC/USDT"].inserted for r in results) == stored


def drop_everything(url: str) -> None:
    """Another program empties the database under an open store."""
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("DROP VIEW candles")
        other.execute(f"DROP TABLE gaps, rollups, price_data, symbols, {VERSION_TABLE}")


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_method_reports_a_database_emptied_under_it_as_a_store_error(
    store: PostgresStore, postgres_url: str, name: str
) -> None:
    store.active_symbols()  # connected, schema checked
    drop_everything(postgres_url)
    where = re.escape(store.where)
    with pytest.raises(StoreError, match=rf'^{where}: \w+ failed: relation "\w+" does not exist'):
        CALLS[name](store)


def test_database_url_in_the_settings_selects_the_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    unused = tmp_path / "unused.sqlite"
    settings = Settings.from_mapping({"DATABASE_URL": postgres_url, "DB_PATH": str(unused)})
    with open_store(settings) as store:
        assert isinstance(store, PostgresStore)
        store.register_symbol("BTC/USDT")
    assert not unused.exists()


def test_without_database_url_the_settings_keep_the_sqlite_file(tmp_path: Path) -> None:
    with open_store(Settings.from_mapping({"DB_PATH": str(tmp_path / "candles.sqlite")})) as store:
        assert isinstance(store, SQLiteStore)
        store.register_symbol("BTC/USDT")
    assert (tmp_path / "candles.sqlite").exists()


def test_a_database_url_that_is_not_postgres_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL must be a postgresql://") as raised:
        Settings.from_mapping({"DATABASE_URL": "mysql://me:s3cret-pw@db/candles"})
    assert "s3cret-pw" not in str(raised.value)


def test_the_database_password_is_redacted_from_the_logs() -> None:
    settings = Settings.from_mapping({"DATABASE_URL": "postgresql://me:s3cret-pw@db.example/candles"})
    assert settings.database_password() == "s3cret-pw"
    assert "s3cret-pw" not in repr(settings)
