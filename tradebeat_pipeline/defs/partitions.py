"""THE partitions of the candle assets: one UTC month × one symbol.

Monthly, not daily or minutely: Dagster spends ~60 ms of its own CPU per partition materialized,
whatever the storage, so a symbol's whole history (since 2017) is ~100 month partitions, seconds of
bookkeeping, where it was ~3,100 day partitions, minutes (see README, "Design"). A month is also the
unit of Binance's public history archives.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Final

import dagster as dg

from tradebeat_pipeline.timewindows import FIRST_MONTH, iso_utc, month_key, parse_instant, parse_month

MONTH_DIMENSION = "month"
SYMBOL_DIMENSION = "symbol"
SYMBOLS_PARTITIONS_NAME = "symbols"

symbols_partitions = dg.DynamicPartitionsDefinition(name=SYMBOLS_PARTITIONS_NAME)
# end_offset=1 makes the current month a partition too: it fills up minute by minute.
monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=month_key(FIRST_MONTH), end_offset=1, timezone="UTC", fmt="%Y-%m"
)
candle_partitions = dg.MultiPartitionsDefinition(
    {MONTH_DIMENSION: monthly_partitions, SYMBOL_DIMENSION: symbols_partitions}
)


def partition_key(month: date, symbol: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({MONTH_DIMENSION: month_key(month), SYMBOL_DIMENSION: symbol})


def parse_partition_key(key: str) -> tuple[date, str]:
    """(month, symbol) of a `2026-01|BTC/USDT` key; ValueError if it is not one."""
    dims = candle_partitions.get_partition_key_from_str(key).keys_by_dimension
    return parse_month(dims[MONTH_DIMENSION]), dims[SYMBOL_DIMENSION]


def months_by_symbol(keys: Iterable[str]) -> dict[str, list[date]]:
    """Group a run's partition keys by symbol, each with its months in order."""
    grouped: dict[str, set[date]] = defaultdict(set)
    for key in keys:
        if isinstance(key, dg.MultiPartitionKey):
            dims = key.keys_by_dimension
        else:
            dims = candle_partitions.get_partition_key_from_str(key).keys_by_dimension
        grouped[dims[SYMBOL_DIMENSION]].add(parse_month(dims[MONTH_DIMENSION]))
    return {symbol: sorted(months) for symbol, months in grouped.items()}


RANGE_START_TAG = "dagster/asset_partition_range_start"  # Dagster's own: one run over a key range
RANGE_END_TAG = "dagster/asset_partition_range_end"


def range_tags(first: tuple[date, str], last: tuple[date, str]) -> dict[str, str]:
    """Tags that make ONE run cover the rectangle from `first` to `last` (month, symbol).

    Dagster turns a run with these tags into a single run over the whole range, which is how
    `BackfillPolicy.single_run()` backfills are executed.
    """
    return {
        RANGE_START_TAG: str(partition_key(*first)),
        RANGE_END_TAG: str(partition_key(*last)),
    }


def range_of(tags: Mapping[str, str]) -> tuple[tuple[date, str], tuple[date, str]]:
    """The (month, symbol) corners of a range-tagged run; KeyError/ValueError when it is not one."""
    return parse_partition_key(tags[RANGE_START_TAG]), parse_partition_key(tags[RANGE_END_TAG])


# Run tags tradebeat sets and reads.
KIND_TAG = "tradebeat/kind"  # a `Kind`
BEAT_MINUTE_TAG = "tradebeat/beat_minute"  # the minute a heartbeat stores, ISO UTC (2026-01-02T03:04:00Z)
ONBOARD_TAG = "tradebeat/onboard"  # the symbols an automatic history backfill onboards


class Kind:
    """What a run is for, as its KIND_TAG says (the run queue admits one HEARTBEAT at a time).
    Plain strings, not an enum: run tags must serialize as text."""

    HEARTBEAT: Final = "heartbeat"
    BACKFILL: Final = "backfill"
    ROLLUPS: Final = "rollups"
    CHART: Final = "chart"
    RETENTION: Final = "retention"
    OTHER: Final = "other"


# What a run launched without a KIND_TAG (from the UI's Materialize or backfill dialogs, say) is
# for: the first of these assets it materializes decides, else its job (a test checks both cover
# every asset and job of the definitions).
ASSET_KINDS: Final = {
    "ohlcv_1m": Kind.BACKFILL,
    "ohlcv_5m": Kind.ROLLUPS,
    "ohlcv_1h": Kind.ROLLUPS,
    "ohlcv_1d": Kind.ROLLUPS,
    "price_chart": Kind.CHART,
}
JOB_KINDS: Final = {
    "candles_job": Kind.BACKFILL,
    "backfill_job": Kind.BACKFILL,
    "rollups_job": Kind.ROLLUPS,
    "chart_job": Kind.CHART,
    "retention_job": Kind.RETENTION,
}


def kind_of(tags: Mapping[str, str], job_name: str, asset_names: Iterable[str] | None) -> str:
    """The `Kind` of a run: its KIND_TAG, else what it materializes, else its job."""
    if KIND_TAG in tags:
        return tags[KIND_TAG]
    names = set(asset_names or ())
    for asset, kind in ASSET_KINDS.items():
        if asset in names:
            return kind
    return JOB_KINDS.get(job_name, Kind.OTHER)


def beat_tags(first: tuple[date, str], last: tuple[date, str], minute_ms: int) -> dict[str, str]:
    """Tags that make a run the heartbeat for `minute_ms` over the rectangle `first`..`last`."""
    return {**range_tags(first, last), KIND_TAG: Kind.HEARTBEAT, BEAT_MINUTE_TAG: iso_utc(minute_ms)}


def beat_minute_of(tags: Mapping[str, str]) -> int:
    """The minute (epoch ms) a heartbeat run stores; KeyError when the run is not one, ValueError
    when the tag is not a time. Runs from before the tag was ISO carry epoch ms, read too."""
    value = tags[BEAT_MINUTE_TAG]
    return int(value) if value.isdigit() else parse_instant(value)
