"""The exchange interface and its ccxt implementation (no Dagster inside).

Everything the pipeline knows about an exchange goes through `Exchange`. `CcxtExchange` talks to
Binance, or to any Binance-compatible server (the bundled sandbox) by swapping the API host.
"""

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from tradebeat_pipeline.budget import Lane, WeightBudget
from tradebeat_pipeline.candles import (
    MINUTE_MS,
    MalformedAnswer,
    clean_candles,
    contiguous_day_runs,
    day_window,
    empty_candles,
    iso_utc,
    parse_klines,
)
from tradebeat_pipeline.quality import Coverage, failed_coverage

log = logging.getLogger("tradebeat.exchange")

PAGE_LIMIT = 1000
# Times an empty page is asked again before its minutes are taken as missing (then: pending holes).
EMPTY_REASKS = 2
# Binance's own REQUEST_WEIGHT budget, used when the exchange does not declare one.
DEFAULT_WEIGHT_PER_MINUTE = 6000
# ccxt's binance cost unit: rateLimit 50 ms per unit is exactly 6,000 weight a minute (1 unit = 5 weight).
# ccxt knows each endpoint's cost (klines 0.4 = weight 2, exchangeInfo 4 = weight 20), so its costs,
# converted, are what the shared budget charges.
_CCXT_WEIGHT_PER_COST_UNIT = 5.0

T = TypeVar("T")


class ExchangeFailure(RuntimeError):
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


@dataclass
class _Chunk:
    frames: list[pd.DataFrame] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    failed: tuple[int, int, str] | None = None


class Exchange(Protocol):
    """What the pipeline needs from an exchange."""

    async def check_symbol(self, symbol: str) -> None: ...
    async def server_time_ms(self) -> int: ...
    async def first_candle_ms(self, symbol: str) -> int | None: ...
    async def fetch_candles(
        self, symbol: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> FetchResult: ...
    async def close(self) -> None: ...


@functools.cache
def _binance_class() -> type:
    """ccxt is imported on first use, not with this module: the definitions load in every code
    server the daemon starts (one a minute) and ccxt alone was ~1.5 s of CPU of each start."""
    import ccxt.async_support as ccxt

    class _Binance(ccxt.binance):  # type: ignore[misc]  # ccxt ships no type stubs
        """ccxt's binance, throttled by the budget shared across processes instead of its own
        per-process limiter, with the failing answer's Retry-After attached to the exception."""

        budget: WeightBudget
        exchange_info: dict[str, Any] | None = None  # the last exchangeInfo answer: its rateLimits

        async def throttle(self, cost: float | None = None) -> None:
            # ccxt calls this before every request it sends, with the endpoint's cost.
            weight = max(1, round((1.0 if cost is None else float(cost)) * _CCXT_WEIGHT_PER_COST_UNIT))
            await self.budget.spend(weight)

        async def fetch(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
            try:
                answer = await super().fetch(url, method, headers, body)
            except ccxt.BaseError as exc:
                # No await lies between ccxt storing these headers and raising, so they are this answer's.
                answer_headers = self.last_response_headers or {}
                exc.retry_after = _retry_after_seconds(answer_headers)
                raise
            if urlsplit(url).path.endswith("/exchangeInfo") and isinstance(answer, dict):
                # load_markets reads the markets from it and drops the rest; the budget is in the rest.
                self.exchange_info = answer
            return answer

    return _Binance


def _retry_after_seconds(headers: dict[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _with_host(url: str, base: str) -> str:
    new = urlsplit(base)
    old = urlsplit(url)
    return urlunsplit((new.scheme, new.netloc, old.path, old.query, old.fragment))


class CcxtExchange:
    """Binance spot through async ccxt: rate-limited, retrying, closed candles only."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        secret_key: str | None = None,
        rate_budget_share: float = 0.5,
        budget_path: Path | None = None,
        lane: Lane = Lane.BULK,
        timeout_ms: int = 10_000,
        max_attempts: int = 6,
        backoff_s: float = 0.5,
        concurrency: int = 8,
    ) -> None:
        if not 0 < rate_budget_share <= 1:
            raise ValueError("rate_budget_share must be in (0, 1]")
        config: dict[str, Any] = {
            "enableRateLimit": True,
            "timeout": timeout_ms,
            "options": {
                "defaultType": "spot",
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
                "adjustForTimeDifference": False,
            },
        }
        if api_key:
            config["apiKey"] = api_key
        if secret_key:
            config["secret"] = secret_key
        self._ccxt = _binance_class()(config)
        # Until exchangeInfo declares the exchange's budget, assume Binance's.
        self.budget = WeightBudget(budget_path, DEFAULT_WEIGHT_PER_MINUTE * rate_budget_share, lane)
        self._ccxt.budget = self.budget
        self._ccxt.enableLastResponseHeaders = True
        if api_url:
            self._ccxt.urls["api"] = {k: _with_host(v, api_url) for k, v in self._ccxt.urls["api"].items()}
        self.api_host = urlsplit(api_url or "https://api.binance.com").netloc
        self.rate_budget_share = rate_budget_share
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._concurrency = asyncio.Semaphore(concurrency)
        self._markets_loaded = False
        self._markets_lock = asyncio.Lock()
        self.requests = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        await self._ccxt.close()

    async def __aenter__(self) -> "CcxtExchange":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ensure_markets(self) -> None:
        # Concurrent first requests (a beat's hundred symbols) must load the markets once: each
        # load is an exchangeInfo request of weight 20.
        async with self._markets_lock:
            if self._markets_loaded:
                return
            await self._call("markets", lambda: self._ccxt.load_markets())
            self._apply_rate_budget(self._ccxt.exchange_info)
            self._markets_loaded = True

    def _apply_rate_budget(self, info: Any) -> None:
        """Throttle to our share of the budget the exchange itself declares."""
        declared = DEFAULT_WEIGHT_PER_MINUTE
        limits = info.get("rateLimits", []) if isinstance(info, dict) else []
        for limit in limits:
            if limit.get("rateLimitType") == "REQUEST_WEIGHT" and limit.get("interval") == "MINUTE":
                declared = int(float(limit["limit"]) / float(limit.get("intervalNum", 1)))
                break
        self.budget.declare(declared * self.rate_budget_share)
        log.debug(
            "rate budget: %.0f weight/min (%.0f%% of %d), shared through %s",
            self.budget.per_minute,
            self.rate_budget_share * 100,
            declared,
            self.budget.path or "this process only",
        )

    # -- the interface -------------------------------------------------------------------

    async def check_symbol(self, symbol: str) -> None:
        """Raise unless the exchange lists `symbol` as a trading spot market."""
        await self._market(symbol)

    async def _market(self, symbol: str) -> dict[str, Any]:
        await self._ensure_markets()
        market = self._ccxt.markets.get(symbol)
        if market is None or not market.get("spot"):
            raise SymbolNotListed(f"{symbol} is not listed as a spot market on {self.api_host}")
        if market.get("active") is False:
            status = (market.get("info") or {}).get("status", "not trading")
            raise SymbolNotTrading(f"{symbol} is listed on {self.api_host} but not trading ({status})")
        return dict(market)

    async def server_time_ms(self) -> int:
        value = await self._call("time", lambda: self._ccxt.fetch_time())
        if not isinstance(value, int | float):
            raise MalformedAnswer(f"/api/v3/time answered {value!r:.80}, not a time")
        return int(value)

    async def first_candle_ms(self, symbol: str) -> int | None:
        """Open time of the exchange's first 1m candle of `symbol` (None if it has none)."""
        market = await self._market(symbol)
        candles, _ = await self._klines(market["id"], symbol, since=0, end=None, limit=1)
        return int(candles["timestamp"].iloc[0]) if len(candles) else None

    async def fetch_candles(
        self, symbol: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> FetchResult:
        """Closed 1m candles with open time in [start_ms, end_ms), fetched in parallel chunks.

        Closed is judged by the exchange's clock (`now_ms`, read from it unless the caller just
        did), so a local clock that runs ahead can never make the open candle look final. A chunk
        whose requests fail for good is reported in the result's coverage and the other chunks are
        kept, so one bad hour does not cost a year.
        """
        market = await self._market(symbol)
        requests_before = self.requests
        now = await self.server_time_ms() if now_ms is None else now_ms
        start_ms -= start_ms % MINUTE_MS
        closed_until = max(start_ms, min(end_ms, now - now % MINUTE_MS))
        chunk = PAGE_LIMIT * MINUTE_MS
        starts = range(start_ms, closed_until, chunk)
        chunks = await gather_or_cancel(
            self._fetch_chunk(market["id"], symbol, s, min(s + chunk, closed_until), now) for s in starts
        )
        candles = clean_candles(frame for c in chunks for frame in c.frames)
        in_window = (candles["timestamp"] >= start_ms) & (candles["timestamp"] < closed_until)
        coverage = Coverage(
            start_ms,
            closed_until,
            spans=tuple(span for c in chunks for span in c.spans),
            failed=tuple(c.failed for c in chunks if c.failed is not None),
        )
        return FetchResult(
            candles[in_window].reset_index(drop=True),
            self.requests - requests_before,
            now,
            closed_until,
            (coverage,),
        )

    async def _fetch_chunk(
        self, market_id: str, symbol: str, start_ms: int, end_ms: int, now_ms: int
    ) -> "_Chunk":
        """Page one chunk with since = last open time + 1 minute, until its end."""
        chunk = _Chunk()
        since = start_ms
        try:
            while since < end_ms:
                page, close_times = await self._klines(market_id, symbol, since, end_ms - 1, PAGE_LIMIT)
                for _ in range(EMPTY_REASKS):
                    if not page.empty:
                        break
                    # An empty answer is either a real hole up to the chunk's end or a glitch; a
                    # glitch rarely repeats, a hole always does. Asked again, the hole is still pending.
                    await asyncio.sleep(self.backoff_s)
                    page, close_times = await self._klines(market_id, symbol, since, end_ms - 1, PAGE_LIMIT)
                if page.empty:
                    break
                times = page["timestamp"]
                chunk.spans.append((int(times.iloc[0]), int(times.iloc[-1])))
                closed = close_times < now_ms
                chunk.frames.append(page[closed])
                since = int(times.iloc[-1]) + MINUTE_MS
                if not closed.all():
                    break
        except ExchangeFailure as exc:
            log.error("%s: %s; minutes from %s on recorded as fetch_failed", symbol, exc, iso_utc(since))
            chunk.failed = (since, end_ms, str(exc))
        return chunk

    async def _klines(
        self, market_id: str, symbol: str, since: int, end: int | None, limit: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        params: dict[str, Any] = {
            "symbol": market_id,
            "interval": "1m",
            "startTime": since,
            "limit": limit,
        }
        if end is not None:
            params["endTime"] = end
        where = f"klines {symbol} from {iso_utc(since)}"

        async def ask() -> tuple[pd.DataFrame, np.ndarray]:
            answer = await self._ccxt.publicGetKlines(params)
            return parse_klines(answer, where=where)

        return await self._call(where, ask)

    # -- retries -------------------------------------------------------------------------

    async def _call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """Run one request with the rate limiter, retrying transient failures with backoff."""
        import ccxt.async_support as ccxt

        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self._concurrency:
                    self.requests += 1
                    return await request()
            except ccxt.BadSymbol as exc:
                raise SymbolNotListed(f"{what}: the exchange does not know this symbol ({exc})") from exc
            except (ccxt.OperationFailed, MalformedAnswer) as exc:
                retry_after = getattr(exc, "retry_after", None)
                if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded) and retry_after:
                    # A 429/418 asks everyone to wait: every request of every process sharing the budget.
                    self.budget.pause(retry_after)
                if attempt == self.max_attempts:
                    kind = "malformed answer" if isinstance(exc, MalformedAnswer) else type(exc).__name__
                    detail = _short(exc).removeprefix(f"{what}: ")
                    raise ExchangeFailure(
                        f"{what}: gave up after {attempt} attempts ({kind}: {detail})"
                    ) from exc
                wait = retry_after if retry_after is not None else delay * (1 + random.random() / 4)  # noqa: S311
                log.warning(
                    "%s: %s (attempt %d/%d), retrying in %.1fs",
                    what,
                    _short(exc).removeprefix(f"{what}: "),
                    attempt,
                    self.max_attempts,
                    wait,
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, 30.0)
            except ccxt.BaseError as exc:
                raise ExchangeFailure(f"{what}: the exchange refused the request ({_short(exc)})") from exc
        raise AssertionError("unreachable")


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


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


async def fetch_days(exchange: Exchange, requested: dict[str, list[date]]) -> dict[str, FetchResult]:
    """Fetch whole UTC days per symbol, each contiguous run of days as one window, all at once."""

    async def one_symbol(symbol: str, days: list[date]) -> FetchResult:
        runs = contiguous_day_runs(days)
        return merge_results(
            await gather_or_cancel(
                exchange.fetch_candles(symbol, day_window(a)[0], day_window(b)[1]) for a, b in runs
            )
        )

    symbols = list(requested)
    results = await gather_or_cancel(one_symbol(s, requested[s]) for s in symbols)
    return dict(zip(symbols, results, strict=True))
