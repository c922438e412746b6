"""What every candle store does the same way, whatever its SQL dialect (no SQL, no driver here): which
incoming candles are new or corrected, what a fetch means for the recorded holes, how driver errors
become `StoreError`, and how corrections are logged. Each implementation only moves rows."""

import functools
import inspect
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import pandas as pd

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.quality import (
    GAP_KINDS,
    Coverage,
    GapKind,
    Hole,
    classify,
    merge_adjacent,
    missing_runs,
    outside,
)
from tradebeat_pipeline.store import StoreError, SymbolWrite, UpsertResult
from tradebeat_pipeline.timewindows import MINUTE_MS, iso_utc

log = logging.getLogger("tradebeat.store")

VALUE_COLUMNS = CANDLE_COLUMNS[1:]
# Every table and view a tradebeat store creates; anything else means the database is someone else's.
STORE_TABLES = ("symbols", "price_data", "candles", "gaps", "rollups")

_R = TypeVar("_R")
_P = ParamSpec("_P")
_S = TypeVar("_S")
_C = TypeVar("_C", bound=type)


def driver_errors_reported(
    errors: type[BaseException] | tuple[type[BaseException], ...],
    where: Callable[[Any], str],
    *,
    secret: Callable[[Any], str | None] = lambda store: None,
) -> Callable[[_C], _C]:
    """A class decorator wrapping every public method so the driver's `errors` become a `StoreError`
    that names the database (`where(store)`) and the method: callers catch `StoreError` and never
    import a driver, and a method added later is covered without remembering to. `secret(store)`
    (a password) is blanked out of the driver's message should it ever appear there."""

    def reported(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(method)
        def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(self, *args, **kwargs)
            except errors as exc:
                message, hidden = str(exc), secret(self)
                if hidden:
                    message = message.replace(hidden, "***")
                raise StoreError(f"{where(self)}: {method.__name__} failed: {message}") from exc

        return wrapper

    def decorate(cls: _C) -> _C:
        for name, attr in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(attr):
                setattr(cls, name, reported(attr))
        return cls

    return decorate


def created_now() -> str:
    """A symbol's `created_at`: UTC, to the second, ISO-8601."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gap_kind(text: str) -> GapKind:
    """A stored kind, checked: a row no tradebeat wrote is an error, not a silent new kind."""
    if text not in GAP_KINDS:
        raise StoreError(f"gaps table holds an unknown kind {text!r}")
    return text


@dataclass(frozen=True)
class CandleDiff:
    """Incoming candles against the stored ones: only `to_write` (new or corrected) is written, so
    an unchanged row keeps its first `ingested_at`."""

    to_write: pd.DataFrame
    result: UpsertResult


def diff_candles(candles: pd.DataFrame, existing: pd.DataFrame) -> CandleDiff:
    """Which of `candles` are new, corrected (a value differs; NULL equals NULL) or unchanged, given
    the stored candles `existing` of their time range."""
    candles = candles.loc[:, list(CANDLE_COLUMNS)]
    if existing.empty:
        return CandleDiff(candles, UpsertResult(inserted=len(candles)))
    merged = candles.merge(existing, on="timestamp", how="left", suffixes=("", "_old"), indicator=True)
    is_new = (merged["_merge"] == "left_only").to_numpy()
    differs = np.zeros(len(merged), dtype=bool)
    for c in VALUE_COLUMNS:
        new, old = merged[c], merged[f"{c}_old"]
        same = (new == old).fillna(False) | (new.isna() & old.isna())
        differs |= ~same.to_numpy(dtype=bool)
    changed = differs & ~is_new
    inserted = int(is_new.sum())
    corrected = merged.loc[changed, "timestamp"].astype(int).tolist()
    return CandleDiff(
        candles[is_new | changed],
        UpsertResult(
            inserted=inserted,
            updated=len(corrected),
            unchanged=len(candles) - inserted - len(corrected),
            corrected=corrected,
        ),
    )


def time_range(candles: pd.DataFrame) -> tuple[int, int]:
    """[first, last + 1) open times of a non-empty batch: the stored rows it can collide with."""
    ts = candles["timestamp"].to_numpy(dtype=np.int64)
    return int(ts.min()), int(ts.max()) + 1


def listed_start(start_ms: int, listed: int | None) -> int:
    """Where expected minutes begin: never before the exchange's first candle."""
    return start_ms if listed is None else max(start_ms, int(listed))


def touching_window(cov: Coverage) -> tuple[int, int]:
    """The recorded holes a fetch of `cov` may replace or merge with: those overlapping it or
    touching its edges."""
    return cov.start - MINUTE_MS, cov.end + MINUTE_MS


@dataclass(frozen=True)
class HolePlan:
    """What one fetched window does to the gaps table: `touching` rows go, `rows` come in their
    place; `new` are the holes this fetch saw, reported to the caller."""

    new: list[Hole]
    rows: list[Hole]


def plan_holes(
    cov: Coverage,
    listed: int | None,
    touching: Sequence[Hole],
    stored: np.ndarray,
    *,
    is_stored: Callable[[int], bool],
    now_ms: int,
) -> HolePlan:
    """Replace what is recorded inside the fetched window with what this fetch showed; `stored` are
    the open times stored in [listed_start(cov.start, listed), cov.end), oldest first."""
    start = listed_start(cov.start, listed)
    runs = missing_runs(stored, start, cov.end)
    return plan_hole_runs(cov, runs, touching, is_stored=is_stored, now_ms=now_ms)


def plan_hole_runs(
    cov: Coverage,
    runs: Sequence[tuple[int, int]],
    touching: Sequence[Hole],
    *,
    is_stored: Callable[[int], bool],
    now_ms: int,
) -> HolePlan:
    """`plan_holes` for a store that found the window's missing runs [first, last] itself, as
    `missing_runs` would (without handing every stored open time to Python)."""
    new = classify(runs, cov, touching, is_stored=is_stored, now_ms=now_ms)
    return HolePlan(new, merge_adjacent([*outside(touching, cov.start, cov.end), *new]))


def refuse_unannounced(write: SymbolWrite, announced: Collection[str] | None) -> None:
    """A part for a symbol the write did not announce is a caller's bug: the store may not have
    locked that symbol, so the whole write stops (and rolls back) naming it."""
    if announced is not None and write.symbol not in announced:
        raise ValueError(
            f"{write.symbol}: a part for a symbol this write did not announce "
            f"({', '.join(sorted(announced)) or 'none'}); nothing was written"
        )


@dataclass(frozen=True)
class StoredMinutes:
    """The three questions `missing_runs_asked` puts to a store about one symbol's stored open
    times in [start, end): how many are whole minutes, the first one, and each stored open time
    followed by a gap (the next one more than a minute later, or `end`) with that next one."""

    aligned_count: Callable[[int, int], int]
    first: Callable[[int, int], int | None]
    gap_edges: Callable[[int, int], Iterable[tuple[int, int]]]


def missing_runs_asked(
    start: int, end: int, written: np.ndarray, ask: StoredMinutes
) -> list[tuple[int, int]]:
    """`quality.missing_runs` of the stored open times in [start, end), without reading them:
    none when the minutes just `written` (sorted, minute-aligned) or the stored ones fill the
    window, else runs [first, last] from the edges of the gaps, asked of the store."""
    if end <= start:
        return []
    if start % MINUTE_MS == 0 and end % MINUTE_MS == 0:
        minutes = (end - start) // MINUTE_MS
        if int(np.searchsorted(written, end) - np.searchsorted(written, start)) == minutes:
            return []
        if ask.aligned_count(start, end) == minutes:
            return []
    first = ask.first(start, end)
    if first is None:
        return [(start, end - MINUTE_MS)]
    runs = [(start, int(first) - MINUTE_MS)] if first > start else []
    runs.extend(
        (int(before) + MINUTE_MS, int(after) - MINUTE_MS) for before, after in ask.gap_edges(start, end)
    )
    return runs


def minutes_of(candles: pd.DataFrame) -> np.ndarray:
    """The distinct minute-aligned open times of a batch, sorted."""
    ts = candles["timestamp"].to_numpy(dtype=np.int64)
    ts = sorted_times(ts[ts % MINUTE_MS == 0])
    return ts[np.concatenate(([True], ts[1:] != ts[:-1]))] if len(ts) else ts


def sorted_times(ts: np.ndarray) -> np.ndarray:
    """`ts` in ascending order; a batch usually arrives so (cheaper than np.unique's hashing)."""
    return ts if bool(np.all(ts[1:] >= ts[:-1])) else np.sort(ts)


def log_corrections(results: dict[str, UpsertResult]) -> None:
    """One warning per symbol whose stored candles the exchange corrected, naming the first ten."""
    for symbol, result in results.items():
        if result.corrected:
            log.warning(
                "%s: exchange corrected %d stored candle(s): %s",
                symbol,
                len(result.corrected),
                ", ".join(iso_utc(ts) for ts in result.corrected[:10]),
            )
