"""The metadata tradebeat writes on materializations and check results, as dataclasses shared by the
writer (IO manager, checks) and the readers (the CLI, tests, benchmarks): a field's name is its key,
so a renamed key breaks the reader loudly instead of reading 0.
"""

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any, Self

import dagster as dg

from tradebeat_pipeline.defs.partitions import partition_key
from tradebeat_pipeline.ingest import Batch, WriteReport
from tradebeat_pipeline.timewindows import MINUTE_MS, iso_utc

# Per-symbol figures are listed only for runs over at most this many symbols (the page stays short).
MAX_SYMBOLS_LISTED = 20
# Per-partition provenance (and per-file checksums) are listed for runs up to this size: a symbol's
# whole history is ~100 monthly partitions.
MAX_PARTITIONS_LISTED = 200


@dataclasses.dataclass(frozen=True)
class _Metadata:
    """Fields are metadata entries; `extra` holds entries for people (tables, lists) only."""

    def as_dict(self, **extra: "dg.RawMetadataValue") -> "dict[str, dg.RawMetadataValue]":
        entries = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**{k: v for k, v in entries.items() if v is not None}, **extra}

    @classmethod
    def read(cls, metadata: Mapping[str, Any]) -> Self:
        """From a materialization's or check result's metadata (values or `MetadataValue`s)."""
        values = {}
        for f in dataclasses.fields(cls):
            raw = metadata.get(f.name)
            values[f.name] = raw.value if isinstance(raw, dg.MetadataValue) else raw
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class RunMetadata(_Metadata):
    """An `ohlcv_1m` materialization: what its write stored."""

    rows: int
    inserted: int
    corrected: int
    unchanged: int
    symbols: int
    missing_minutes: int
    holes_recorded: dict[str, int] | str
    fetch_failures: list[str] | None = None
    first_candle: str | None = None
    last_candle: str | None = None
    missing_minutes_by_symbol: dict[str, int] | None = None
    beat_minute: str | None = None
    close_to_commit_s: float | None = None
    failed_symbols: str | None = None
    # A backfill's provenance: candles per source (archive-monthly, archive-daily, rest), per
    # partition when the run has at most MAX_PARTITIONS_LISTED, and the archive files proven.
    candles_by_source: dict[str, int] | None = None
    candles_by_partition_and_source: dict[str, dict[str, int]] | None = None
    archive_files_verified: int | None = None
    archive_checksums: dict[str, str] | None = None
    archive_files_refused: list[str] | None = None

    @classmethod
    def of(cls, batch: Batch, report: WriteReport, *, partitions: int) -> "RunMetadata":
        total = report.total
        missing = report.missing_minutes()
        candles = batch.candles
        failures = [f"{s}: {reason}" for s, r in batch.results.items() for reason in r.failures]
        beat = batch.beat_minute
        return cls(
            rows=len(candles),
            inserted=total.inserted,
            corrected=total.updated,
            unchanged=total.unchanged,
            symbols=partitions,
            missing_minutes=sum(missing.values()),
            holes_recorded=dict(Counter(h.kind for h in total.holes)) or "none",
            fetch_failures=failures[:5] or None,
            first_candle=iso_utc(int(candles["timestamp"].min())) if len(candles) else None,
            last_candle=iso_utc(int(candles["timestamp"].max())) if len(candles) else None,
            missing_minutes_by_symbol=missing if len(missing) <= MAX_SYMBOLS_LISTED else None,
            beat_minute=None if beat is None else iso_utc(beat),
            close_to_commit_s=None if beat is None else (report.committed_ms - beat - MINUTE_MS) / 1000,
            failed_symbols=None if beat is None else ", ".join(batch.failed) or "none",
            **_provenance(batch),
        )


def _provenance(batch: Batch) -> dict[str, Any]:
    """A backfill's sources and archive files, as RunMetadata fields (a beat has none)."""
    if batch.beat_minute is not None:
        return {}
    totals: Counter[str] = Counter()
    by_partition: dict[str, dict[str, int]] = {}
    for symbol, months in batch.sources.items():
        for month, counts in months.items():
            totals.update(counts)
            by_partition[str(partition_key(month, symbol))] = counts
    return {
        "candles_by_source": dict(sorted(totals.items())),
        "candles_by_partition_and_source": (
            dict(sorted(by_partition.items())) if len(by_partition) <= MAX_PARTITIONS_LISTED else None
        ),
        "archive_files_verified": len(batch.checksums),
        "archive_checksums": (
            dict(sorted(batch.checksums.items())) if len(batch.checksums) <= MAX_PARTITIONS_LISTED else None
        ),
        "archive_files_refused": batch.refused_files or None,
    }


@dataclasses.dataclass(frozen=True)
class OhlcMetadata(_Metadata):
    """The `ohlc_valid` check."""

    checked_candles: int
    violations: int
    halted_minutes: int


@dataclasses.dataclass(frozen=True)
class GapsMetadata(_Metadata):
    """The `gaps_explained` check: expected = stored + explained + unexplained over the judged
    windows; a beat adds the unexplained minutes recorded elsewhere in its months."""

    expected_minutes: int
    stored: int
    halted: int
    explained_minutes: int
    unexplained_minutes: int
    holes: int
    unexplained_elsewhere_minutes: int | None = None


@dataclasses.dataclass(frozen=True)
class FreshMetadata(_Metadata):
    """The `fresh` check."""

    freshness_limit_minutes: int
    max_lag_minutes: int
    lagging: dict[str, str] | str
