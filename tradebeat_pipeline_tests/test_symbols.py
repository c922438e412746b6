"""Symbols: the spelling tradebeat accepts, and the lifecycle decisions of the symbols sensor."""

from datetime import date

import pytest

from tradebeat_pipeline.symbols import (
    SymbolError,
    SymbolsCursor,
    history_months,
    normalize_symbol,
    onboarding_runs,
    plan_symbols,
)
from tradebeat_pipeline_tests.conftest import ms


def test_symbols_new_in_partitions_or_setting_are_candidates_and_vanished_ones_retire() -> None:
    cursor = SymbolsCursor(onboarded={"BTC/USDT", "SOL/USDT"}, setting_seen={"BTC/USDT"})
    plan = plan_symbols(["BTC/USDT", "eth/usdt"], ["BTC/USDT", "ADA/USDT"], cursor)
    assert plan.candidates == ["eth/usdt", "ADA/USDT"]
    assert plan.retired == ["SOL/USDT"]


def test_onboarding_loads_the_whole_months_covering_the_backfill_minutes() -> None:
    assert history_months(ms("2020-01-10T12:00:00Z"), 1440, None) == (date(2020, 1, 1), date(2020, 1, 1))
    assert history_months(ms("2020-02-01T12:00:00Z"), 1440, None) == (date(2020, 1, 1), date(2020, 2, 1))


def test_a_readded_symbol_backfills_from_its_newest_stored_candle() -> None:
    now = ms("2020-03-10T12:00:00Z")
    assert history_months(now, 1440, ms("2020-01-03T05:00:00Z")) == (date(2020, 1, 1), date(2020, 3, 1))


def test_the_cursor_survives_a_round_trip() -> None:
    cursor = SymbolsCursor(onboarded={"BTC/USDT"}, setting_seen={"ETH/USDT"})
    assert SymbolsCursor.load(cursor.dump()) == cursor


def test_symbols_onboarded_together_share_one_run_unless_their_months_or_neighbours_differ() -> None:
    day = (date(2020, 1, 1), date(2020, 2, 1))
    older = (date(2019, 11, 1), date(2020, 2, 1))
    order = ["A/USDT", "B/USDT", "OLD/USDT", "C/USDT", "D/USDT", "E/USDT"]
    history = {"A/USDT": day, "B/USDT": day, "C/USDT": day, "D/USDT": older, "E/USDT": older}
    runs = onboarding_runs(order, history)
    assert [(r.symbols, r.first_month) for r in runs] == [
        (["A/USDT", "B/USDT"], date(2020, 1, 1)),  # OLD/USDT between them must not be re-fetched
        (["C/USDT"], date(2020, 1, 1)),
        (["D/USDT", "E/USDT"], date(2019, 11, 1)),
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
