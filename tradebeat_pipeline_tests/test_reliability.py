"""The running system attacked: a misbehaving exchange, a killed run, concurrent writers. Real ccxt over
HTTP to the sandbox, a real SQLite file, a real Dagster instance; each run is a real process where the
scenario needs one (kill -9, two writers)."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.cli.history import known_first_candle
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline_tests.conftest import archive_rows, ms, stored_rows, wait_for

# The exchange is what misbehaves here: history comes from its REST API alone, not the archives.
pytestmark = pytest.mark.usefixtures("rest_only")

SIX = "timestamp, open, high, low, close, volume"

JANUARY = ["--start", "2020-01", "--end", "2020-01"]  # BTC/USDT: its first 3 days are the archive
RECORDED = (ms("2020-01-01T00:00:00Z"), ms("2020-01-04T00:00:00Z"))
MONTH = 31 * 1440


def archive() -> list[tuple[int, float, float, float, float, float]]:
    return [
        (int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]))
        for r in archive_rows("BTCUSDT-1m-vision.csv.gz")
    ]


def test_a_backfill_through_ten_percent_faulted_requests_stores_every_candle_exactly_once(
    btc: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXCHANGE_TIMEOUT_SECONDS", "1")
    sandbox.slow_s = 1.5
    sandbox.chaos(0.10, seed=45)
    assert main(["backfill", "BTC/USDT", *JANUARY]) == 0
    assert (
        stored_rows(btc, columns=SIX, start=RECORDED[0], end=RECORDED[1]) == archive()
    )  # 4,320 candles, identical values, each once (primary key)
    assert sum(sandbox.faulted.values()) >= 1


def test_retry_after_is_honoured_and_a_418_stops_every_request_until_the_ban_ends(
    btc: Path, sandbox: Sandbox
) -> None:
    sandbox.inject("http_418", count=1, window=(ms("2020-01-01T16:40:00Z"), ms("2020-01-01T16:41:00Z")))
    assert main(["backfill", "BTC/USDT", *JANUARY]) == 0
    (banned_at,) = [t for t, answer in sandbox.klines_log if answer == "http_418"]
    # Requests sent before the client read the 418 may reach the sandbox a little later (on a loaded
    # machine, measured up to 0.3 s): in flight, not sent after the ban. Any sent in (1 s, 2 s) fails.
    later = [t - banned_at for t, _ in sandbox.klines_log if t - banned_at > 1.0]
    assert later, "no request after the ban"
    assert min(later) >= 2.0  # Retry-After: 2, for every request of the client
    assert len(stored_rows(btc, columns=SIX)) == MONTH


def test_a_backfill_killed_mid_way_leaves_nothing_half_done_and_a_rerun_stores_each_candle_once(
    btc: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    sandbox.slow_s = 60
    sandbox.inject("slow", count=None, window=(ms("2020-01-02T09:20:00Z"), ms("2020-01-02T09:21:00Z")))
    run = subprocess.Popen(
        [sys.executable, "-m", "tradebeat_pipeline.cli", "backfill", "BTC/USDT", *JANUARY],
        env=os.environ.copy(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for("the run to be mid-way through its fetch", lambda: sandbox.faulted["slow"] >= 1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    assert (
        stored_rows(btc, columns=SIX) == []
    )  # one transaction per write: nothing of the killed run is stored
    assert instance.get_materialized_partitions(dg.AssetKey("ohlcv_1m")) == set()  # and none looks done
    sandbox.reset()
    assert main(["backfill", "BTC/USDT", *JANUARY]) == 0
    assert stored_rows(btc, columns=SIX, start=RECORDED[0], end=RECORDED[1]) == archive()
    assert instance.get_materialized_partitions(dg.AssetKey("ohlcv_1m")) == {"2020-01|BTC/USDT"}


# One heartbeat run for BTC/USDT's 2020-01-02 in a process of its own; argv: the beat minute (ms).
HEARTBEAT = """
import sys
from datetime import date
from tradebeat_pipeline.cli.runs import instance, materialize_beat
month = date(2020, 1, 1)
with instance() as dagster:
    result = materialize_beat(dagster, ["BTC/USDT"], month, month, int(sys.argv[1]))
sys.exit(0 if result.success else 1)
"""


def test_a_heartbeat_and_a_backfill_writing_the_same_day_at_once_lose_nothing_and_never_lock(
    btc: Path, sandbox: Sandbox
) -> None:
    logs = btc.parent / "logs"
    # Learned (and recorded) once, as by an earlier backfill: the command then writes nothing itself.
    known_first_candle("BTC/USDT", Settings.load())
    held = sqlite3.connect(btc, isolation_level=None)
    held.execute("BEGIN IMMEDIATE")  # the write lock: both writers must queue behind it, together
    try:
        writers = [
            subprocess.Popen(
                argv, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for argv in (
                [sys.executable, "-m", "tradebeat_pipeline.cli", "backfill", "BTC/USDT", *JANUARY],
                [sys.executable, "-c", HEARTBEAT, str(ms("2020-01-02T23:59:00Z"))],
            )
        ]
        wait_for(
            "both writers to reach their write while the lock is held",
            lambda: all(
                (logs / f"{component}.log").is_file() and "storing" in (logs / f"{component}.log").read_text()
                for component in ("backfill", "heartbeat")
            ),
            timeout_s=300,
        )
        assert [w.poll() for w in writers] == [None, None]  # both still waiting for the lock
    finally:
        held.execute("ROLLBACK")
        held.close()
    outputs = [w.communicate(timeout=300)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    assert not any("locked" in out for out in outputs)
    assert stored_rows(btc, columns=SIX, start=RECORDED[0], end=RECORDED[1]) == archive()
