"""The candle contract's pure functions: pages of answers become one row per minute, in order."""

import pandas as pd

from tradebeat_pipeline.candles import clean_candles


def _frame(times: list[int], opens: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": times, "open": opens})


def test_clean_candles_keeps_the_last_answer_for_a_minute_and_sorts_by_time() -> None:
    pages = [_frame([180_000, 60_000], [1.0, 2.0]), _frame([120_000, 60_000], [3.0, 4.0])]

    cleaned = clean_candles(pages)

    assert cleaned.to_dict("list") == {"timestamp": [60_000, 120_000, 180_000], "open": [4.0, 3.0, 1.0]}


def test_clean_candles_of_ordered_pages_is_their_concatenation() -> None:
    pages = [_frame([60_000, 120_000], [1.0, 2.0]), _frame([180_000], [3.0])]

    assert clean_candles(pages).to_dict("list") == {
        "timestamp": [60_000, 120_000, 180_000],
        "open": [1.0, 2.0, 3.0],
    }


def test_clean_candles_of_nothing_is_the_empty_contract_frame() -> None:
    cleaned = clean_candles([_frame([], [])])

    assert len(cleaned) == 0
    assert "volume" in cleaned.columns
