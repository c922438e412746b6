"""DuckDB rollups checked against a hand computation on the real recorded outage day, and Parquet export."""

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tradebeat_pipeline.candles import CANDLE_COLUMNS
from tradebeat_pipeline.rollups import export_parquet, rollup, windows_to_recompute
from tradebeat_pipeline_tests.conftest import archive_rows, ms

DAY_START = ms("2023-03-24T00:00:00Z")
DAY_END = ms("2023-03-25T00:00:00Z")


@pytest.fixture(scope="module")
def outage_day() -> pd.DataFrame:
    """BTC/USDT's 1,360 real candles of 2023-03-24, as the store holds them (no quote volume etc.)."""
    rows = [r for r in archive_rows("BTCUSDT-1m-2023-03-23_25.csv.gz") if DAY_START <= int(r[0]) < DAY_END]
    frame = pd.DataFrame(
        {
            "timestamp": [int(r[0]) for r in rows],
            **{
                c: [float(r[i]) for r in rows]
                for i, c in enumerate(("open", "high", "low", "close", "volume"), 1)
            },
            "quote_volume": np.nan,
            "trades": pd.array([None] * len(rows), dtype="Int64"),
            "taker_buy_volume": np.nan,
            "taker_buy_quote_volume": np.nan,
        }
    )
    return frame.loc[:, list(CANDLE_COLUMNS)]


def by_hand(candles: pd.DataFrame, start: int, minutes: int) -> tuple[object, ...]:
    """One bucket computed with plain Python: first open, max high, min low, last close, sum volume."""
    columns = [candles[c].tolist() for c in ("timestamp", "open", "high", "low", "close", "volume")]
    rows = [r for r in zip(*columns, strict=True) if start <= int(r[0]) < start + minutes * 60_000]
    if not rows:
        return (None, None, None, None, None, 0, False)
    return (
        rows[0][1],
        max(r[2] for r in rows),
        min(r[3] for r in rows),
        rows[-1][4],
        sum(r[5] for r in rows),
        len(rows),
        len(rows) == minutes,
    )


def as_tuple(bucket: pd.Series) -> tuple[object, ...]:
    prices = tuple(
        None if pd.isna(bucket[c]) else float(bucket[c]) for c in ("open", "high", "low", "close", "volume")
    )
    if bucket["minutes"] == 0:
        prices = (None, None, None, None, None)
    return (*prices, int(bucket["minutes"]), bool(bucket["complete"]))


@pytest.mark.parametrize(("timeframe", "minutes"), [("5m", 5), ("1h", 60), ("1d", 1440)])
def test_every_bucket_matches_a_hand_computation(
    outage_day: pd.DataFrame, timeframe: str, minutes: int
) -> None:
    buckets = rollup(outage_day, timeframe, DAY_START, DAY_END)
    assert len(buckets) == 1440 // minutes  # every bucket of the day, empty ones included
    for _, bucket in buckets.iterrows():
        expected = by_hand(outage_day, int(bucket["timestamp"]), minutes)
        got = as_tuple(bucket)
        assert got[:4] == expected[:4]
        assert got[4] == pytest.approx(expected[4]) if expected[4] is not None else got[4] is None
        assert got[5:] == expected[5:]


def test_hours_around_the_outage_are_marked_incomplete_not_hidden(outage_day: pd.DataFrame) -> None:
    hours = rollup(outage_day, "1h", DAY_START, DAY_END).set_index("timestamp")
    halted_then_gone = hours.loc[ms("2023-03-24T12:00:00Z")]
    assert (halted_then_gone["minutes"], halted_then_gone["complete"]) == (40, False)
    assert halted_then_gone["volume"] == 0  # 12:00-12:39 were the exchange's flat, halted minutes
    empty = hours.loc[ms("2023-03-24T13:00:00Z")]
    assert (empty["minutes"], empty["complete"]) == (0, False)
    assert np.isnan(empty["close"])
    day = rollup(outage_day, "1d", DAY_START, DAY_END).iloc[0]
    assert (day["minutes"], day["complete"]) == (1360, False)


def test_an_export_is_zstd_parquet_that_reads_back_identical(
    outage_day: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "btc.parquet"
    size = export_parquet(outage_day, path)
    assert size == path.stat().st_size
    with duckdb.connect() as con:
        back = con.execute("SELECT * FROM read_parquet(?)", [str(path)]).df()
        codecs = {
            r[0] for r in con.execute("SELECT compression FROM parquet_metadata(?)", [str(path)]).fetchall()
        }
    assert codecs == {"ZSTD"}
    assert back["timestamp"].tolist() == outage_day["timestamp"].tolist()
    assert back["close"].tolist() == outage_day["close"].tolist()


MARCH = (ms("2023-03-01T00:00:00Z"), ms("2023-03-24T10:00:00Z"))  # a current month, up to now


def test_a_month_never_rolled_up_is_computed_whole() -> None:
    assert windows_to_recompute(*MARCH, previous_ms=None, changed_days=[]) == [MARCH]


def test_a_month_rolled_up_before_recomputes_only_changed_days_and_those_the_clock_passed_through() -> None:
    windows = windows_to_recompute(
        *MARCH, previous_ms=ms("2023-03-23T22:00:00Z"), changed_days=[ms("2023-03-05T00:00:00Z")]
    )
    assert windows == [
        (ms("2023-03-05T00:00:00Z"), ms("2023-03-06T00:00:00Z")),  # a correction landed there
        (ms("2023-03-23T00:00:00Z"), MARCH[1]),  # the buckets since the last run, empty ones too
    ]
