"""The sandbox exchange speaks Binance's REST dialect, byte for byte where ccxt cares."""

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import ccxt.async_support as ccxt
import pytest

from tradebeat_pipeline.sandbox.market_data import historical_markets
from tradebeat_pipeline.sandbox.server import Sandbox, SandboxServer
from tradebeat_pipeline_tests.conftest import archive_rows, ms


def get(server: SandboxServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_an_unknown_symbol_is_answered_like_binance(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    status, body = get(sandbox_server, "/api/v3/klines?symbol=XRPUSDT&interval=1m")
    assert (status, body) == (400, {"code": -1121, "msg": "Invalid symbol."})


def test_recorded_rows_are_served_verbatim(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    start = ms("2020-01-01T00:00:00Z")
    _, rows = get(sandbox_server, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={start}&limit=3")
    expected = archive_rows("BTCUSDT-1m-vision.csv.gz")[:3]
    assert [[str(v) for v in r] for r in rows] == expected


def test_the_current_minute_is_a_partial_candle_that_has_not_closed(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    sandbox.clock.fixed_ms = ms("2020-01-01T00:00:15Z")
    _, (row,) = get(sandbox_server, "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1577836800000")
    final = archive_rows("BTCUSDT-1m-vision.csv.gz")[0]
    assert row[6] > sandbox.clock.now_ms()  # close time still ahead
    assert float(row[5]) == pytest.approx(float(final[5]) / 4)  # a quarter of the minute's volume
    assert row[4] != final[4]


def test_exchange_info_declares_the_weight_budget_it_enforces(
    sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    _, info = get(sandbox_server, "/api/v3/exchangeInfo")
    (weight,) = [r for r in info["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT"]
    assert weight["limit"] == sandbox.weight_limit
    assert {s["symbol"]: s["status"] for s in info["symbols"]}["LUNAUSDT"] == "BREAK"


def test_the_recorded_outage_has_no_candles_from_1240_to_1359() -> None:
    series = historical_markets()["BTCUSDT"].series
    rows = series.klines(ms("2023-03-24T12:39:00Z"), ms("2023-03-24T14:00:00Z"), 1000)
    assert [r[0] for r in rows] == [ms("2023-03-24T12:39:00Z"), ms("2023-03-24T14:00:00Z")]


def test_request_weight_over_the_limit_is_answered_429_with_retry_after(
    sandbox: Sandbox, sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "weight_limit", 0)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(sandbox_server.url + "/api/v3/ping", timeout=10)
    assert error.value.code == 429
    assert int(error.value.headers["Retry-After"]) >= 1


def test_ccxt_reads_24h_tickers_from_the_sandbox(sandbox: Sandbox, sandbox_server: SandboxServer) -> None:
    sandbox.clock.fixed_ms = ms("2020-01-02T00:00:00Z")

    async def tickers() -> dict[str, Any]:
        exchange = ccxt.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
        exchange.urls["api"] = {
            k: v.replace("https://api.binance.com", sandbox_server.url)
            for k, v in exchange.urls["api"].items()
        }
        try:
            return dict(await exchange.fetch_tickers(["BTC/USDT", "ETH/USDT"]))
        finally:
            await exchange.close()

    result = asyncio.run(tickers())
    # At 00:00:00.000 the new minute has just opened: its price so far is its open.
    assert result["BTC/USDT"]["last"] == float(archive_rows("BTCUSDT-1m-vision.csv.gz")[1440][1])
    assert set(result) == {"BTC/USDT", "ETH/USDT"}
