"""The client's retry policy on its own: waits, Retry-After, give-up and refusal messages.

`test_ccxt_client.py` drives the same code over HTTP against the sandbox; here the request is a stub
so each wait can be read exactly (the sleeps are recorded instead of slept).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import ccxt.async_support as ccxt
import pytest

from tradebeat_pipeline.exchange import ExchangeFailure, SymbolNotListed
from tradebeat_pipeline.exchange.binance import MalformedAnswer
from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange


class Sleeps(list[float]):
    """The waits asked of asyncio.sleep while a request is being tried (not ccxt's own on close)."""

    recording = True


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    slept = Sleeps()
    real_sleep = asyncio.sleep

    async def record(seconds: float, *args: object) -> None:
        if slept.recording:
            slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", record)
    return slept


def failing(*errors: BaseException) -> Callable[[], Awaitable[str]]:
    """A request that raises these errors in turn, then answers 'ok'."""
    pending = list(errors)

    async def request() -> str:
        if pending:
            raise pending.pop(0)
        return "ok"

    return request


def call(request: Callable[[], Awaitable[str]], waits: Sleeps, **options: object) -> tuple[str, CcxtExchange]:
    async def go() -> tuple[str, CcxtExchange]:
        exchange = CcxtExchange(**options)  # type: ignore[arg-type]
        try:
            return await exchange._call("klines X", request), exchange
        finally:
            waits.recording = False
            await exchange.close()

    return asyncio.run(go())


def test_waits_double_from_the_first_backoff_with_at_most_a_quarter_of_jitter(
    waits: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tradebeat.exchange")
    errors = [ccxt.RequestTimeout("slow"), ccxt.ExchangeNotAvailable("503"), MalformedAnswer("not JSON")]
    answer, exchange = call(failing(*errors), waits, backoff_s=1.0, max_attempts=6)
    assert answer == "ok" and exchange.requests == 4
    assert [1.0 <= waits[0] <= 1.25, 2.0 <= waits[1] <= 2.5, 4.0 <= waits[2] <= 5.0] == [True] * 3
    assert [r.getMessage() for r in caplog.records] == [
        f"klines X: slow (attempt 1/6), retrying in {waits[0]:.1f}s",
        f"klines X: 503 (attempt 2/6), retrying in {waits[1]:.1f}s",
        f"klines X: not JSON (attempt 3/6), retrying in {waits[2]:.1f}s",
    ]


def test_the_wait_stops_doubling_at_thirty_seconds(waits: Sleeps) -> None:
    call(failing(*[ccxt.NetworkError("down")] * 3), waits, backoff_s=20.0, max_attempts=6)
    assert 20.0 <= waits[0] <= 25.0
    assert all(30.0 <= w <= 37.5 for w in waits[1:]) and len(waits) == 3


def test_a_retry_after_is_the_wait_and_pauses_everyone_sharing_the_budget(
    waits: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused: list[float] = []
    monkeypatch.setattr("tradebeat_pipeline.budget.WeightBudget.pause", lambda self, s: paused.append(s))
    limited = ccxt.RateLimitExceeded("429")
    limited.retry_after = 7.0
    timeout = ccxt.RequestTimeout("slow")
    timeout.retry_after = 3.0  # honoured as the wait, but only a 429/418 stops the others
    call(failing(limited, timeout), waits, backoff_s=0.01)
    assert waits == [7.0, 3.0]
    assert paused == [7.0]


def test_a_lasting_failure_gives_up_after_max_attempts_naming_the_last_error(waits: Sleeps) -> None:
    with pytest.raises(ExchangeFailure) as gave_up:
        timeouts = [ccxt.RequestTimeout("klines X: no answer in 10 s")] * 5
        call(failing(*timeouts), waits, backoff_s=0.01, max_attempts=3)
    assert str(gave_up.value) == "klines X: gave up after 3 attempts (RequestTimeout: no answer in 10 s)"
    assert isinstance(gave_up.value.__cause__, ccxt.RequestTimeout)
    assert len(waits) == 2


@pytest.mark.parametrize(
    ("error", "refusal", "message"),
    [
        (ccxt.BadSymbol("unknown"), SymbolNotListed, "klines X: the exchange does not know this symbol"),
        (ccxt.AuthenticationError("bad key"), ExchangeFailure, "klines X: the exchange refused the request"),
    ],
)
def test_a_refusal_is_not_retried(
    waits: Sleeps, error: ccxt.BaseError, refusal: type[ExchangeFailure], message: str
) -> None:
    with pytest.raises(refusal, match=message):
        call(failing(error), waits, backoff_s=0.01)
    assert waits == []
