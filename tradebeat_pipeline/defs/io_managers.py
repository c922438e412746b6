"""IO managers: thin Dagster adapters between the candle assets and the store.

`ohlcv_1m`'s value is the candles of its partitions. Going out it is a fetched `Batch` (candles plus
what the fetch learned about holes), written in one transaction; the write's `WriteReport` is kept on
the batch for the asset's checks. Coming in, for a downstream asset, it is the stored candles of the
partitions asked for, as one frame with a `symbol` column.
"""

import logging

import dagster as dg
import pandas as pd

from tradebeat_pipeline.candles import SYMBOL_COLUMN, with_symbols
from tradebeat_pipeline.defs.metadata import RunMetadata
from tradebeat_pipeline.defs.partitions import months_by_symbol
from tradebeat_pipeline.defs.resources import StoreResource
from tradebeat_pipeline.ingest import Batch, IngestError, StreamedBackfill, write
from tradebeat_pipeline.timewindows import MINUTE_MS, iso_utc, month_windows, now_ms

beat_log = logging.getLogger("tradebeat.heartbeat")
backfill_log = logging.getLogger("tradebeat.backfill")


class CandleIOManager(dg.ConfigurableIOManager):
    """Upserts an asset's candles and records the holes its fetches revealed, one transaction per
    output, keyed by (symbol, minute)."""

    store: dg.ResourceDependency[StoreResource]

    def handle_output(self, context: dg.OutputContext, obj: Batch | StreamedBackfill) -> None:
        # asset_partition_key_range would enumerate every day since 2017 and cannot describe a run
        # over several symbols; the key collection is exact and cheap.
        requested = months_by_symbol(context.asset_partition_keys)
        if set(obj.requested) - set(requested):
            if isinstance(obj, StreamedBackfill):
                obj.cancel()
            raise ValueError(f"a batch for symbols outside this run's partitions: {sorted(obj.requested)}")
        if isinstance(obj, StreamedBackfill):
            backfill_log.info(
                "storing %d symbols' months in one transaction as their files arrive", len(obj.requested)
            )
        else:
            (beat_log if obj.beat_minute is not None else backfill_log).info(
                "storing %d candles of %d symbols in one transaction", len(obj.candles), len(obj.results)
            )
        try:
            with self.store.open() as store:
                report = write(store, obj, now_ms=now_ms())
        except IngestError as exc:  # a streamed backfill's fetch fails inside the write
            raise dg.Failure(str(exc)) from exc
        batch = obj.batch if isinstance(obj, StreamedBackfill) else obj
        context.add_output_metadata(RunMetadata.of(batch, report, partitions=len(requested)).as_dict())
        if batch.beat_minute is not None:
            _log_beat(batch)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        requested = months_by_symbol(context.asset_partition_keys)
        frames: dict[str, list[pd.DataFrame]] = {}
        with self.store.open() as store:
            for symbol, months in requested.items():
                frames[symbol] = [store.read_candles(symbol, a, b) for a, b in month_windows(months)]
        return with_symbols({s: pd.concat(f, ignore_index=True) for s, f in frames.items()})


def _log_beat(batch: Batch) -> None:
    """The beat's one line, after its commit."""
    assert batch.report is not None and batch.beat_minute is not None
    total = batch.report.total
    failed = batch.failed
    beat_log.info(
        "beat %s: %d symbols ok, %d failed, %d candles stored (%d corrected), close to commit %.1fs",
        iso_utc(batch.beat_minute),
        len(batch.results) - len(failed),
        len(failed),
        total.inserted,
        total.updated,
        (batch.report.committed_ms - batch.beat_minute - MINUTE_MS) / 1000,
    )


class RollupIOManager(dg.ConfigurableIOManager):
    """Writes an asset's rollup buckets (timeframe from its definition metadata), one transaction
    per output, keyed by (symbol, timeframe, bucket)."""

    store: dg.ResourceDependency[StoreResource]

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        timeframe = str(context.definition_metadata["timeframe"])
        batches = [
            (str(symbol), timeframe, frame.drop(columns=SYMBOL_COLUMN))
            for symbol, frame in obj.groupby(SYMBOL_COLUMN, sort=False)
        ]
        with self.store.open() as store:
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
        requested = months_by_symbol(context.asset_partition_keys)
        frames: list[pd.DataFrame] = []
        with self.store.open() as store:
            for symbol, months in requested.items():
                for a, b in month_windows(months):
                    frame = store.read_rollups(symbol, timeframe, a, b)
                    frames.append(frame.assign(**{SYMBOL_COLUMN: symbol}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
