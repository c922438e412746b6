"""The IO manager: a thin Dagster adapter that upserts candle frames into the store."""

import time
from collections.abc import Sequence
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
from tradebeat_pipeline.partitions import days_by_symbol
from tradebeat_pipeline.store import SQLiteStore, UpsertResult

SYMBOL_COLUMN = "symbol"
# A heartbeat's frame carries {"minute", "ok", "failed"} here, for its one log line after commit.
BEAT_ATTR = "tradebeat_beat"


class CandleIOManager(dg.ConfigurableIOManager):
    """Upserts an asset's candles, one transaction per output, keyed by (symbol, minute)."""

    db_path: str | None = None

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        # asset_partition_key_range would enumerate every day since 2017 and cannot describe a run
        # over several symbols; the key collection is exact and cheap.
        requested = days_by_symbol(context.asset_partition_keys)
        batches = split_by_symbol(obj, requested)
        with SQLiteStore(resolve_db_path(self.db_path)) as store:
            results = store.upsert_candles(batches)
            committed_ms = int(time.time() * 1000)
            missing = {
                symbol: expected_minutes(days)
                - sum(
                    store.count_candles(symbol, day_window(a)[0], day_window(b)[1])
                    for a, b in contiguous_day_runs(days)
                )
                for symbol, days in requested.items()
            }
        total = sum(results.values(), UpsertResult())
        metadata: dict[str, dg.RawMetadataValue] = {
            "rows": len(obj),
            "inserted": total.inserted,
            "corrected": total.updated,
            "unchanged": total.unchanged,
            "symbols": len(requested),
            "missing_minutes": int(sum(missing.values())),
        }
        if len(obj):
            metadata["first_candle"] = iso_utc(int(obj["timestamp"].min()))
            metadata["last_candle"] = iso_utc(int(obj["timestamp"].max()))
        if len(missing) <= 20:
            metadata["missing_minutes_by_symbol"] = {s: int(m) for s, m in missing.items()}
        beat = obj.attrs.get(BEAT_ATTR)
        if beat is not None:
            latency = (committed_ms - beat["minute"] - MINUTE_MS) / 1000
            metadata.update(
                beat_minute=iso_utc(beat["minute"]),
                close_to_commit_s=latency,
                failed_symbols=", ".join(beat["failed"]) or "none",
            )
            context.log.info(
                f"beat {iso_utc(beat['minute'])}: {beat['ok']} symbols ok, {len(beat['failed'])} failed, "
                f"{total.inserted} candles stored ({total.updated} corrected), "
                f"close to commit {latency:.1f}s"
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


def expected_minutes(days: Sequence[date], now_ms: int | None = None) -> int:
    """Minutes that have closed (by the local clock) within these days."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    closed_until = now_ms - now_ms % MINUTE_MS
    total = 0
    for day in days:
        start, end = day_window(day)
        total += max(0, min(end, closed_until) - start) // MINUTE_MS
    return total
