"""The ccxt exchange client, driven over HTTP against the sandbox exchange."""

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from tradebeat_pipeline.exchange import (
    FetchResult,
    SymbolNotListed,
    SymbolNotTrading,
)
from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline_tests.conftest import archive_rows, ms

T = TypeVar("T")
JAN1 = ms("2020-01-01T00:00:00Z")
DAY = 86_400_000


def run(server: SandboxServer, use: Callable[[CcxtExchange], Awaitable[T]], **options: object) -> T:
    async def go() -> T:
        async with CcxtExchange(api_url=server.url, backoff_s=0.01, **options) as exchange:  # type: ignore[arg-type]
            return await use(exchange)

    return asyncio.run(go())


def test_three_days_come_back_with_the_archives_values(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    result = run(sandbox_server, lambda ex: ex.fetch_candles("BTC/USDT", JAN1, JAN1 + 3 * DAY))
    archive = archive_rows("BTCUSDT-1m-vision.csv.gz")
    got = result.candles
    assert len(got) == 4320
    assert got["timestamp"].tolist() == [int(r[0]) for r in archive]
    assert got["close"].tolist() == [float(r[4]) for r in archive]
    assert got["quote_volume"].tolist() == [float(r[7]) for r in archive]
    assert got["trades"].tolist() == [int(r[8]) for r in archive]


def test_candles_are_paged_a_thousand_per_request(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    run(sandbox_server, lambda ex: ex.fetch_candles("BTC/USDT", JAN1, JAN1 + 3 * DAY))
    assert sandbox.requests["klines"] == 5  # 4,320 candles


def test_the_open_minute_is_never_returned_judged_by_the_exchange_clock(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    # The local clock says 2026; the exchange says 12:00:30 on 2020-01-03, so 12:00 is still open.
    sandbox.clock.fixed_ms = ms("2020-01-03T12:00:30Z")
    result = run(sandbox_server, lambda ex: ex.fetch_candles("BTC/USDT", JAN1, JAN1 + 3 * DAY))
    assert result.candles["timestamp"].max() == ms("2020-01-03T11:59:00Z")
    assert len(result.candles) == 2 * 1440 + 720


def test_a_symbol_the_exchange_does_not_list_raises_a_clear_error(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    with pytest.raises(SymbolNotListed, match="XRP/USDT is not listed"):
        run(sandbox_server, lambda ex: ex.check_symbol("XRP/USDT"))


def test_a_listed_but_halted_symbol_is_refused_as_not_trading(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    with pytest.raises(SymbolNotTrading, match=r"LUNA/USDT .* not trading"):
        run(sandbox_server, lambda ex: ex.check_symbol("LUNA/USDT"))


@pytest.mark.parametrize(
    "fault",
    [
        "http_500",
        "http_503",
        "http_429",
        "http_418",
        "slow",
        "not_json",
        "missing_field",
        "non_numeric",
        "empty",
    ],
)
def test_transient_faults_are_retried_until_every_candle_arrives(
    sandbox: Sandbox, sandbox_server: SandboxServer, fault: str
) -> None:
    sandbox.inject(fault, count=2)
    sandbox.slow_s = 1.0  # past the client's 0.5 s timeout
    result = run(sandbox_server, lambda ex: ex.fetch_candles("BTC/USDT", JAN1, JAN1 + DAY), timeout_ms=500)
    assert len(result.candles) == 1440
    assert sandbox.requests["klines"] == 2 + 2


def test_a_lasting_malformed_answer_is_reported_as_a_failed_window_naming_it_after_the_retries(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    sandbox.inject("not_json", count=100)
    result = run(
        sandbox_server,
        lambda ex: ex.fetch_candles("BTC/USDT", JAN1, JAN1 + 600 * 60_000),
        max_attempts=3,
    )
    assert result.candles.empty
    (coverage,) = result.coverage
    assert [(a, b) for a, b, _ in coverage.failed] == [(JAN1, JAN1 + 600 * 60_000)]
    (reason,) = result.failures
    assert re.search(r"gave up after 3 attempts \(malformed answer: .*not JSON", reason)
    assert sandbox.requests["klines"] == 3


def test_a_chunk_that_keeps_failing_costs_only_its_own_minutes(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    # A day is two chunks (1,000 + 440 minutes); every request of the second one fails.
    second = JAN1 + 1000 * 60_000
    sandbox.inject("http_500", count=None, window=(second, JAN1 + DAY))
    result = run(sandbox_server, lambda ex: ex.fetch_candles("BTC/USDT", JAN1, JAN1 + DAY), max_attempts=2)
    (coverage,) = result.coverage
    assert [(a, b) for a, b, _ in coverage.failed] == [(second, JAN1 + DAY)]
    assert result.candles["timestamp"].tolist() == list(range(JAN1, second, 60_000))


def test_the_budget_is_our_share_of_the_weight_the_exchange_declares(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    async def budget(ex: CcxtExchange) -> float:
        await ex.check_symbol("BTC/USDT")
        return ex.budget.per_minute

    assert run(sandbox_server, budget, rate_budget_share=0.5) == sandbox.weight_limit * 0.5


def test_each_request_is_charged_the_weight_the_exchange_counts_for_it(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    async def fetch(ex: CcxtExchange) -> int:
        await ex.fetch_candles("BTC/USDT", JAN1, JAN1 + 3 * DAY)
        return ex.budget.use().bulk

    charged = run(sandbox_server, fetch)
    assert charged == sum(w for _, w in sandbox.weight_log)
    assert charged == 20 + 1 + 5 * 2  # exchangeInfo, time, five klines pages


def test_symbols_fetched_at_once_load_the_markets_with_one_exchange_info_request(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    symbols = [f"S{i:03d}/USDT" for i in range(20)]

    async def fetch_all(ex: CcxtExchange) -> list[FetchResult]:
        return list(await asyncio.gather(*(ex.fetch_candles(s, JAN1, JAN1 + 60_000) for s in symbols)))

    results = run(sandbox_server, fetch_all)
    assert [len(r.candles) for r in results] == [1] * 20
    assert sandbox.requests["exchangeInfo"] == 1


def test_the_first_candle_on_the_exchange_is_found(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    # SOL/USDT's recording starts on 2023-03-23; the sandbox serves its whole month, from the 1st.
    assert run(sandbox_server, lambda ex: ex.first_candle_ms("SOL/USDT")) == ms("2023-03-01T00:00:00Z")
    assert run(sandbox_server, lambda ex: ex.first_candle_ms("SYN/USDT")) == ms("2017-08-17T00:00:00Z")
