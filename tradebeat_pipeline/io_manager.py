"""The IO manager: a thin Dagster adapter that writes what a run fetched into the store."""

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import dagster as dg
import pandas as pd

from tradebeat_pipeline.candles import (
    MINUTE_MS,
    contiguous_day_runs,
    day_window,
    empty_candles,
    iso_utc,
)
from tradebeat_pipeline.defs.resources import resolve_db_path
from tradebeat_pipeline.exchange import FetchResult
from tradebeat_pipeline.partitions import days_by_symbol
from tradebeat_pipeline.store import SQLiteStore, SymbolWrite, UpsertResult

SYMBOL_COLUMN = "symbol"
beat_log = logging.getLogger("tradebeat.heartbeat")


@dataclass(frozen=True)
class Ingest:
    """What one `ohlcv_1m` run fetched, for the IO manager to store in one transaction: per symbol
    its candles and what each fetch covered (the holes it revealed), plus where each symbol's
    history begins on the exchange when the run had to ask."""

    results: dict[str, FetchResult]
    first_candles: dict[str, int | None] = field(default_factory=dict)
    beat_minute: int | None = None  # set for a heartbeat: its one log line after the commit

    def candles(self) -> pd.DataFrame:
        """Every symbol's candles in one frame with a `symbol` column."""
        frames = [r.candles.assign(**{SYMBOL_COLUMN: s}) for s, r in self.results.items()]
        if not frames:
            return empty_candles().assign(**{SYMBOL_COLUMN: pd.Series(dtype="object")})
        return pd.concat(frames, ignore_index=True)

    @property
    def failed(self) -> list[str]:
        return sorted(s for s, r in self.results.items() if r.failures)


class CandleIOManager(dg.ConfigurableIOManager):
    """Upserts an asset's candles and records the holes its fetches revealed, one transaction per
    output, keyed by (symbol, minute)."""

    db_path: str | None = None

    def handle_output(self, context: dg.OutputContext, obj: Ingest) -> None:
        # asset_partition_key_range would enumerate every day since 2017 and cannot describe a run
        # over several symbols; the key collection is exact and cheap.
        requested = days_by_symbol(context.asset_partition_keys)
        candles = obj.candles()
        batches = dict(split_by_symbol(candles, requested))
        writes = []
        for symbol, result in obj.results.items():
            refuse_coverage_outside(symbol, result, requested)
            writes.append(
                SymbolWrite(
                    symbol,
                    batches.get(symbol, empty_candles()),
                    result.coverage,
                    obj.first_candles.get(symbol),
                )
            )
        with SQLiteStore(resolve_db_path(self.db_path)) as store:
            results = store.ingest(writes)
            committed_ms = int(time.time() * 1000)
            missing = {
                symbol: expected_minutes(days)
                - sum(
                    store.count_candles(symbol, day_window(a)[0], day_window(b)[1])
                    for a, b in contiguous_day_runs(days)
                )
                for symbol, days in requested.items()
                if symbol in obj.results
            }
        total = sum(results.values(), UpsertResult())
        holes = Counter(h.kind for h in total.holes)
        metadata: dict[str, dg.RawMetadataValue] = {
            "rows": len(candles),
            "inserted": total.inserted,
            "corrected": total.updated,
            "unchanged": total.unchanged,
            "symbols": len(requested),
            "missing_minutes": int(sum(missing.values())),
            "holes_recorded": dict(holes) or "none",
        }
        failures = [f"{s}: {reason}" for s, r in obj.results.items() for reason in r.failures]
        if failures:
            metadata["fetch_failures"] = failures[:5]
        if len(candles):
            metadata["first_candle"] = iso_utc(int(candles["timestamp"].min()))
            metadata["last_candle"] = iso_utc(int(candles["timestamp"].max()))
        if len(missing) <= 20:
            metadata["missing_minutes_by_symbol"] = {s: int(m) for s, m in missing.items()}
        if obj.beat_minute is not None:
            minute = obj.beat_minute
            latency = (committed_ms - minute - MINUTE_MS) / 1000
            failed = obj.failed
            metadata.update(
                beat_minute=iso_utc(minute),
                close_to_commit_s=latency,
                failed_symbols=", ".join(failed) or "none",
            )
            beat_log.info(
                "beat %s: %d symbols ok, %d failed, %d candles stored (%d corrected), close to commit %.1fs",
                iso_utc(minute),
                len(obj.results) - len(failed),
                len(failed),
                total.inserted,
                total.updated,
                latency,
            )
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        requested = days_by_symbol(context.asset_partition_keys)
        frames: list[pd.DataFrame] = []
        with SQLiteStore(resolve_db_path(self.db_path)) as store:
            for symbol, days in requested.items():
                for first, last in contiguous_day_runs(days):
                    candles = store.read_candles(symbol, day_window(first)[0], day_window(last)[1])
                    frames.append(candles.assign(**{SYMBOL_COLUMN: symbol}))
        if not frames:
            return empty_candles().assign(**{SYMBOL_COLUMN: pd.Series(dtype="object")})
        return pd.concat(frames, ignore_index=True)


def split_by_symbol(
    candles: pd.DataFrame, requested: dict[str, list[date]]
) -> list[tuple[str, pd.DataFrame]]:
    """Per-symbol batches; a row outside the run's own partitions is a bug and stops the write."""
    batches: list[tuple[str, pd.DataFrame]] = []
    if candles.empty:
        return batches
    unknown = set(candles[SYMBOL_COLUMN].unique()) - set(requested)
    if unknown:
        raise ValueError(f"candles for symbols outside this run's partitions: {sorted(unknown)}")
    for symbol, frame in candles.groupby(SYMBOL_COLUMN, sort=False):
        day_of = frame["timestamp"].to_numpy() // 86_400_000
        allowed = {(day_window(d)[0]) // 86_400_000 for d in requested[str(symbol)]}
        outside = ~pd.Series(day_of).isin(allowed).to_numpy()
        if outside.any():
            first = int(frame["timestamp"].to_numpy()[outside][0])
            raise ValueError(
                f"{symbol}: candle at {iso_utc(first)} lies outside this run's partitions; "
                "nothing was written"
            )
        batches.append((str(symbol), frame.drop(columns=SYMBOL_COLUMN)))
    return batches


def refuse_coverage_outside(symbol: str, result: FetchResult, requested: dict[str, list[date]]) -> None:
    """A fetched window reaching outside the run's partitions would rewrite holes it does not own."""
    days = requested.get(symbol)
    if days is None:
        raise ValueError(f"{symbol}: fetched, but not among this run's partitions; nothing was written")
    runs = [(day_window(a)[0], day_window(b)[1]) for a, b in contiguous_day_runs(days)]
    for cov in result.coverage:
        if not any(lo <= cov.start and cov.end <= hi for lo, hi in runs):
            raise ValueError(
                f"{symbol}: a fetch of {iso_utc(cov.start)}..{iso_utc(cov.end)} lies outside this "
                "run's partitions; nothing was written"
            )


def expected_minutes(days: Sequence[date], now_ms: int | None = None) -> int:
    """Minutes that have closed (by the local clock) within these days."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    closed_until = now_ms - now_ms % MINUTE_MS
    total = 0
    for day in days:
        start, end = day_window(day)
        total += max(0, min(end, closed_until) - start) // MINUTE_MS
    return total


class RollupIOManager(dg.ConfigurableIOManager):
    """Writes an asset's rollup buckets (timeframe from its definition metadata), one transaction
    per output, keyed by (symbol, timeframe, bucket)."""

    db_path: str | None = None

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        timeframe = str(context.definition_metadata["timeframe"])
        batches = [
            (str(symbol), timeframe, frame.drop(columns=SYMBOL_COLUMN))
            for symbol, frame in obj.groupby(SYMBOL_COLUMN, sort=False)
        ]
        with SQLiteStore(resolve_db_path(self.db_path)) as store:
            written = store.upsert_rollups(batches)
        context.add_output_metadata(
            {
                "buckets": written,
                "incomplete_buckets": int((~obj["complete"]).sum()) if len(obj) else 0,
                "timeframe": timeframe,
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        timeframe = str(context.upstream_output.definition_metadata["timeframe"])  # type: ignore[union-attr]
        requested = days_by_symbol(context.asset_partition_keys)
        frames: list[pd.DataFrame] = []
        with SQLiteStore(resolve_db_path(self.db_path)) as store:
            for symbol, days in requested.items():
                for first, last in contiguous_day_runs(days):
                    frame = store.read_rollups(symbol, timeframe, day_window(first)[0], day_window(last)[1])
                    frames.append(frame.assign(**{SYMBOL_COLUMN: symbol}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
