"""The exchange interface (no Dagster, no ccxt inside): what the pipeline needs from an exchange,
the results it hands back, and the errors it raises.

Everything the pipeline knows about an exchange goes through `Exchange`; `ccxt_client.CcxtExchange`
implements it for Binance and any Binance-compatible server (the bundled sandbox), and is imported
only where a client is opened, so loading definitions or parsing a command never imports ccxt.
"""

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pandas as pd

from tradebeat_pipeline.candles import clean_candles, empty_candles
from tradebeat_pipeline.errors import Failed
from tradebeat_pipeline.exchange.binance import MalformedAnswer
from tradebeat_pipeline.quality import Coverage, failed_coverage

__all__ = [
    "Exchange",
    "ExchangeFailure",
    "FetchResult",
    "MalformedAnswer",
    "SymbolNotListed",
    "SymbolNotTrading",
    "gather_or_cancel",
    "merge_results",
]

T = TypeVar("T")


class ExchangeFailure(Failed, RuntimeError):
    """The exchange could not be asked (after retries) or refused the request."""


class SymbolNotListed(ExchangeFailure):
    """The exchange does not list this symbol as a spot market."""


class SymbolNotTrading(ExchangeFailure):
    """The exchange lists the symbol but it is not trading (halted, delisted, pre-listing)."""


@dataclass(frozen=True)
class FetchResult:
    """Closed candles of one window, and what it took to get them."""

    candles: pd.DataFrame
    requests: int
    server_time_ms: int
    closed_until_ms: int  # every minute opening before this was closed by the exchange's clock
    # What each window's answers showed besides candles: which minutes an answer skipped, which
    # requests failed for good. The store turns it into recorded holes.
    coverage: tuple[Coverage, ...] = ()

    @property
    def failures(self) -> list[str]:
        return [reason for cov in self.coverage for _, _, reason in cov.failed]

    @classmethod
    def failed(cls, start_ms: int, end_ms: int, reason: str) -> "FetchResult":
        """Nothing could be fetched for [start_ms, end_ms)."""
        return cls(empty_candles(), 0, 0, start_ms, (failed_coverage(start_ms, end_ms, reason),))


def merge_results(results: Sequence[FetchResult]) -> FetchResult:
    """Several windows of one symbol as one result."""
    return FetchResult(
        candles=clean_candles(r.candles for r in results),
        requests=sum(r.requests for r in results),
        server_time_ms=max((r.server_time_ms for r in results), default=0),
        closed_until_ms=max((r.closed_until_ms for r in results), default=0),
        coverage=tuple(c for r in results for c in r.coverage),
    )


class Exchange(Protocol):
    """What the pipeline needs from an exchange."""

    async def check_symbol(self, symbol: str) -> None: ...
    async def server_time_ms(self) -> int: ...
    async def first_candle_ms(self, symbol: str) -> int | None: ...
    async def fetch_candles(
        self, symbol: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> FetchResult: ...
    async def close(self) -> None: ...


async def gather_or_cancel(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
