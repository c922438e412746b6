"""Binance's wire format: a klines answer onto the candle contract, a malformed one refused whole."""

import pytest

from tradebeat_pipeline.exchange.binance import MalformedAnswer, parse_klines

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
