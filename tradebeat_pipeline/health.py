"""Is tradebeat healthy? The judgement behind `tradebeat status`, apart from Dagster: per-symbol
figures from any `CandleStore`, plus the daemon's and the heartbeat's last signs of life, handed in
as plain values by the caller, who also names the instant judged (`now_ms`, `now_s`): no clock is
read here. Exit codes follow the monitoring-plugin convention (0 OK, 1 WARNING/degraded,
2 CRITICAL/down, 3 UNKNOWN)."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum

from tradebeat_pipeline.quality import EXCHANGE, covered_by_exchange
from tradebeat_pipeline.store import CandleStore
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS, iso_utc, last_closed_minute

# The daemon writes a heartbeat every 30 s; five minutes without one means it is gone.
DAEMON_STALE_S = 300
# The heartbeat schedule creates a run every minute; none for this long means it stopped.
BEAT_STALE_S = 300
# How far back the complete-through watermark looks for the first unexplained hole.
WATERMARK_DAYS = 7
# Set on the runs that a clean stop of `tradebeat demo` cancelled (its value: who stopped them), so
# a CANCELED run in the UI says why. Dagster ends a run CANCELED only when someone asked for it (the
# UI's Terminate, a clean stop); its run monitoring fails, not cancels, a beat that timed out or
# whose worker died, so a cancelled beat is no sign of trouble and only FAILURE counts against health.
STOPPED_BY_TAG = "tradebeat/stopped_by"


class Health(IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class SymbolHealth:
    symbol: str
    newest_candle: str | None
    complete_through: str | None  # every minute up to it is stored or an explained hole
    lag_minutes: int | None  # behind the last closed minute
    lag_explained: bool  # the exchange itself has no candles for the lagging minutes
    candles_today: int
    unexplained_minutes_24h: int


@dataclass(frozen=True)
class BeatRun:
    status: str  # Dagster run status name
    created_s: float  # epoch seconds
    minute: str | None  # the beat's minute, ISO UTC


@dataclass(frozen=True)
class Report:
    health: Health
    reasons: list[str]
    now: str
    daemon_heartbeat_age_s: float | None
    last_beat: BeatRun | None
    symbols: list[SymbolHealth] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "status": self.health.name.lower(),
            "code": int(self.health),
            "reasons": self.reasons,
            "now": self.now,
            "daemon": {
                "alive": self.daemon_heartbeat_age_s is not None
                and self.daemon_heartbeat_age_s <= DAEMON_STALE_S,
                "heartbeat_age_s": None
                if self.daemon_heartbeat_age_s is None
                else round(self.daemon_heartbeat_age_s, 1),
            },
            "last_beat": None if self.last_beat is None else asdict(self.last_beat),
            "symbols": [asdict(s) for s in self.symbols],
        }


def symbol_health(store: CandleStore, symbol: str, now_ms: int) -> SymbolHealth:
    """One symbol's figures at `now_ms`."""
    last_closed = last_closed_minute(now_ms) - MINUTE_MS
    first, newest = store.candle_span(symbol)
    today = now_ms - now_ms % DAY_MS
    if newest is None or first is None:
        return SymbolHealth(symbol, None, None, None, False, 0, 0)
    lag = max(0, (last_closed - newest) // MINUTE_MS)
    explained = lag > 0 and covered_by_exchange(
        store.holes(symbol, newest + MINUTE_MS, last_closed + MINUTE_MS), newest + MINUTE_MS, last_closed
    )
    watermark = store.gap_report(symbol, max(first, now_ms - WATERMARK_DAYS * DAY_MS), newest + MINUTE_MS)
    unexplained = [h for h in watermark.holes if h.kind != EXCHANGE]
    complete = unexplained[0].start - MINUTE_MS if unexplained else newest
    # The last 24 h lie inside the watermark's window: clip its holes rather than read them again.
    day_start = max(first, now_ms - DAY_MS)
    unexplained_24h = sum(
        max(0, (h.end - max(h.start, day_start)) // MINUTE_MS + 1) for h in unexplained if h.end >= day_start
    )
    return SymbolHealth(
        symbol=symbol,
        newest_candle=iso_utc(newest),
        complete_through=iso_utc(complete) if complete >= first else None,
        lag_minutes=int(lag),
        lag_explained=explained,
        candles_today=store.count_candles(symbol, today, now_ms),
        unexplained_minutes_24h=int(unexplained_24h),
    )


def judge(
    symbols: Sequence[SymbolHealth],
    *,
    now_s: float,
    freshness_minutes: int,
    daemon_heartbeat_s: float | None,
    beats: Sequence[BeatRun],
) -> Report:
    """The verdict: down beats degraded beats healthy; every reason is listed."""
    down: list[str] = []
    degraded: list[str] = []
    # A heartbeat the daemon wrote while status was reading is from "now", not the future.
    daemon_age = None if daemon_heartbeat_s is None else max(0.0, now_s - daemon_heartbeat_s)
    if daemon_age is None:
        down.append("no dagster-daemon heartbeat in the instance (is the daemon running?)")
    elif daemon_age > DAEMON_STALE_S:
        down.append(f"the dagster-daemon's last heartbeat was {daemon_age:.0f}s ago")
    last = beats[0] if beats else None
    if symbols:
        if last is None:
            down.append("no heartbeat run yet")
        elif now_s - last.created_s > BEAT_STALE_S:
            down.append(f"no heartbeat run for {(now_s - last.created_s) / 60:.0f} minutes")
    failed = [b for b in beats if b.status == "FAILURE" and now_s - b.created_s <= BEAT_STALE_S]
    if failed:
        degraded.append(f"{len(failed)} heartbeat run(s) failed in the last {BEAT_STALE_S // 60} minutes")
    for s in symbols:
        if s.lag_minutes is None:
            degraded.append(f"{s.symbol} has no candles stored")
        elif s.lag_minutes > freshness_minutes and not s.lag_explained:
            degraded.append(f"{s.symbol} is {s.lag_minutes} min behind (limit {freshness_minutes})")
    health = Health.DOWN if down else Health.DEGRADED if degraded else Health.HEALTHY
    return Report(
        health=health,
        reasons=down + degraded,
        now=iso_utc(int(now_s * 1000)),
        daemon_heartbeat_age_s=daemon_age,
        last_beat=last,
        symbols=list(symbols),
    )
