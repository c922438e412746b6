"""The candle store interface (no Dagster, no SQL inside): what the pipeline, checks, health, CLI
and rollups need from a store, the values it hands back, and its errors.

`CandleStore` is the interface every caller depends on; `sqlite.SQLiteStore` is the embedded
implementation, `postgres.PostgresStore` the shared one, and `open_store` picks the one the settings
name (DATABASE_URL set: PostgreSQL). `budget_ledger.PostgresLedger` keeps the shared request-weight
ledger (`budget.SharedLedger`) in the PostgreSQL store's database. Every line of SQL of the project
lives in this package.
"""

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

import pandas as pd

from tradebeat_pipeline.errors import Failed, Refused
from tradebeat_pipeline.quality import Coverage, GapReport, Hole

if TYPE_CHECKING:
    from tradebeat_pipeline.settings import Settings


class StoreError(Failed, RuntimeError):
    """The database cannot be used as a tradebeat store (wrong file, newer schema, read-only, or the
    driver failed): the message names DB_PATH (or DATABASE_URL's host and database) and the problem."""


class UnknownSymbol(Refused, LookupError):
    """A symbol that was never registered in the store."""


@dataclass(frozen=True)
class SymbolRow:
    symbol: str
    created_at: str
    is_active: bool
    first_candle: int | None
    last_candle: int | None
    candles: int


@dataclass(frozen=True)
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    corrected: list[int] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)  # recorded by this write, in its windows

    def __add__(self, other: "UpsertResult") -> "UpsertResult":
        return UpsertResult(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.corrected + other.corrected,
            self.holes + other.holes,
        )


@dataclass(frozen=True)
class SymbolWrite:
    """One symbol's part of a write: its candles, the windows they were fetched for, and where the
    exchange's history begins (None when unknown)."""

    symbol: str
    candles: pd.DataFrame
    coverage: Sequence[Coverage] = ()
    first_candle_ms: int | None = None


class CandleStore(Protocol):
    """What the pipeline, checks, health, CLI and rollups need from a candle store: symbols by name
    (ids stay inside the store), candles, their holes and rollups. Every method raises `StoreError`
    when the database fails, never the driver's own exceptions."""

    def __enter__(self) -> Self:
        """The store itself, closed again when the block ends."""

    def __exit__(self, *exc: object) -> None:
        """Close the store whether or not the block failed."""

    def close(self) -> None:
        """Release the connection; the store reopens it on next use."""

    def register_symbol(self, symbol: str) -> int:
        """Add a symbol, or reactivate it keeping its data; returns the store's id for it."""

    def deactivate_symbol(self, symbol: str) -> bool:
        """Stop collecting a symbol but keep its data; False if it was never registered."""

    def active_symbols(self) -> set[str]:
        """The symbols being collected, cheaply (the heartbeat's hot path)."""

    def list_symbols(self, *, active: bool | None = True) -> list[SymbolRow]:
        """Symbols with their candle counts and span, for people; `active=None` lists all."""

    def upsert_candles(
        self, batches: Sequence[tuple[str, pd.DataFrame]], *, now_ms: int | None = None
    ) -> dict[str, UpsertResult]:
        """Write (symbol, candles) batches in one transaction, without recording holes."""

    def ingest(
        self,
        writes: Iterable[SymbolWrite],
        *,
        now_ms: int | None = None,
        symbols: Collection[str] | None = None,
    ) -> dict[str, UpsertResult]:
        """Write candles and the holes their fetches revealed in one transaction: all or nothing.
        `writes` may be a stream still arriving (a backfill's months); each is written in turn.
        `symbols` announces every symbol the stream will touch, so a store that must lock them
        first can start writing before the stream ends; a part for another symbol is refused
        (`ValueError`). Without it, a store may await the whole stream before writing."""

    def read_candles(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Stored candles with open time in [start_ms, end_ms), oldest first."""

    def newest_candles(self, symbols: Sequence[str], before_ms: int | None = None) -> dict[str, int | None]:
        """Open time of each symbol's newest candle (before `before_ms`), None when it has none."""

    def first_candles(self, symbols: Sequence[str]) -> dict[str, int | None]:
        """Where each symbol's history begins on the exchange, None when not known yet."""

    def holes(self, symbol: str, start_ms: int, end_ms: int) -> list[Hole]:
        """Recorded holes overlapping [start_ms, end_ms), so a caller can tell why minutes are missing."""

    def gap_report(self, symbol: str, start_ms: int, end_ms: int) -> GapReport:
        """Every minute of [start_ms, end_ms) accounted for: stored, halted, or missing and why."""

    def candle_span(self, symbol: str) -> tuple[int | None, int | None]:
        """Open times of the oldest and newest stored candles, (None, None) when there are none."""

    def count_candles(self, symbol: str, start_ms: int = 0, end_ms: int = 2**62) -> int:
        """How many candles are stored with open time in [start_ms, end_ms)."""

    def days_changed(self, symbol: str, start_ms: int, end_ms: int, since_ms: int) -> list[int]:
        """Starts of the UTC days in [start_ms, end_ms) holding a candle written (new or corrected)
        at or after `since_ms`, oldest first: what a rollup must recompute."""

    def upsert_rollups(self, batches: Sequence[tuple[str, str, pd.DataFrame]]) -> int:
        """Write (symbol, timeframe, buckets) batches in one transaction; returns the buckets written."""

    def read_rollups(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Stored buckets of a timeframe with open time in [start_ms, end_ms), oldest first."""


def open_store(where: "Path | Settings", database_url: str | None = None) -> CandleStore:
    """The store the settings name: PostgreSQL when DATABASE_URL (or `database_url`) is set, else the
    SQLite file at DB_PATH (or at the path given, as callers that pass a path expect)."""
    from tradebeat_pipeline.settings import Settings

    if isinstance(where, Settings):
        db_path = where.db_path
        if database_url is None and where.database_url is not None:
            database_url = where.database_url.get_secret_value()
    else:
        db_path = Path(where)
    if database_url:
        from tradebeat_pipeline.store.postgres import PostgresStore

        return PostgresStore(database_url)
    from tradebeat_pipeline.store.sqlite import SQLiteStore

    return SQLiteStore(db_path)
