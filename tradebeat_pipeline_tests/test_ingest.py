"""One run apart from Dagster: planned from a real store (a SQLite file and a PostgreSQL server, each
test on both), fetched with the real ccxt client over HTTP from the sandbox, written in one
transaction with its report; and the guards that keep a batch inside its own partitions."""

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange
from tradebeat_pipeline.ingest import (
    Batch,
    IngestError,
    NotRegistered,
    StreamedBackfill,
    expected_minutes,
    fetch_backfill,
    plan_run,
    split_by_symbol,
    write,
)
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline.store import CandleStore, SymbolWrite, open_store
from tradebeat_pipeline.store.postgres import PostgresStore
from tradebeat_pipeline.store.sqlite import SQLiteStore
from tradebeat_pipeline.timewindows import month_window
from tradebeat_pipeline_tests.conftest import ms, wait_for

OUTAGE_MONTH = {"BTC/USDT": [date(2023, 3, 1)]}  # holds the real halt of 2023-03-24
MONTH = 31 * 1440


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CandleStore]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    store = open_store(tmp_path / "candles.sqlite", database_url=url)
    store.register_symbol("BTC/USDT")
    yield store
    store.close()


def locked_for_writing(store: CandleStore, symbol: str) -> bool:
    """Whether another connection finds the store held by a write of `symbol` (SQLite's one write
    lock; PostgreSQL's lock on the symbol's row)."""
    if isinstance(store, SQLiteStore):
        other = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            return "locked" in str(exc)
        finally:
            other.close()
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url, autocommit=True) as pg:
        try:
            pg.execute("SELECT 1 FROM symbols WHERE symbol = %s FOR UPDATE NOWAIT", (symbol,))
            return False
        except psycopg.errors.LockNotAvailable:
            return True


def backfill(server: SandboxServer, store: CandleStore, requested: dict[str, list[date]]) -> Batch:
    plan = plan_run(store, requested, beat_minute=None, now_ms=ms("2026-01-01T00:00:00Z"))

    async def go() -> Batch:
        async with CcxtExchange(api_url=server.url, backoff_s=0.01) as exchange:
            return await fetch_backfill(exchange, plan)

    return asyncio.run(go())


def test_a_backfill_over_a_symbol_the_store_does_not_know_is_refused_before_any_request(
    store: CandleStore, sandbox: Sandbox
) -> None:
    with pytest.raises(NotRegistered, match="ETH/USDT"):
        plan_run(store, {"ETH/USDT": [date(2020, 1, 1)]}, beat_minute=None, now_ms=0)
    assert sum(sandbox.requests.values()) == 0


def test_a_beat_skips_a_partition_the_sensor_has_not_registered_yet(store: CandleStore) -> None:
    requested = {"BTC/USDT": [date(2020, 1, 2)], "ETH/USDT": [date(2020, 1, 2)]}
    plan = plan_run(store, requested, beat_minute=ms("2020-01-02T12:00:00Z"), now_ms=0)
    assert (list(plan.requested), plan.skipped) == (["BTC/USDT"], ["ETH/USDT"])


def test_the_write_report_accounts_for_every_minute_of_the_outage_month(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    batch = backfill(sandbox_server, store, OUTAGE_MONTH)
    report = write(store, batch, now_ms=ms("2026-01-01T00:00:00Z"))
    assert batch.report is report  # what the checks read
    (month,) = report.gaps["BTC/USDT"]
    assert (month.expected, month.stored, month.explained, month.unexplained) == (MONTH, MONTH - 80, 80, 0)
    assert report.total.inserted == MONTH - 80
    assert report.missing_minutes() == {"BTC/USDT": 80}
    assert report.newest == {"BTC/USDT": ms("2023-03-31T23:59:00Z")}


def test_writing_the_same_batch_again_inserts_nothing(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    write(store, backfill(sandbox_server, store, OUTAGE_MONTH), now_ms=1)
    again = write(store, backfill(sandbox_server, store, OUTAGE_MONTH), now_ms=2)
    assert (again.total.inserted, again.total.unchanged) == (0, MONTH - 80)


def test_a_batch_whose_fetch_reaches_outside_its_days_is_refused_and_stores_nothing(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    batch = backfill(sandbox_server, store, OUTAGE_MONTH)
    batch.requested = {"BTC/USDT": [date(2023, 4, 1)]}  # as if the run were for another month
    with pytest.raises(ValueError, match="outside this run's partitions"):
        write(store, batch, now_ms=1)
    assert store.count_candles("BTC/USDT") == 0


def test_rows_outside_the_runs_partitions_are_refused_before_anything_is_written() -> None:
    candles = pd.DataFrame({"symbol": ["BTC/USDT"], "timestamp": [ms("2020-01-05T00:00:00Z")]})
    with pytest.raises(ValueError, match="outside this run's partitions"):
        split_by_symbol(candles, {"BTC/USDT": [date(2019, 12, 1)]})


def test_expected_minutes_counts_only_closed_minutes_of_the_current_month() -> None:
    now = ms("2020-02-02T00:10:30Z")
    assert expected_minutes([date(2020, 1, 1), date(2020, 2, 1)], now_ms=now) == MONTH + 1440 + 10


def _halves(batch: Batch) -> tuple[SymbolWrite, Batch]:
    """A month's candles as a streamed first half and a batch whose `remaining` is the rest."""
    result = batch.results["BTC/USDT"]
    half = len(result.candles) // 2
    first = SymbolWrite("BTC/USDT", result.candles.iloc[:half])
    rest = replace(result, candles=result.candles.iloc[half:])
    return first, replace(batch, remaining={"BTC/USDT": rest})


def test_a_streamed_backfill_hands_over_a_month_while_its_fetch_is_still_running(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    first, whole = _halves(backfill(sandbox_server, store, OUTAGE_MONTH))
    gate = threading.Event()

    async def fetch(on_month: Callable[[SymbolWrite], None]) -> Batch:
        on_month(first)
        await asyncio.to_thread(gate.wait)  # done only once the writer has the first month
        return whole

    streamed = StreamedBackfill(whole.requested, fetch)
    writes = streamed.writes()
    assert next(writes) is first
    gate.set()
    (rest,) = list(writes)
    assert len(first.candles) + len(rest.candles) == MONTH - 80
    assert streamed.batch is whole


def test_a_streamed_backfill_is_written_while_its_fetch_is_still_running(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    first, whole = _halves(backfill(sandbox_server, store, OUTAGE_MONTH))

    async def fetch(on_month: Callable[[SymbolWrite], None]) -> Batch:
        on_month(first)
        # Done only once the write has begun with the first month: the download and the write overlap.
        await asyncio.to_thread(
            wait_for, "the write to begin", lambda: locked_for_writing(store, "BTC/USDT"), timeout_s=30
        )
        return whole

    report = write(store, StreamedBackfill(whole.requested, fetch), now_ms=1)
    assert report.total.inserted == MONTH - 80
    assert store.count_candles("BTC/USDT") == MONTH - 80


def test_a_streamed_backfill_whose_fetch_fails_after_a_month_changes_nothing_stored(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    batch = backfill(sandbox_server, store, OUTAGE_MONTH)
    write(store, batch, now_ms=1)
    month = month_window(date(2023, 3, 1))
    stored, holes = store.read_candles("BTC/USDT", *month), store.holes("BTC/USDT", *month)
    first, _ = _halves(batch)
    changed = SymbolWrite("BTC/USDT", first.candles.assign(close=first.candles["close"] * 2))

    async def fetch(on_month: Callable[[SymbolWrite], None]) -> Batch:
        on_month(changed)
        raise IngestError("BTC/USDT: the exchange answered nonsense")

    with pytest.raises(IngestError, match="nonsense"):
        write(store, StreamedBackfill(batch.requested, fetch), now_ms=2)
    pd.testing.assert_frame_equal(store.read_candles("BTC/USDT", *month), stored)
    assert store.holes("BTC/USDT", *month) == holes


def test_an_abandoned_streamed_backfill_cancels_its_fetch(
    store: CandleStore, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    first, whole = _halves(backfill(sandbox_server, store, OUTAGE_MONTH))
    cancelled = threading.Event()

    async def fetch(on_month: Callable[[SymbolWrite], None]) -> Batch:
        on_month(first)
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return whole

    writes = StreamedBackfill(whole.requested, fetch).writes()
    next(writes)
    writes.close()  # as when the store fails mid-write
    assert cancelled.is_set()
