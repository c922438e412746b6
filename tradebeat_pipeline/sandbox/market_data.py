"""Candle series served by the sandbox: real recorded candles, replayed or at their true times.

Rows are kept as Binance serves them (12 fields, prices as decimal strings), so what the pipeline
stores can be compared with the bundled archives to the last decimal; only the live replay scales
its prices, by a slow drift that makes each replay start where the last one ended. See
`data/SOURCES.md`.
"""

import bisect
import gzip
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Protocol

import numpy as np

from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS

# A kline row exactly as Binance's /api/v3/klines serves it.
Kline = list[object]


class Series(Protocol):
    """Final (closed) candles of one market."""

    def first_open_time(self) -> int | None: ...
    def klines(self, start_ms: int, end_ms: int, limit: int) -> list[Kline]:
        """Up to `limit` rows with open time in [start_ms, end_ms], oldest first."""
        ...


def _kline(open_time: int, fields: list[str]) -> Kline:
    """A Binance row from recorded fields; a 6-column source has no volumes beyond base volume."""
    o, h, lo, c, v = fields[1:6]
    if len(fields) >= 11:
        return [
            open_time,
            o,
            h,
            lo,
            c,
            v,
            open_time + MINUTE_MS - 1,
            fields[7],
            int(fields[8]),
            fields[9],
            fields[10],
            "0",
        ]
    return [open_time, o, h, lo, c, v, open_time + MINUTE_MS - 1, None, None, None, None, "0"]


@dataclass
class RecordedSeries:
    """Recorded candles at their true open times."""

    times: list[int]
    rows: list[list[str]]

    @classmethod
    def from_files(cls, *names: str) -> "RecordedSeries":
        merged: dict[int, list[str]] = {}
        for name in names:
            with gzip.open(str(files("tradebeat_pipeline.sandbox") / "data" / name), "rt") as f:
                for line in f:
                    fields = line.strip().split(",")
                    merged[int(fields[0])] = fields
        times = sorted(merged)
        return cls(times, [merged[t] for t in times])

    def first_open_time(self) -> int | None:
        return self.times[0] if self.times else None

    def klines(self, start_ms: int, end_ms: int, limit: int) -> list[Kline]:
        lo = bisect.bisect_left(self.times, start_ms)
        hi = min(bisect.bisect_right(self.times, end_ms), lo + limit)
        return [_kline(self.times[i], self.rows[i]) for i in range(lo, hi)]


@dataclass
class ReplayedSeries:
    """Recorded whole days replayed over and over on the wall clock, day-aligned and seamless.

    Wall minute t shows the recorded minute at the same time of day, so an outage recorded at
    12:40-13:59 is replayed at 12:40-13:59 too, every time its day comes round. A recording ends at
    another price than it starts at (SOL/USDT's three days: -4.7 %), so played as recorded every
    replay would start with that jump. Instead prices are multiplied by a drift that runs
    smoothly from 1 at the first open to first open / last close at the last close: each replay
    ends exactly where the next one starts, and no minute moves by more than ~0.001 % beyond
    what it moved on the exchange. The drift advances only over traded minutes, so a halt stays
    flat; each candle's high and low take the larger and smaller of its open and close factors and
    every price is rounded to the recording's own tick, so every candle stays valid. Volumes are
    served as recorded. The scaled rows are computed once, so a minute is always answered the
    same, whatever the request around it (the REST API and the archive files agree).
    """

    recorded: RecordedSeries
    anchor_ms: int  # a wall-clock midnight from which the replay runs

    def __post_init__(self) -> None:
        first = self.recorded.times[0]
        self.origin = first - first % DAY_MS
        last = self.recorded.times[-1]
        self.period = (last - self.origin) // DAY_MS * DAY_MS + DAY_MS
        self.scaled = RecordedSeries(list(self.recorded.times), _seamless(self.recorded.rows))

    def first_open_time(self) -> int | None:
        return self.anchor_ms

    def klines(self, start_ms: int, end_ms: int, limit: int) -> list[Kline]:
        start_ms = max(start_ms, self.anchor_ms)
        out: list[Kline] = []
        cycle = (start_ms - self.anchor_ms) // self.period
        while len(out) < limit:
            cycle_start = self.anchor_ms + cycle * self.period
            if cycle_start > end_ms:
                break
            shift = cycle_start - self.origin
            lo_rec = max(start_ms, cycle_start) - shift
            hi_rec = min(end_ms, cycle_start + self.period - 1) - shift
            for row in self.scaled.klines(lo_rec, hi_rec, limit - len(out)):
                moved = int(str(row[0])) + shift
                row[0], row[6] = moved, moved + MINUTE_MS - 1
                out.append(row)
            cycle += 1
        return out


def _seamless(rows: list[list[str]]) -> list[list[str]]:
    """Recorded rows with the drift of `ReplayedSeries` applied: the last close becomes the first
    open, the change spread over the traded minutes, each price on the recording's own tick."""
    ohlc = np.array([r[1:5] for r in rows], dtype=np.float64)
    volume = np.array([r[5] for r in rows], dtype=np.float64)
    halted = (volume == 0) & (ohlc.min(axis=1) == ohlc.max(axis=1))
    done = np.concatenate(([0], np.cumsum(~halted)))  # traded minutes before each open, and after the last
    at = (ohlc[0, 0] / ohlc[-1, 3]) ** (done / max(int(done[-1]), 1))
    at_open, at_close = at[:-1], at[1:]
    factors = np.stack(
        [at_open, np.maximum(at_open, at_close), np.minimum(at_open, at_close), at_close], axis=1
    )
    decimals = max(len(p.partition(".")[2]) for r in rows for p in r[1:5])
    prices = (ohlc * factors).tolist()
    middle = np.sqrt(at_open * at_close).tolist()  # quote volumes are prices times volumes
    out: list[list[str]] = []
    for row, scaled, m in zip(rows, prices, middle, strict=True):
        new = [row[0], *(f"{p:.{decimals}f}" for p in scaled), *row[5:]]
        if len(row) >= 11:
            new[7], new[10] = f"{float(row[7]) * m:.8f}", f"{float(row[10]) * m:.8f}"
        out.append(new)
    return out


@dataclass
class SyntheticSeries:
    """Deterministic made-up candles for every minute since `start_ms` (for long benchmarks)."""

    start_ms: int
    base_price: float = 100.0

    def first_open_time(self) -> int | None:
        return self.start_ms

    def klines(self, start_ms: int, end_ms: int, limit: int) -> list[Kline]:
        first = max(start_ms, self.start_ms)
        first += (-first) % MINUTE_MS
        if first > end_ms:
            return []
        count = min(limit, (end_ms - first) // MINUTE_MS + 1)
        minutes = first // MINUTE_MS + np.arange(count + 1, dtype=np.int64)
        price = self._price(minutes)
        opens, closes = price[:-1], price[1:]
        u = _uniform(minutes[:-1])
        highs = np.maximum(opens, closes) * (1 + 0.002 * u)
        lows = np.minimum(opens, closes) * (1 - 0.002 * (1 - u))
        volume = 5 + 20 * _uniform(minutes[:-1] + 7)
        quote = volume * closes
        columns = zip(
            (minutes[:-1] * MINUTE_MS).tolist(),
            opens.tolist(),
            highs.tolist(),
            lows.tolist(),
            closes.tolist(),
            volume.tolist(),
            quote.tolist(),
            (volume * 7).astype(np.int64).tolist(),
            strict=True,
        )
        # Plain Python floats format several times faster than numpy scalars.
        return [
            [
                t,
                f"{o:.8f}",
                f"{h:.8f}",
                f"{lo:.8f}",
                f"{c:.8f}",
                f"{v:.8f}",
                t + MINUTE_MS - 1,
                f"{q:.8f}",
                n,
                f"{v / 2:.8f}",
                f"{q / 2:.8f}",
                "0",
            ]
            for t, o, h, lo, c, v, q, n in columns
        ]

    def _price(self, minutes: np.ndarray) -> np.ndarray:
        m = minutes.astype(np.float64)
        trend = 1 + 0.3 * np.sin(2 * math.pi * m / (60 * 24 * 90))
        daily = 1 + 0.02 * np.sin(2 * math.pi * m / (60 * 24))
        noise = 1 + 0.001 * (_uniform(minutes) - 0.5)
        return np.round(self.base_price * trend * daily * noise, 4)


def _uniform(keys: np.ndarray) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per key (splitmix64)."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class WholeMonths:
    """Recorded candles, with the unrecorded days of every month the recording touches made up.

    On Binance every month of a listed symbol is whole but for the exchange's own outages; a
    recording covers a few days. tradebeat loads whole months, so here each recorded day is served
    exactly as recorded (its holes, like the 2023-03-24 halt, stay holes) and every other day of
    those months comes from a `SyntheticSeries` starting near the recording's first price.
    """

    recorded: RecordedSeries

    def __post_init__(self) -> None:
        days = {t - t % DAY_MS for t in self.recorded.times}
        self.filler = SyntheticSeries(0, base_price=float(self.recorded.rows[0][4]))
        fill: list[tuple[int, int]] = []
        for month in sorted({_month_start(d) for d in days}):
            day = month
            while _month_start(day) == month:
                if day not in days:
                    if fill and fill[-1][1] == day:
                        fill[-1] = (fill[-1][0], day + DAY_MS)
                    else:
                        fill.append((day, day + DAY_MS))
                day += DAY_MS
        self.fill = fill  # [start, end) windows served by the filler

    def first_open_time(self) -> int | None:
        recorded = self.recorded.first_open_time()
        starts = [t for t in (recorded, self.fill[0][0] if self.fill else None) if t is not None]
        return min(starts) if starts else None

    def klines(self, start_ms: int, end_ms: int, limit: int) -> list[Kline]:
        rows = self.recorded.klines(start_ms, end_ms, limit)
        for a, b in self.fill:
            if a <= end_ms and start_ms < b:
                rows += self.filler.klines(max(start_ms, a), min(end_ms, b - 1), limit)
        rows.sort(key=lambda r: int(str(r[0])))
        return rows[:limit]


def _month_start(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() * 1000)


def partial_kline(final: Kline, now_ms: int) -> Kline:
    """The still-open minute as a real exchange shows it: values so far, changing until it closes."""
    open_time = int(str(final[0]))
    frac = min(max((now_ms - open_time) / MINUTE_MS, 0.0), 1.0)
    o, h, lo, c, v = (float(str(x)) for x in final[1:6])
    close = o + (c - o) * frac
    high = max(o, close, o + (h - o) * frac)
    low = min(o, close, o - (o - lo) * frac)
    row: Kline = list(final)
    row[2:6] = [f"{high:.8f}", f"{low:.8f}", f"{close:.8f}", f"{v * frac:.8f}"]
    if row[8] is not None:
        row[7] = f"{float(str(row[7])) * frac:.8f}"
        row[8] = int(int(str(row[8])) * frac)
        row[9] = f"{float(str(row[9])) * frac:.8f}"
        row[10] = f"{float(str(row[10])) * frac:.8f}"
    return row


@dataclass(frozen=True)
class Market:
    symbol: str  # exchange id, e.g. BTCUSDT
    base: str
    quote: str
    status: str
    series: Series


SYNTHETIC_START = int(datetime(2017, 8, 17, tzinfo=UTC).timestamp() * 1000)
_RECORDED_2023 = "{}-1m-2023-03-23_25.csv.gz"


def historical_markets(synthetic: int = 0) -> dict[str, Market]:
    """Every recorded candle at its true time, the rest of their months made up (`WholeMonths`),
    plus synthetic markets for long ranges."""
    btc = RecordedSeries.from_files("BTCUSDT-1m-vision.csv.gz", _RECORDED_2023.format("BTCUSDT"))
    eth = RecordedSeries.from_files("ETHUSDT-1m-vision.csv.gz", _RECORDED_2023.format("ETHUSDT"))
    sol = RecordedSeries.from_files(_RECORDED_2023.format("SOLUSDT"))
    return _markets(WholeMonths(btc), WholeMonths(eth), WholeMonths(sol), synthetic)


def replay_markets(anchor_ms: int, synthetic: int = 0) -> dict[str, Market]:
    """The recorded 2023-03-23..25 days replayed on the wall clock from `anchor_ms` on, over and
    over, seamlessly (`ReplayedSeries`)."""
    series = [
        ReplayedSeries(RecordedSeries.from_files(_RECORDED_2023.format(s)), anchor_ms)
        for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    ]
    btc, eth, sol = series
    return _markets(btc, eth, sol, synthetic)


def _markets(btc: Series, eth: Series, sol: Series, synthetic: int = 0) -> dict[str, Market]:
    """The bundled markets, plus `synthetic` made-up ones (S000/USDT, ...) for many-symbol runs."""
    markets = [
        Market("BTCUSDT", "BTC", "USDT", "TRADING", btc),
        Market("ETHUSDT", "ETH", "USDT", "TRADING", eth),
        Market("SOLUSDT", "SOL", "USDT", "TRADING", sol),
        Market("SYNUSDT", "SYN", "USDT", "TRADING", SyntheticSeries(SYNTHETIC_START)),
        # Listed but halted, as Binance shows a delisted or suspended pair.
        Market("LUNAUSDT", "LUNA", "USDT", "BREAK", SyntheticSeries(SYNTHETIC_START, 5.0)),
    ]
    markets += [
        Market(f"S{i:03d}USDT", f"S{i:03d}", "USDT", "TRADING", SyntheticSeries(SYNTHETIC_START, 10.0 + i))
        for i in range(synthetic)
    ]
    return {m.symbol: m for m in markets}
