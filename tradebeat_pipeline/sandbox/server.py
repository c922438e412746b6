"""A Binance-compatible spot REST subset on 127.0.0.1, serving recorded candles.

Enough of `/api/v3` for ccxt: ping, time, exchangeInfo, klines, ticker/24hr. Like Binance it serves
the current minute as a partial, still-changing candle, counts request weight per minute, and answers
an unknown symbol with HTTP 400 code -1121. Faults can be injected to prove the client survives them.

On the same port it serves Binance's public kline archives (`/data/spot/...`, see `sandbox/archive.py`),
which, as on Binance's own archive host, carry no request weight.
"""

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tradebeat_pipeline.sandbox.archive import ArchiveShelf, locate, published
from tradebeat_pipeline.sandbox.market_data import (
    Kline,
    Market,
    partial_kline,
)
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS

log = logging.getLogger("tradebeat.sandbox")

WEIGHTS = {"ping": 1, "time": 1, "exchangeInfo": 20, "klines": 2, "ticker/24hr": 2}
FAULT_KINDS = (
    "not_json",  # a body cut off mid-way (truncated JSON)
    "missing_field",
    "non_numeric",
    "http_500",
    "http_503",
    "http_429",  # rate limited, Retry-After: 1
    "http_418",  # IP banned, Retry-After: 2
    "slow",  # answers after `slow_s`, past a client's timeout
    "empty",  # [] where candles exist
    "impossible",  # well-formed candles with high < low and a negative volume
)
# What a misbehaving exchange does at random (the reliability suite's 10 %).
CHAOS_KINDS = ("http_429", "http_418", "http_500", "http_503", "slow", "not_json", "empty")


class Clock:
    """The exchange's clock: the wall clock, or a fixed instant (historical mode)."""

    def __init__(self, fixed_ms: int | None = None) -> None:
        self.fixed_ms = fixed_ms

    def now_ms(self) -> int:
        return self.fixed_ms if self.fixed_ms is not None else int(time.time() * 1000)


@dataclass
class Fault:
    kind: str
    remaining: int | None  # None: until cleared
    symbol: str | None = None  # exchange id (BTCUSDT); None = any symbol
    window: tuple[int, int] | None = None  # only klines asked from a startTime in [start, end)

    def applies(self, symbol: str, start_ms: int | None) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.symbol not in (None, symbol):
            return False
        return self.window is None or (start_ms is not None and self.window[0] <= start_ms < self.window[1])


@dataclass
class Sandbox:
    """The exchange's state: markets, clock, weight budget, injected faults and a request log."""

    markets: dict[str, Market]
    clock: Clock = field(default_factory=Clock)
    weight_limit: int = 6000
    faults: list[Fault] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    chaos_rate: float = 0.0  # share of klines requests answered with a random fault
    chaos_kinds: tuple[str, ...] = CHAOS_KINDS
    slow_s: float = 12.0
    faulted: Counter[str] = field(default_factory=Counter)  # faults actually served, by kind
    klines_log: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, answer)
    weight_log: list[tuple[float, int]] = field(default_factory=list)  # (epoch s, weight) counted
    rejected_for_weight: int = 0  # requests answered 429 because the minute's budget was spent
    archives: ArchiveShelf = field(default_factory=ArchiveShelf)  # archive files, their faults and log
    _rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311 (not crypto)
    _generation: int = 0
    _weight_minute: int = 0
    _weight_used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def chaos(self, rate: float, kinds: tuple[str, ...] = CHAOS_KINDS, seed: int = 0) -> None:
        """Answer a `rate` share of klines requests with a fault drawn from `kinds` (seeded)."""
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self.chaos_rate, self.chaos_kinds, self._rng = rate, kinds, random.Random(seed)  # noqa: S311

    async def _stall(self) -> None:
        """Hold an answer for `slow_s`, or until `reset` (so a stalled request never outlives a test)."""
        generation, deadline = self._generation, time.monotonic() + self.slow_s
        while time.monotonic() < deadline and generation == self._generation:
            await asyncio.sleep(0.05)

    def reset(self) -> None:
        """No faults, no chaos, no request history (between tests)."""
        with self._lock:
            self._generation += 1
            self.slow_s = 12.0
            self.faults.clear()
            self.chaos_rate = 0.0
            self.faulted.clear()
            self.klines_log.clear()
            self.weight_log.clear()
            self.rejected_for_weight = 0
            self._weight_minute, self._weight_used = 0, 0  # a new test starts with a fresh minute
            self.requests.clear()
        self.archives.clear()

    def inject(
        self,
        kind: str,
        count: int | None = 1,
        symbol: str | None = None,
        window: tuple[int, int] | None = None,
    ) -> None:
        """Make the next `count` klines requests (None: every one until `clear_faults`) fail in this
        way; only for `symbol` and for requests starting inside `window`, when given."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self.faults.append(Fault(kind, count, symbol, window))

    def clear_faults(self) -> None:
        """The exchange recovers."""
        with self._lock:
            self.faults.clear()

    def _take_fault(self, symbol: str, start_ms: int | None) -> str | None:
        with self._lock:
            kind = None
            for fault in self.faults:
                if fault.applies(symbol, start_ms):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    kind = fault.kind
                    break
            if kind is None and self.chaos_rate and self._rng.random() < self.chaos_rate:
                kind = self._rng.choice(self.chaos_kinds)
            if kind is not None:
                self.faulted[kind] += 1
            self.klines_log.append((time.monotonic(), kind or "ok"))
            return kind

    def _spend(self, weight: int) -> int | None:
        """Count weight in the current wall-clock minute; returns seconds to wait when over."""
        with self._lock:
            minute = int(time.time() // 60)
            if minute != self._weight_minute:
                self._weight_minute, self._weight_used = minute, 0
            if self._weight_used + weight > self.weight_limit:
                self.rejected_for_weight += 1
                return max(1, 60 - int(time.time() % 60))
            self._weight_used += weight
            self.weight_log.append((time.time(), weight))
            return None

    def weight_by_minute(self) -> dict[int, int]:
        """Weight counted per clock minute (epoch minutes), as the exchange's budget sees it."""
        with self._lock:
            log = list(self.weight_log)
        by_minute: Counter[int] = Counter()
        for t, w in log:
            by_minute[int(t // 60)] += w
        return dict(by_minute)

    def busiest_minutes(self) -> tuple[int, int]:
        """The most weight counted in one clock minute, and in any 60 seconds at all."""
        with self._lock:
            log = sorted(self.weight_log)
        sliding, first, in_window = 0, 0, 0
        for t, w in log:
            in_window += w
            while log[first][0] <= t - 60:
                in_window -= log[first][1]
                first += 1
            sliding = max(sliding, in_window)
        return max(self.weight_by_minute().values(), default=0), sliding

    # -- HTTP ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_weight])
        app.router.add_get("/api/v3/ping", self.ping)
        app.router.add_get("/api/v3/time", self.time)
        app.router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        app.router.add_get("/api/v3/klines", self.klines)
        app.router.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        app.router.add_get("/data/spot/{kind}/klines/{market}/1m/{file}", self.archive)
        app.router.add_get("/sandbox/stats", self.stats)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        """What was asked of this exchange, for a benchmark in another process: REST requests and
        the weight they were charged, per endpoint, and archive downloads (which weigh nothing)."""
        with self._lock:
            body = {
                "requests": dict(self.requests),
                "weight": sum(w for _, w in self.weight_log),
                "archive_requests": sum(self.archives.requests.values()),
            }
        return web.json_response(body)

    @web.middleware
    async def _count_weight(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/data/", "/sandbox/")):  # archives (another host, no weight), stats
            archive: web.StreamResponse = await handler(request)
            return archive
        endpoint = request.path.removeprefix("/api/v3/")
        self.requests[endpoint] += 1
        wait = self._spend(WEIGHTS.get(endpoint, 1))
        if wait is not None:
            return _error(
                429,
                -1003,
                "Too much request weight used; please use the websocket.",
                headers={"Retry-After": str(wait)},
            )
        response: web.StreamResponse = await handler(request)
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight_used)
        return response

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.clock.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": self.clock.now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.weight_limit,
                    },
                    {
                        "rateLimitType": "RAW_REQUESTS",
                        "interval": "MINUTE",
                        "intervalNum": 5,
                        "limit": 61000,
                    },
                ],
                "exchangeFilters": [],
                "symbols": [_symbol_info(m) for m in self.markets.values()],
            }
        )

    def _market(self, request: web.Request) -> Market | web.Response:
        symbol = request.query.get("symbol")
        if not symbol:
            return _error(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        market = self.markets.get(symbol)
        if market is None:
            return _error(400, -1121, "Invalid symbol.")
        return market

    async def klines(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        if request.query.get("interval") != "1m":
            return _error(400, -1120, "Invalid interval.")
        try:
            limit = int(request.query.get("limit", "500"))
            start = _opt_int(request.query.get("startTime"))
            end = _opt_int(request.query.get("endTime"))
        except ValueError:
            return _error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= 1000:
            return _error(400, -1130, "Invalid data sent for a parameter.")
        now = self.clock.now_ms()
        end = now if end is None else min(end, now)
        if start is None:
            start = end - end % MINUTE_MS - (limit - 1) * MINUTE_MS
        rows = market.series.klines(start, end, limit)
        if rows and int(str(rows[-1][0])) + MINUTE_MS > now:
            rows[-1] = partial_kline(rows[-1], now)
        fault = self._take_fault(market.symbol, _opt_int(request.query.get("startTime")))
        if fault == "slow":
            await self._stall()
        elif fault is not None:
            return _faulty(fault, rows)
        return web.Response(text=json.dumps(rows, separators=(",", ":")), content_type="application/json")

    async def archive(self, request: web.Request) -> web.Response:
        """A published archive file or its CHECKSUM; 404 (as Binance's archive host) for anything else."""
        wanted = locate(request.match_info["kind"], request.match_info["market"], request.match_info["file"])
        market = self.markets.get(wanted.market) if wanted is not None else None
        if wanted is None or market is None:
            return web.Response(status=404, text="404: Not Found")
        fault = self.archives.take_fault(wanted)
        if fault == "slow":
            await self._stall()
        elif fault == "not_found":
            return web.Response(status=404, text="404: Not Found")
        elif fault == "http_500":
            return web.Response(status=500, text="500: Internal Server Error")
        if not published(wanted, self.clock.now_ms()):
            return web.Response(status=404, text="404: Not Found")
        variant = fault if fault in ("checksum_mismatch", "truncated", "header", "bad_row") else None
        # A month of candles takes a moment to build: off the loop, so REST answers go on meanwhile.
        built = await asyncio.to_thread(self.archives.build, market.series, wanted, variant)
        if built is None:
            return web.Response(status=404, text="404: Not Found")
        body, checksum = built
        if wanted.checksum:
            return web.Response(text=checksum, content_type="text/plain")
        return web.Response(body=body, content_type="application/zip")

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        raw = request.query.get("symbols")
        if raw is not None:
            try:
                ids = json.loads(raw)
            except json.JSONDecodeError:
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
            if any(i not in self.markets for i in ids):
                return _error(400, -1121, "Invalid symbol.")
            return web.json_response([self._ticker(self.markets[i]) for i in ids])
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        return web.json_response(self._ticker(market))

    def _ticker(self, market: Market) -> dict[str, Any]:
        now = self.clock.now_ms()
        rows = market.series.klines(
            now - DAY_MS + MINUTE_MS, now, 1440
        )  # the last 24 h, open minute included
        if rows and int(str(rows[-1][0])) + MINUTE_MS > now:
            rows[-1] = partial_kline(rows[-1], now)
        first_open = float(str(rows[0][1])) if rows else 0.0
        last = float(str(rows[-1][4])) if rows else 0.0
        return {
            "symbol": market.symbol,
            "priceChange": f"{last - first_open:.8f}",
            "priceChangePercent": f"{(last / first_open - 1) * 100 if first_open else 0:.3f}",
            "openPrice": f"{first_open:.8f}",
            "lastPrice": f"{last:.8f}",
            "highPrice": f"{max((float(str(r[2])) for r in rows), default=0):.8f}",
            "lowPrice": f"{min((float(str(r[3])) for r in rows), default=0):.8f}",
            "volume": f"{sum(float(str(r[5])) for r in rows):.8f}",
            "openTime": now - DAY_MS,
            "closeTime": now,
            "count": len(rows),
        }


def _opt_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _error(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _faulty(kind: str, rows: list[Kline]) -> web.Response:
    if kind == "http_500":
        return _error(500, -1000, "An unknown error occurred while processing the request.")
    if kind == "http_503":
        return _error(503, -1001, "Service unavailable.")
    if kind == "http_429":
        return _error(429, -1003, "Too many requests.", headers={"Retry-After": "1"})
    if kind == "http_418":
        return _error(418, -1003, "Way too many requests; IP banned.", headers={"Retry-After": "2"})
    if kind == "empty":
        return web.Response(text="[]", content_type="application/json")
    if kind == "impossible" and len(rows) >= 2:
        # Well-formed but impossible: the first kline's high below its low, the second's volume < 0.
        first, second = list(rows[0]), list(rows[1])
        first[2], first[3] = first[3], first[2]
        second[5] = "-" + str(second[5])
        rows = [first, second, *rows[2:]]
    if kind == "missing_field":
        rows = [r[:4] for r in rows] or [[0, "1"]]
    elif kind == "non_numeric":
        rows = [[r[0], "abc", *r[2:]] for r in rows] or [[0, "abc", "1", "1", "1", "1", 59999]]
    body = json.dumps(rows, separators=(",", ":"))
    if kind == "not_json":
        body = body[: max(1, len(body) // 2)]  # a body cut off mid-way, as a dropped connection leaves it
    return web.Response(text=body, content_type="application/json")


def _symbol_info(market: Market) -> dict[str, Any]:
    return {
        "symbol": market.symbol,
        "status": market.status,
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.00000100",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.00000100",
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001000",
                "maxQty": "9000.00000000",
                "stepSize": "0.00001000",
            },
        ],
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
    }


class SandboxServer:
    """Runs a `Sandbox` on 127.0.0.1 in a background thread (tests, benchmarks, the demo)."""

    def __init__(self, sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sandbox = sandbox
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "SandboxServer":
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="sandbox-exchange", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if not self.port:
            raise RuntimeError("sandbox exchange did not start")
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.sandbox.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(sandbox: Sandbox, host: str, port: int) -> None:
    """Serve until cancelled (the `tradebeat sandbox` command)."""
    runner = web.AppRunner(sandbox.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("sandbox exchange listening on http://%s:%d", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
