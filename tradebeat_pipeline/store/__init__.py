"""The candle store interface (no Dagster, no SQL inside): what the pipeline, checks, health, CLI
and rollups need from a store, the values it hands back, and its errors.

`CandleStore` is the interface every caller depends on; `sqlite.SQLiteStore` is the embedded
implementation, and `open_store` picks the one the settings name. Every line of SQL of the project
lives in this package.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from tradebeat_pipeline.errors import Failed
from tradebeat_pipeline.quality import Coverage, GapReport, Hole


class StoreError(Failed, RuntimeError):
    """The database cannot be used as a tradebeat store (wrong file, newer schema, read-only)."""


class UnknownSymbol(LookupError):
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
    """What the pipeline needs from a candle store."""

    def __enter__(self) -> "CandleStore": ...
    def __exit__(self, *exc: object) -> None: ...
    def close(self) -> None: ...
    def register_symbol(self, symbol: str) -> int: ...
    def deactivate_symbol(self, symbol: str) -> bool: ...
    def list_symbols(self, *, active: bool | None = True) -> list[SymbolRow]: ...
    def active_symbols(self) -> set[str]: ...
    def upsert_candles(self, batches: Sequence[tuple[str, pd.DataFrame]]) -> dict[str, UpsertResult]: ...
    def ingest(self, writes: Sequence[SymbolWrite]) -> dict[str, UpsertResult]: ...
    def read_candles(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame: ...
    def newest_candles(
        self, symbols: Sequence[str], before_ms: int | None = None
    ) -> dict[str, int | None]: ...
    def first_candles(self, symbols: Sequence[str]) -> dict[str, int | None]: ...
    def holes(self, symbol: str, start_ms: int, end_ms: int) -> list[Hole]: ...
    def gap_report(self, symbol: str, start_ms: int, end_ms: int) -> GapReport: ...


def open_store(db_path: Path) -> CandleStore:
    """The store at DB_PATH (SQLite, the embedded default)."""
    from tradebeat_pipeline.store.sqlite import SQLiteStore

    return SQLiteStore(db_path)
