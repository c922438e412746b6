"""The exchange's request-weight budget, shared by every tradebeat process of a deployment.

Binance counts request weight per IP per minute. The heartbeat run, a backfill run and the CLI are
separate processes: each throttling itself to "our share" would together spend several shares. So
every request first takes its weight from one ledger per exchange host holding the weight spent in
each of the last `WINDOW_S` seconds, by lane: a small file beside the SQLite database under an
exclusive `flock` (one machine), or, when the store is PostgreSQL (DATABASE_URL), a row of the store's
database read and rewritten under a row lock (`store/budget_ledger.py`), so run workers on several
machines share it too. Either way it is one `SharedLedger`: the same bytes, the same rules here.

Heartbeats come first. Backfills and other bulk work (the bulk lane) may fill the window only up to
`1 - BEAT_RESERVE` of the budget, and not at all while a beat is waiting for room; a beat may use
all of it. A 429/418's Retry-After is written to the ledger too, so one ban stops every process.
"""

import asyncio
import enum
import fcntl
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from tradebeat_pipeline.settings import Settings

log = logging.getLogger("tradebeat.exchange")

# The exchange counts each clock minute. Any 60 s of the exchange's clock falls within 62 of our
# one-second buckets, whatever the offset between the clocks, with up to a second for a request to
# travel; so no exchange minute can see more than one window's budget.
WINDOW_S = 62
# Share of the budget only heartbeats may use: a beat costs 2 weight per symbol (one klines request
# each) plus ~22 for the markets and the exchange's clock, so 20 % of our half of Binance's 6,000
# covers ~290 symbols.
BEAT_RESERVE = 0.2
# A beat refused for lack of room holds bulk work back until this long after it will ask again
# (renewed while it keeps waiting), so a beat whose run died holds backfills back one window at most.
BEAT_WAIT_LEASE_S = 2.0


class Lane(enum.StrEnum):
    """Who is asking: the minute heartbeat, or anything that can wait (backfills, CLI, sensor)."""

    BEAT = "beat"
    BULK = "bulk"


class BudgetUnavailable(RuntimeError):
    """The shared ledger cannot be opened: requests would go unaccounted."""


@dataclass
class LedgerRecord:
    """A ledger as stored, while its holder has it to itself."""

    raw: bytes  # b"": nothing stored yet
    now: float  # the ledger's own clock (epoch seconds) once it was held: one clock for every machine
    replacement: bytes | None = None  # stored when the block ends without an error (None: unchanged)


class SharedLedger(Protocol):
    """Where the ledger of one exchange host lives for every process sharing it; `str()` names it
    for messages (never with a password)."""

    def exists(self) -> bool:
        """Whether any process ever wrote it (reading creates nothing)."""

    def held(self, *, write: bool) -> AbstractContextManager[LedgerRecord]:
        """The record, held against every other process that writes until the block ends, when its
        `replacement` (if any) is stored; `write=False` only reads. Raises `BudgetUnavailable`."""


@dataclass(frozen=True)
class FileLedger:
    """The ledger as a file under an exclusive `flock`: every process of one machine."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    @contextmanager
    def held(self, *, write: bool) -> Iterator[LedgerRecord]:
        """The file's bytes, locked until the block ends, then rewritten when asked to."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BudgetUnavailable(f"cannot open the shared rate budget {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            record = LedgerRecord(_read_all(fd), time.time())
            yield record
            if write and record.replacement is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, record.replacement)
        finally:
            os.close(fd)  # releases the lock


@dataclass
class _Ledger:
    spent: dict[int, dict[str, int]] = field(default_factory=dict)  # second -> lane -> weight
    beat_waiting_until: float = 0.0
    paused_until: float = 0.0
    per_minute: float = 0.0  # the budget the exchange last declared (0: not yet known)

    @classmethod
    def parse(cls, raw: bytes) -> "_Ledger":
        data = json.loads(raw)
        return cls(
            spent={int(s): {str(k): int(v) for k, v in lanes.items()} for s, lanes in data["spent"].items()},
            beat_waiting_until=float(data["beat_waiting_until"]),
            paused_until=float(data["paused_until"]),
            per_minute=float(data["per_minute"]),
        )

    def dump(self) -> bytes:
        return json.dumps(
            {
                "spent": self.spent,
                "beat_waiting_until": self.beat_waiting_until,
                "paused_until": self.paused_until,
                "per_minute": self.per_minute,
            },
            separators=(",", ":"),
        ).encode()

    def forget_before(self, second: int) -> None:
        for s in [s for s in self.spent if s < second]:
            del self.spent[s]

    def used(self) -> int:
        return sum(w for lanes in self.spent.values() for w in lanes.values())


@dataclass(frozen=True)
class BudgetUse:
    """What every process sharing a ledger spent in the current window."""

    per_minute: float  # our share of what the exchange declared (0: never declared yet)
    beat: int
    bulk: int
    paused_for_s: float  # > 0 while an exchange's Retry-After holds every request


def ledger_host(api_url: str) -> str:
    """What a ledger is kept per: the exchange's host (and port), whose budget is per IP."""
    return urlsplit(api_url).netloc


def ledger_path(db_path: Path, api_url: str) -> Path:
    """One ledger file per exchange host, beside the SQLite database every process shares."""
    host = ledger_host(api_url)
    return db_path.parent / f"rate-budget-{re.sub(r'[^A-Za-z0-9.-]', '_', host)}.json"


def shared_ledger(where: Path | Settings, api_url: str) -> SharedLedger:
    """The ledger of `api_url`'s host that the settings' store shares: a row of the PostgreSQL store
    when DATABASE_URL is set (every machine), else the file beside DB_PATH (or beside the SQLite
    file `where`)."""
    if isinstance(where, Settings) and where.database_url is not None:
        from tradebeat_pipeline.store.budget_ledger import PostgresLedger  # psycopg: only when used

        return PostgresLedger(where.database_url.get_secret_value(), ledger_host(api_url))
    return FileLedger(ledger_path(where.db_path if isinstance(where, Settings) else where, api_url))


def read_ledger(where: Path | Settings, api_url: str, *, now_s: float | None = None) -> BudgetUse | None:
    """What every process spent from the ledger of `api_url`'s host in the current window (None when
    no request was ever sent); reading changes nothing. `where`: the settings, or the SQLite file."""
    ledger = shared_ledger(where, api_url)
    if not ledger.exists():
        return None
    return WeightBudget(ledger, 0, Lane.BULK, clock=None if now_s is None else (lambda: now_s)).use()


class WeightBudget:
    """Request weight per minute for all processes sharing `ledger` (a file path, or any
    `SharedLedger`; one process only when None). The clock is the ledger's own unless one is given."""

    def __init__(
        self,
        ledger: Path | SharedLedger | None,
        per_minute: float,
        lane: Lane,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ledger: SharedLedger | None = FileLedger(ledger) if isinstance(ledger, Path) else ledger
        self.per_minute = per_minute
        self.lane = lane
        self._clock = clock
        self._memory = _Ledger()
        self.refusals: Counter[str] = Counter()  # why requests had to wait, for logs and tests

    def declare(self, per_minute: float) -> None:
        """The budget the exchange declares (times our share), for every process from now on;
        one that has not asked the exchange yet would otherwise assume Binance's."""
        self.per_minute = per_minute
        with self._ledger() as (ledger, _):
            ledger.per_minute = per_minute

    def take(self, weight: int) -> float:
        """Spend `weight` now if the window has room (0.0), else the seconds to wait before asking again."""
        with self._ledger() as (ledger, now):
            second = int(now)
            ledger.forget_before(second - WINDOW_S + 1)
            if now < ledger.paused_until:
                self.refusals["paused"] += 1
                return ledger.paused_until - now
            if self.lane is Lane.BULK and now < ledger.beat_waiting_until:
                self.refusals["beat waiting"] += 1
                return ledger.beat_waiting_until - now
            budget = min(self.per_minute, ledger.per_minute or self.per_minute)
            cap = budget * (1 - BEAT_RESERVE if self.lane is Lane.BULK else 1)
            used = ledger.used()
            if used + weight <= cap or used == 0:  # an empty window admits even an oversized request
                lanes = ledger.spent.setdefault(second, {})
                lanes[self.lane] = lanes.get(self.lane, 0) + weight
                if self.lane is Lane.BEAT:
                    ledger.beat_waiting_until = 0.0
                return 0.0
            self.refusals["window full"] += 1
            wait = _until_room(ledger, used + weight - cap, now)
            if self.lane is Lane.BEAT:
                # Held until just after the beat asks again, so the room it waits for is its own.
                ledger.beat_waiting_until = now + wait + BEAT_WAIT_LEASE_S
            return wait

    async def spend(self, weight: int, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Wait until the shared window has room for `weight`, then spend it."""
        while (wait := self.take(weight)) > 0:
            await sleep(wait)

    def pause(self, seconds: float) -> None:
        """The exchange asked us to stop (Retry-After): every process waits that long."""
        with self._ledger() as (ledger, now):
            ledger.paused_until = max(ledger.paused_until, now + seconds)

    def use(self) -> BudgetUse:
        """The current window as `tradebeat status` shows it; reading changes nothing."""
        with self._ledger(save=False) as (ledger, now):
            ledger.forget_before(int(now) - WINDOW_S + 1)
            used: Counter[str] = Counter()
            for lanes in ledger.spent.values():
                used.update(lanes)
            return BudgetUse(
                ledger.per_minute, used[Lane.BEAT], used[Lane.BULK], max(0.0, ledger.paused_until - now)
            )

    @contextmanager
    def _ledger(self, *, save: bool = True) -> Iterator[tuple[_Ledger, float]]:
        """The ledger and the time now, the ledger locked against every other process until the
        block ends, then saved."""
        if self.ledger is None:
            yield self._memory, self._now(time.time())
            return
        with self.ledger.held(write=save) as record:
            try:
                ledger = _Ledger.parse(record.raw) if record.raw else _Ledger()
            except (ValueError, KeyError, TypeError, AttributeError):
                # A crash between the file's truncate and write (or a hand-edited row) leaves this;
                # the window restarts empty.
                log.warning("rate budget %s was unreadable; starting a new window", self.ledger)
                ledger = _Ledger()
            yield ledger, self._now(record.now)
            if save:
                record.replacement = ledger.dump()

    def _now(self, ledger_now: float) -> float:
        """The clock given, else the ledger's: one clock for every machine sharing a database."""
        return ledger_now if self._clock is None else self._clock()


def _until_room(ledger: _Ledger, excess: float, now: float) -> float:
    """Seconds until enough of the oldest spending leaves the window to free `excess` weight."""
    freed = 0
    for second in sorted(ledger.spent):
        freed += sum(ledger.spent[second].values())
        if freed >= excess:
            return max(0.05, second + WINDOW_S - now)
    return 0.05


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
