"""The column contract's pure functions: symbols, kline parsing, day windows."""

from datetime import date

import pandas as pd
import pytest

from tradebeat_pipeline.exchange.binance import MalformedAnswer, parse_klines
from tradebeat_pipeline.quality import missing_runs
from tradebeat_pipeline.symbols import SymbolError, normalize_symbol
from tradebeat_pipeline.timewindows import contiguous_day_runs, day_window

KLINE = [
    1577836800000,
    "7195.24",
    "7196.25",
    "7183.14",
    "7186.68",
    "51.642812",
    1577836859999,
    "371233.51835535",
    493,
    "19.598230",
    "140888.41428273",
    "0",
]


@pytest.mark.parametrize("raw", ["btc/usdt", " BTC/USDT ", "Btc/Usdt\n"])
def test_symbols_are_normalised_to_upper_case_without_whitespace(raw: str) -> None:
    assert normalize_symbol(raw) == "BTC/USDT"


@pytest.mark.parametrize(
    "raw",
    [
        "BTCUSDT",
        "BTC/USDT|X",
        "",
        "   ",
        "A" * 200,
        "BTC/USDT'; DROP TABLE symbols;--",
        "BTC/USDT:USDT",
        "BTC//USDT",
        "/USDT",
        "BTC/",
        "BTC-USDT",
        "BTC/USDT/ETH",
        "ＢTC/USDT",
        "../../etc/passwd",
        "BTC/USDT\x00",
    ],
)
def test_anything_but_a_spot_symbol_is_refused_with_the_expected_form(raw: str) -> None:
    with pytest.raises(SymbolError, match="BASE/QUOTE such as BTC/USDT"):
        normalize_symbol(raw)


def test_derivatives_symbols_are_refused_saying_why() -> None:
    with pytest.raises(SymbolError, match="derivatives"):
        normalize_symbol("BTC/USDT:USDT")


def test_a_kline_row_maps_onto_every_contract_column() -> None:
    candles, close_times = parse_klines([KLINE], where="test")
    row = candles.iloc[0]
    assert row.to_dict() == {
        "timestamp": 1577836800000,
        "open": 7195.24,
        "high": 7196.25,
        "low": 7183.14,
        "close": 7186.68,
        "volume": 51.642812,
        "quote_volume": 371233.51835535,
        "trades": 493,
        "taker_buy_volume": 19.59823,
        "taker_buy_quote_volume": 140888.41428273,
    }
    assert close_times.tolist() == [1577836859999]


def test_volumes_a_source_lacks_stay_missing_instead_of_invented() -> None:
    row = [*KLINE[:7], None, None, None, None, "0"]
    candles, _ = parse_klines([row], where="test")
    assert candles[["quote_volume", "trades", "taker_buy_volume"]].isna().all().all()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ('[[1577836800000,"7195.24","71', "not JSON"),
        ({"code": -1000}, "expected a JSON list"),
        ([[1577836800000, "7195.24", "7196.25"]], "at least 11 fields"),
        ([[1577836800000, "abc", *KLINE[2:]]], "non-numeric open"),
        ([[1577836800000, None, *KLINE[2:]]], "has no open"),
        ([[*KLINE[:6], None, *KLINE[7:]]], "close time"),
        ([[1577836800000, "nan", *KLINE[2:]]], "non-numeric open"),
        ([[1577836800000, 1e999, *KLINE[2:]]], "non-finite open"),
    ],
)
def test_a_malformed_answer_is_refused_naming_the_problem(answer: object, problem: str) -> None:
    with pytest.raises(MalformedAnswer, match=problem):
        parse_klines(answer, where="klines BTC/USDT")


def test_consecutive_days_form_one_window() -> None:
    days = [date(2020, 1, 3), date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 5)]
    assert contiguous_day_runs(days) == [
        (date(2020, 1, 1), date(2020, 1, 3)),
        (date(2020, 1, 5), date(2020, 1, 5)),
    ]


def test_a_day_window_is_the_utc_day_in_epoch_ms() -> None:
    assert day_window(date(2020, 1, 1)) == (1577836800000, 1577923200000)


def test_missing_minutes_counts_only_minutes_inside_the_window() -> None:
    ts = pd.Series([0, 60_000, 180_000, 600_000]).to_numpy()
    assert missing_runs(ts, 0, 240_000) == [(120_000, 120_000)]  # one minute missing
