"""The shared request-weight budget: what every process together may spend, and who goes first.

Every rule is tested on both ledgers a deployment may share: the file beside the SQLite database and
the row in the PostgreSQL store's database (a real server). Two `WeightBudget`s on one ledger stand
for two processes (each call locks the ledger anew, exactly as separate processes do), with the clock
set by hand. The last tests run real processes with the ccxt client against the sandbox, which
measures what it was sent.
"""

import asyncio
import bisect
import contextlib
import itertools
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import time_machine

from tradebeat_pipeline.budget import (
    BEAT_RESERVE,
    BEAT_WAIT_LEASE_S,
    WINDOW_S,
    BudgetUnavailable,
    FileLedger,
    Lane,
    SharedLedger,
    WeightBudget,
    ledger_host,
    ledger_path,
    read_ledger,
    shared_ledger,
)
from tradebeat_pipeline.sandbox.server import SandboxServer
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline.store.budget_ledger import PostgresLedger
from tradebeat_pipeline.store.postgres import BUDGET_TABLE
from tradebeat_pipeline_tests.conftest import fresh_sandbox, ms
from tradebeat_pipeline_tests.pg_cluster import PostgresServer, fresh_database

LEDGERS = ["file", "postgres"]
API_URL = "http://127.0.0.1:8765"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ledger_of(kind: str, where: str, api_url: str = API_URL) -> SharedLedger:
    """The ledger a deployment with this store shares: beside the SQLite file, or in the database."""
    if kind == "file":
        return FileLedger(ledger_path(Path(where), api_url))
    return PostgresLedger(where, ledger_host(api_url))


@pytest.fixture(params=LEDGERS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> SharedLedger:
    if request.param == "file":
        return ledger_of("file", str(tmp_path / "tradebeat.sqlite"))
    return ledger_of("postgres", request.getfixturevalue("postgres_url"))


def budget(
    ledger: SharedLedger, clock: Clock | None, lane: Lane = Lane.BULK, per_minute: float = 100
) -> WeightBudget:
    return WeightBudget(ledger, per_minute, lane, clock=clock)


def overwrite(ledger: SharedLedger, raw: bytes) -> None:
    """Put bytes in the ledger behind the budget's back, as a crash (file) or a hand edit (row) might."""
    if isinstance(ledger, FileLedger):
        ledger.path.write_bytes(raw)
        return
    assert isinstance(ledger, PostgresLedger)
    WeightBudget(ledger, 100, Lane.BULK).use()  # nothing stored yet: reading creates nothing ...
    assert not ledger.exists()
    WeightBudget(ledger, 100, Lane.BULK).declare(100)  # ... a write creates the table and the row
    with psycopg.connect(ledger.url, autocommit=True) as db:
        db.execute(f"UPDATE {BUDGET_TABLE} SET ledger = %s WHERE host = %s", (raw.decode(), ledger.host))


def test_a_process_spends_up_to_its_lane_then_waits_for_its_oldest_weight_to_leave_the_window(
    ledger: SharedLedger, clock: Clock
) -> None:
    bulk = budget(ledger, clock)  # bulk lane: 80 of 100
    assert [bulk.take(20) for _ in range(4)] == [0.0] * 4
    clock.now += 10.5
    assert bulk.take(2) == pytest.approx(WINDOW_S - 10.5)
    clock.now += WINDOW_S - 10.5
    assert bulk.take(2) == 0.0


def test_two_processes_sharing_the_ledger_stay_within_one_budget_together(
    ledger: SharedLedger, clock: Clock
) -> None:
    first, second = budget(ledger, clock), budget(ledger, clock)
    assert first.take(50) == 0.0
    assert second.take(30) == 0.0
    assert second.take(1) > 0
    assert first.take(1) > 0
    use = first.use()
    assert (use.beat, use.bulk) == (0, 80)


def test_backfills_leave_the_beat_reserve_free_for_the_heartbeat(ledger: SharedLedger, clock: Clock) -> None:
    backfill, beat = budget(ledger, clock), budget(ledger, clock, Lane.BEAT)
    assert backfill.take(80) == 0.0
    assert backfill.take(1) > 0
    assert beat.take(20) == 0.0
    assert beat.take(1) > 0  # the whole budget is spent now
    assert beat.refusals == {"window full": 1}


def test_a_waiting_beat_holds_backfills_back_although_their_lane_has_room(
    ledger: SharedLedger, clock: Clock
) -> None:
    backfill, beat = budget(ledger, clock), budget(ledger, clock, Lane.BEAT)
    assert beat.take(90) == 0.0
    wait = beat.take(20)  # the beat now waits for room ...
    assert wait > 0
    assert backfill.take(1) == pytest.approx(wait + BEAT_WAIT_LEASE_S)  # ... and bulk work behind it
    assert backfill.refusals == {"beat waiting": 1}


def test_a_beat_whose_run_died_holds_backfills_back_no_longer_than_a_window_and_its_lease(
    ledger: SharedLedger, clock: Clock
) -> None:
    backfill, beat = budget(ledger, clock), budget(ledger, clock, Lane.BEAT)
    assert beat.take(90) == 0.0
    assert beat.take(20) > 0  # and then its run dies
    clock.now += WINDOW_S + BEAT_WAIT_LEASE_S
    assert backfill.take(1) == 0.0


def test_retry_after_pauses_every_process_and_lane_sharing_the_ledger(
    ledger: SharedLedger, clock: Clock
) -> None:
    backfill, beat = budget(ledger, clock), budget(ledger, clock, Lane.BEAT)
    beat.pause(2.0)
    assert backfill.use().paused_for_s == pytest.approx(2.0)
    assert backfill.take(1) == pytest.approx(2.0)
    assert beat.take(1) == pytest.approx(2.0)
    clock.now += 2.0
    assert beat.take(1) == 0.0


def test_the_budget_one_process_learned_from_the_exchange_binds_processes_that_have_not_asked_yet(
    ledger: SharedLedger, clock: Clock
) -> None:
    budget(ledger, clock, per_minute=3000).declare(50)  # the exchange declared less than Binance's
    newcomer = budget(ledger, clock, per_minute=3000)
    assert newcomer.take(40) == 0.0
    assert newcomer.take(1) > 0


def test_a_request_heavier_than_the_whole_lane_still_goes_through_an_empty_window(
    ledger: SharedLedger, clock: Clock
) -> None:
    assert budget(ledger, clock, per_minute=10).take(20) == 0.0


def test_an_unreadable_ledger_starts_a_new_window_instead_of_stopping_every_request(
    ledger: SharedLedger, clock: Clock
) -> None:
    overwrite(ledger, b'{"spent": {"17')  # what a crash between truncate and write leaves
    assert budget(ledger, clock).take(5) == 0.0
    assert budget(ledger, clock).use().bulk == 5


def test_a_ledger_that_cannot_be_opened_is_an_error_naming_it(tmp_path: Path, clock: Clock) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(BudgetUnavailable, match=r"cannot open the shared rate budget .*a-file"):
        budget(FileLedger(ledger_path(blocked / "tradebeat.sqlite", "https://api.binance.com")), clock).take(
            1
        )


def test_a_database_ledger_that_cannot_be_reached_is_an_error_naming_it_without_the_password(
    postgres_server: PostgresServer, clock: Clock
) -> None:
    url = postgres_server.url("no_such_database").replace("tradebeat@", "tradebeat:s3cret-pw@")
    ledger = PostgresLedger(url, "api.binance.com")
    with pytest.raises(BudgetUnavailable, match="no_such_database") as raised:
        budget(ledger, clock).take(1)
    assert "s3cret-pw" not in str(raised.value) and "s3cret-pw" not in repr(ledger)


def test_the_database_ledger_refuses_another_applications_database_and_writes_nothing(
    postgres_url: str, clock: Clock
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("CREATE TABLE invoices (id integer)")
    with pytest.raises(BudgetUnavailable, match="another application"):
        budget(ledger_of("postgres", postgres_url), clock).take(1)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        assert db.execute("SELECT to_regclass(%s)", (BUDGET_TABLE,)).fetchone() == (None,)


@pytest.mark.parametrize("first", ["ledger", "store"])
def test_the_ledger_and_the_store_share_one_database_whichever_comes_first(
    postgres_url: str, clock: Clock, first: str
) -> None:
    ledger = ledger_of("postgres", postgres_url)
    with open_store(Path("unused"), database_url=postgres_url) as store:
        if first == "store":
            store.register_symbol("BTC/USDT")
            assert budget(ledger, clock).take(3) == 0.0
        else:
            assert budget(ledger, clock).take(3) == 0.0
            store.register_symbol("BTC/USDT")
        assert [s.symbol for s in store.list_symbols()] == ["BTC/USDT"]
    assert budget(ledger, clock).use().bulk == 3


def test_machines_whose_clocks_disagree_count_the_same_seconds_on_the_database_ledger(
    postgres_url: str,
) -> None:
    """No clock is given: the server's is the one clock. A machine 70 s behind must not make a
    second machine believe the weight it spent has already left the window."""
    ledger = ledger_of("postgres", postgres_url)
    with time_machine.travel(time.time() - 70, tick=True):
        assert budget(ledger, None).take(80) == 0.0
    assert budget(ledger, None).take(1) > 0


def test_status_reads_the_ledger_of_the_store_the_settings_name(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for kind in LEDGERS:
        values = {"DB_PATH": str(tmp_path / kind / "tradebeat.sqlite")}
        if kind == "postgres":
            values["DATABASE_URL"] = request.getfixturevalue("postgres_url")
        settings = Settings.from_mapping(values)
        ledger = shared_ledger(settings, API_URL)
        assert str(ledger) == str(ledger_of(kind, values.get("DATABASE_URL", values["DB_PATH"])))
        assert read_ledger(settings, API_URL) is None  # no request sent yet
        WeightBudget(ledger, 100, Lane.BEAT).take(7)
        use = read_ledger(settings, API_URL)
        assert use is not None and (use.beat, use.bulk) == (7, 0), kind


@pytest.mark.parametrize("kind", LEDGERS)
def test_the_exchange_resource_shares_the_ledger_of_the_store_the_settings_name(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from tradebeat_pipeline.defs.resources import ExchangeResource

    monkeypatch.setenv("TRADEBEAT_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("DB_PATH", str(tmp_path / "tradebeat.sqlite"))
    monkeypatch.setenv("BINANCE_API_URL", API_URL)
    where = str(tmp_path / "tradebeat.sqlite")
    if kind == "postgres":
        where = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("DATABASE_URL", where)
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)

    async def opened() -> str:
        exchange = ExchangeResource().open()
        await exchange.close()
        return str(exchange.budget.ledger)

    assert asyncio.run(opened()) == str(ledger_of(kind, where))


# A process of its own using the ledger: `take N` takes weight 1 N times from a window with room for
# all, `pause S` passes on an exchange's Retry-After of S seconds.
CHILD = """
import sys
from pathlib import Path
from tradebeat_pipeline.budget import Lane, WeightBudget
from tradebeat_pipeline.store.budget_ledger import PostgresLedger
kind, where, host, action, amount = sys.argv[1:]
budget = WeightBudget(Path(where) if kind == "file" else PostgresLedger(where, host), 10**9, Lane.BULK)
if action == "take":
    assert all(budget.take(1) == 0.0 for _ in range(int(amount)))
else:
    budget.pause(float(amount))
"""


def child(ledger: SharedLedger, action: str, amount: float) -> "subprocess.Popen[str]":
    if isinstance(ledger, FileLedger):
        kind, where, host = "file", str(ledger.path), ""
    else:
        assert isinstance(ledger, PostgresLedger)
        kind, where, host = "postgres", ledger.url, ledger.host
    argv = [sys.executable, "-c", CHILD, kind, where, host, action, str(amount)]
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)


def finished(*processes: "subprocess.Popen[str]") -> None:
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]


def test_processes_taking_weight_at_the_same_moments_lose_none_of_it(ledger: SharedLedger) -> None:
    """Real processes read, add to and rewrite the ledger at once: under its lock every take
    survives; without it, concurrent rewrites would drop some."""
    finished(*[child(ledger, "take", 150) for _ in range(4)])
    assert budget(ledger, None).use().bulk == 4 * 150


def test_a_retry_after_one_process_received_pauses_another_process(ledger: SharedLedger) -> None:
    finished(child(ledger, "pause", 30))
    waited = budget(ledger, None, Lane.BEAT).take(1)
    assert 20 < waited <= 30


def test_no_sixty_seconds_ever_hold_more_than_the_budget_whoever_asks_and_whenever(
    ledger: SharedLedger, clock: Clock
) -> None:
    """Three processes (a beat, two backfills) asking at random moments for 20 simulated minutes."""
    rng = random.Random(7)
    askers = [budget(ledger, clock, Lane.BEAT), budget(ledger, clock), budget(ledger, clock)]
    spent: list[tuple[float, int]] = []
    end = clock.now + 1200
    while clock.now < end:
        clock.now += rng.uniform(0.0, 0.4)
        weight = rng.choice([1, 2, 2, 2, 20])
        if rng.choice(askers).take(weight) == 0.0:
            spent.append((clock.now, weight))
    assert sum(w for _, w in spent) > 100 * 18  # the budget was the limit, not the demand
    times = [t for t, _ in spent]
    weights = [0, *itertools.accumulate(w for _, w in spent)]
    for i, start in enumerate(times):
        last = bisect.bisect_left(times, start + 61)
        assert weights[last] - weights[i] <= 100


# One process fetching `pages` of a symbol's candles in the given lane; prints what it got.
FETCHER = """
import asyncio, json, sys
from pathlib import Path
from tradebeat_pipeline.budget import FileLedger, Lane, ledger_host
from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange
from tradebeat_pipeline.store.budget_ledger import PostgresLedger

url, kind, where, lane, symbol, start, pages = sys.argv[1:]
async def go():
    async with CcxtExchange(api_url=url, lane=Lane(lane), backoff_s=0.01) as ex:
        # as ExchangeResource does: the deployment's ledger, the file or the store's database
        shared = FileLedger(Path(where)) if kind == "file" else PostgresLedger(where, ledger_host(url))
        ex.budget.ledger = shared
        result = await ex.fetch_candles(symbol, int(start), int(start) + int(pages) * 1000 * 60_000)
        return {"candles": len(result.candles), "refusals": dict(ex.budget.refusals)}
print(json.dumps(asyncio.run(go())))
"""
EXCHANGE_LIMIT = 1000  # declared by the sandbox for this run: our half is 500 a minute, 400 for bulk
START = ms("2025-01-01T00:00:00Z")
BULK_PAGES = 120  # 41 + 240 weight each: two of them need more than one window of the bulk lane
BEAT_PAGES = 10  # 41 + 20 weight: within the beat reserve


@dataclass(frozen=True)
class SharedRun:
    budget: float
    busiest_clock_minute: int
    busiest_60_seconds: int
    served: int
    rejected: int
    results: dict[str, dict[str, object]]


def _fetcher(
    url: str, ledger: tuple[str, str], lane: Lane, symbol: str, pages: int
) -> "subprocess.Popen[str]":
    argv = [sys.executable, "-c", FETCHER, url, *ledger, lane, symbol, str(START), str(pages)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module", params=LEDGERS)
def shared_run(
    request: pytest.FixtureRequest, sandbox_server: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedRun]:
    """Two backfill processes and, once they have filled their lane, a heartbeat process, all
    sharing one ledger (the file, or the store's database), against a sandbox declaring a small budget."""
    with contextlib.ExitStack() as stack:
        if request.param == "file":
            where = str(
                ledger_path(tmp_path_factory.mktemp("budget") / "tradebeat.sqlite", sandbox_server.url)
            )
        else:
            where = stack.enter_context(fresh_database(request.getfixturevalue("postgres_server")))
        yield from _shared_run(sandbox_server, (request.param, where))


def _shared_run(sandbox_server: SandboxServer, ledger: tuple[str, str]) -> Iterator[SharedRun]:
    sandbox = fresh_sandbox(sandbox_server)
    limit_before, sandbox.weight_limit = sandbox.weight_limit, EXCHANGE_LIMIT
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for symbol in ("S001/USDT", "S002/USDT"):
            processes[symbol] = _fetcher(sandbox_server.url, ledger, Lane.BULK, symbol, BULK_PAGES)
        deadline = time.monotonic() + 60
        while sum(w for _, w in sandbox.weight_log) < EXCHANGE_LIMIT / 2 * (1 - BEAT_RESERVE) - 10:
            running = all(p.poll() is None for p in processes.values())
            assert running and time.monotonic() < deadline, (
                f"the backfills never filled their lane: {sandbox.requests}"
            )
            time.sleep(0.05)
        processes["S003/USDT"] = _fetcher(sandbox_server.url, ledger, Lane.BEAT, "S003/USDT", BEAT_PAGES)
        results = {}
        for symbol, process in processes.items():
            out, _ = process.communicate(timeout=300)
            assert process.returncode == 0, f"{symbol}: exit {process.returncode}"
            results[symbol] = json.loads(out)
        clock_minute, sliding = sandbox.busiest_minutes()
        yield SharedRun(
            budget=EXCHANGE_LIMIT / 2,
            busiest_clock_minute=clock_minute,
            busiest_60_seconds=sliding,
            served=sum(w for _, w in sandbox.weight_log),
            rejected=sandbox.rejected_for_weight,
            results=results,
        )
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
        sandbox.weight_limit = limit_before
        sandbox.reset()


@pytest.mark.slow
def test_processes_sharing_a_deployment_together_never_send_more_than_our_share(
    shared_run: SharedRun,
) -> None:
    assert shared_run.served > shared_run.budget  # more than one window's worth was asked for
    assert shared_run.busiest_60_seconds <= shared_run.budget
    assert shared_run.busiest_clock_minute <= shared_run.budget
    assert shared_run.rejected == 0


@pytest.mark.slow
def test_a_heartbeat_is_never_held_back_by_backfills_that_filled_their_lane(shared_run: SharedRun) -> None:
    backfills_held_back = {
        reason
        for symbol in ("S001/USDT", "S002/USDT")  # the slower one waits; the faster may not
        for reason in shared_run.results[symbol]["refusals"]  # type: ignore[attr-defined]
    }
    assert "window full" in backfills_held_back
    assert shared_run.results["S003/USDT"]["refusals"] == {}


@pytest.mark.slow
def test_every_process_gets_all_its_candles_while_waiting_its_turn(shared_run: SharedRun) -> None:
    assert {s: r["candles"] for s, r in shared_run.results.items()} == {
        "S001/USDT": BULK_PAGES * 1000,
        "S002/USDT": BULK_PAGES * 1000,
        "S003/USDT": BEAT_PAGES * 1000,
    }
