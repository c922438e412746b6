"""`Exchange` for Binance spot through async ccxt (no Dagster inside): rate-limited by the shared
budget, retrying, closed candles only. Any Binance-compatible server (the bundled sandbox) works by
swapping the API host. Importing this module imports ccxt, so only code that opens a client does.
"""

import asyncio
import importlib.machinery
import importlib.util
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from tradebeat_pipeline import progress
from tradebeat_pipeline.budget import Lane, SharedLedger, WeightBudget
from tradebeat_pipeline.candles import clean_candles
from tradebeat_pipeline.exchange import (
    ExchangeFailure,
    FetchResult,
    SymbolNotListed,
    SymbolNotTrading,
    gather_or_cancel,
)
from tradebeat_pipeline.exchange.binance import MalformedAnswer, parse_klines
from tradebeat_pipeline.quality import Coverage
from tradebeat_pipeline.settings import default
from tradebeat_pipeline.timewindows import MINUTE_MS, iso_utc, last_closed_minute

log = logging.getLogger("tradebeat.exchange")


def _ccxt_with_binance_only() -> ModuleType:
    """`ccxt.async_support` holding Binance alone. The package's `__init__` imports every one of its
    ~110 exchanges, sync and async (~1 s of CPU with bytecode caches, 8 s without), and every run
    and command that talks to the exchange would pay it. So, unless ccxt is already imported, the two
    package modules are created without running their `__init__`, given the names ccxt's own modules
    import from them (its errors and base classes), and only `async_support.binance` is loaded. The
    ccxt version is pinned; `tradebeat_pipeline_tests/exchange` exercises this client end to end."""
    loaded: ModuleType | None = sys.modules.get("ccxt.async_support")
    if loaded is not None:
        return loaded
    if "ccxt" in sys.modules:  # the full package is loaded already: use it
        import ccxt.async_support

        full: ModuleType = ccxt.async_support
        return full

    def hollow(name: str, path: list[str] | None) -> ModuleType:
        spec = importlib.machinery.PathFinder.find_spec(name.rpartition(".")[2], path)
        if spec is None:
            raise ImportError(f"ccxt is not installed ({name} not found)")
        spec.name = name
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        return module

    package = hollow("ccxt", None)
    from ccxt.base import errors
    from ccxt.base.exchange import Exchange as SyncExchange
    from ccxt.base.precise import Precise

    error_types = {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    version = sys.modules["ccxt.base.exchange"].__version__
    vars(package).update(
        error_types, Exchange=SyncExchange, Precise=Precise, errors=errors, __version__=version
    )
    async_package = hollow("ccxt.async_support", list(package.__path__))
    vars(async_package).update(error_types, __version__=version)
    from ccxt.async_support.binance import binance

    async_package.binance = binance  # type: ignore[attr-defined]
    return async_package


ccxt = _ccxt_with_binance_only()

PAGE_LIMIT = 1000
# Times an empty page is asked again before its minutes are taken as missing (then: pending holes).
EMPTY_REASKS = 2
# Binance's own REQUEST_WEIGHT budget, used when the exchange does not declare one.
DEFAULT_WEIGHT_PER_MINUTE = 6000
# ccxt's binance cost unit: rateLimit 50 ms per unit is exactly 6,000 weight a minute (1 unit = 5 weight).
# ccxt knows each endpoint's cost (klines 0.4 = weight 2, exchangeInfo 4 = weight 20), so its costs,
# converted, are what the shared budget charges.
_CCXT_WEIGHT_PER_COST_UNIT = 5.0
# The longest wait between two tries of a request (before jitter).
MAX_BACKOFF_S = 30.0

T = TypeVar("T")


@dataclass
class _Chunk:
    frames: list[pd.DataFrame] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    failed: tuple[int, int, str] | None = None


class _Binance(ccxt.binance):  # type: ignore[misc,name-defined]  # ccxt ships no type stubs
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


def _retry_after_seconds(headers: dict[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _plain(key: str | SecretStr) -> str:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


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
        api_key: str | SecretStr | None = None,
        secret_key: str | SecretStr | None = None,
        rate_budget_share: float = default("rate_budget_share"),
        ledger: Path | SharedLedger | None = None,
        lane: Lane = Lane.BULK,
        timeout_ms: int = round(default("timeout_seconds") * 1000),
        max_attempts: int = default("retry_attempts"),
        backoff_s: float = default("retry_backoff_seconds"),
        concurrency: int = 8,
    ) -> None:
        """Defaults are the settings' defaults; `api_url` None means Binance itself (BINANCE_API_URL's
        default). Keys may come as `SecretStr` (as `Settings` holds them): they are unwrapped only
        here, into ccxt's config."""
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
            config["apiKey"] = _plain(api_key)
        if secret_key:
            config["secret"] = _plain(secret_key)
        self._ccxt = _Binance(config)
        # Until exchangeInfo declares the exchange's budget, assume Binance's.
        self.budget = WeightBudget(ledger, DEFAULT_WEIGHT_PER_MINUTE * rate_budget_share, lane)
        self._ccxt.budget = self.budget
        self._ccxt.enableLastResponseHeaders = True
        if api_url:
            self._ccxt.urls["api"] = {k: _with_host(v, api_url) for k, v in self._ccxt.urls["api"].items()}
        self.api_host = urlsplit(api_url or default("api_url")).netloc
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
            self.budget.ledger or "this process only",
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
        closed_until = max(start_ms, min(end_ms, last_closed_minute(now)))
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
                progress.advance(int(closed.sum()))
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
        """Run one request with the rate limiter, retrying transient failures with backoff.

        Transient: ccxt's OperationFailed (network, timeout, 5xx, 429/418) and a malformed answer.
        A 429/418's Retry-After is the wait, and it pauses every process sharing the budget.
        """

        async def attempt() -> T:
            async with self._concurrency:
                self.requests += 1
                return await request()

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((ccxt.OperationFailed, MalformedAnswer)),
            stop=stop_after_attempt(self.max_attempts),
            wait=_Backoff(self.backoff_s),
            after=self._honour_retry_after,
            before_sleep=lambda state: _log_retry(what, self.max_attempts, state),
        )
        try:
            return await retrying(attempt)
        except RetryError as gave_up:
            exc = gave_up.last_attempt.exception()
            kind = "malformed answer" if isinstance(exc, MalformedAnswer) else type(exc).__name__
            detail = _short(exc).removeprefix(f"{what}: ") if exc is not None else "no answer"
            raise ExchangeFailure(
                f"{what}: gave up after {gave_up.last_attempt.attempt_number} attempts ({kind}: {detail})"
            ) from exc
        except ccxt.BadSymbol as exc:
            raise SymbolNotListed(f"{what}: the exchange does not know this symbol ({exc})") from exc
        except ccxt.BaseError as exc:
            raise ExchangeFailure(f"{what}: the exchange refused the request ({_short(exc)})") from exc

    def _honour_retry_after(self, state: RetryCallState) -> None:
        """A 429/418 asks everyone to wait: every request of every process sharing the budget."""
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded) and retry_after:
            self.budget.pause(retry_after)


class _Backoff:
    """The answer's Retry-After if it gave one, else `first` doubling per try up to 30 s, plus up to
    25 % jitter so clients that failed together do not retry together."""

    def __init__(self, first: float) -> None:
        self.exponential = wait_exponential(multiplier=first, max=MAX_BACKOFF_S)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        return float(self.exponential(retry_state)) * (1 + random.random() / 4)  # noqa: S311


def _log_retry(what: str, max_attempts: int, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "%s: %s (attempt %d/%d), retrying in %.1fs",
        what,
        _short(exc).removeprefix(f"{what}: ") if exc is not None else "no answer",
        state.attempt_number,
        max_attempts,
        state.next_action.sleep if state.next_action is not None else 0.0,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"
