"""The demo's live replay: the recorded days mapped onto the wall clock with no jump at any midnight or
at the seam where the recording starts over, the 2023-03-24 halt at its own clock times, and every
minute answered the same by the REST API and the archive files."""

import io
import itertools
import json
import urllib.request
import zipfile
from collections.abc import Iterator

import pytest

from tradebeat_pipeline.sandbox.market_data import (
    Kline,
    RecordedSeries,
    ReplayedSeries,
    Series,
    replay_markets,
)
from tradebeat_pipeline.sandbox.server import Clock, Sandbox, SandboxServer
from tradebeat_pipeline.timewindows import DAY_MS, MINUTE_MS
from tradebeat_pipeline_tests.conftest import ms

# Before 2025, so the archive files keep millisecond times and read like the REST rows.
ANCHOR = ms("2024-11-01T00:00:00Z")
MARKETS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
RECORDING = "{}-1m-2023-03-23_25.csv.gz"


def replay(market: str) -> Series:
    return replay_markets(ANCHOR)[market].series


def prices(row: Kline) -> tuple[float, float, float, float]:
    o, h, lo, c = (float(str(v)) for v in row[1:5])
    return o, h, lo, c


def largest_close_to_open_gap(market: str) -> float:
    """The recording's own largest jump from a close to the next candle's open, relative."""
    rows = RecordedSeries.from_files(RECORDING.format(market)).rows
    return max(abs(float(b[1]) - float(a[4])) / float(a[4]) for a, b in itertools.pairwise(rows))


def one(series: Series, minute: int) -> Kline:
    (row,) = series.klines(minute, minute, 1)
    return row


@pytest.mark.parametrize("market", MARKETS)
def test_no_midnight_of_a_replayed_week_jumps_more_than_the_recording_ever_did(market: str) -> None:
    """Seven midnights, two of them seams where the three recorded days start over."""
    series = replay(market)
    limit = largest_close_to_open_gap(market)
    jumps = {}
    for day in range(1, 8):
        midnight = ANCHOR + day * DAY_MS
        close = prices(one(series, midnight - MINUTE_MS))[3]
        jumps[day] = abs(prices(one(series, midnight))[0] - close) / close
    assert {day: jump for day, jump in jumps.items() if jump > limit} == {}


@pytest.mark.parametrize("day", [1, 4])  # the recorded 2023-03-24, replayed every third day
def test_the_replayed_halt_is_flat_then_missing_at_its_recorded_clock_times(day: int) -> None:
    series = replay("BTCUSDT")
    midnight = ANCHOR + day * DAY_MS
    rows = series.klines(midnight, midnight + DAY_MS - 1, 1440)
    halted = [r for r in rows if float(str(r[5])) == 0 and len(set(prices(r))) == 1]
    assert [r[0] for r in halted] == list(
        range(midnight + (11 * 60 + 28) * MINUTE_MS, midnight + (12 * 60 + 40) * MINUTE_MS, MINUTE_MS)
    )
    assert len(rows) == 1440 - 80  # 12:40-13:59: no candles at all
    assert [
        r[0]
        for r in series.klines(midnight + (12 * 60 + 39) * MINUTE_MS, midnight + 14 * 60 * MINUTE_MS, 1000)
    ] == [
        midnight + (12 * 60 + 39) * MINUTE_MS,
        midnight + 14 * 60 * MINUTE_MS,
    ]


def problems(row: Kline) -> list[str]:
    """What makes a candle impossible (empty for a valid one)."""
    o, h, lo, c = prices(row)
    found = [] if h >= max(o, c) else ["high below open or close"]
    found += [] if lo <= min(o, c) else ["low above open or close"]
    found += [] if min(o, h, lo, c) > 0 else ["a price not above 0"]
    return found + ([] if float(str(row[5])) >= 0 else ["negative volume"])


@pytest.mark.parametrize("market", MARKETS)
def test_every_replayed_candle_of_two_cycles_is_a_valid_candle(market: str) -> None:
    rows = replay(market).klines(ANCHOR, ANCHOR + 6 * DAY_MS - 1, 6 * 1440)
    assert len(rows) == 2 * (3 * 1440 - 80)  # every recorded minute, twice
    assert {r[0]: problems(r) for r in rows if problems(r)} == {}


@pytest.mark.parametrize("market", MARKETS)
def test_each_replay_starts_over_at_the_prices_the_first_one_had(market: str) -> None:
    """The drift that joins the seam never compounds: the price stays at the recording's level."""
    series = replay(market)
    first = series.klines(ANCHOR, ANCHOR + 3 * DAY_MS - 1, 3 * 1440)
    tenth = series.klines(ANCHOR + 27 * DAY_MS, ANCHOR + 30 * DAY_MS - 1, 3 * 1440)
    assert [r[1:6] for r in tenth] == [r[1:6] for r in first]


def test_the_replay_runs_forwards_with_the_recordings_own_candles_up_to_a_slow_drift() -> None:
    """Minute by minute the replay moves as the recording did: each close-to-close change is the
    recorded one to within 0.1 % (the drift, ~0.001 %, plus rounding to the 0.01 tick)."""
    recorded = RecordedSeries.from_files(RECORDING.format("SOLUSDT"))
    replayed = ReplayedSeries(recorded, ANCHOR).klines(ANCHOR, ANCHOR + 3 * DAY_MS - 1, 3 * 1440)
    closes = [float(r[4]) for r in recorded.rows]
    replayed_closes = [prices(r)[3] for r in replayed]
    assert [int(str(r[0])) - ANCHOR for r in replayed] == [t - recorded.times[0] for t in recorded.times]
    moves = [
        (b / a) / (d / c)
        for a, b, c, d in zip(closes, closes[1:], replayed_closes, replayed_closes[1:], strict=False)
    ]
    assert max(abs(m - 1) for m in moves) < 1e-3  # SOL/USDT: a tick of 0.01 at ~20 USDT is 5e-4


@pytest.fixture(scope="module")
def replay_server() -> Iterator[SandboxServer]:
    # The clock long after the replayed days, so every minute asked is closed and its file published.
    with SandboxServer(Sandbox(replay_markets(ANCHOR), Clock(ANCHOR + 40 * DAY_MS))) as server:
        yield server


def rest_rows(server: SandboxServer, market: str, start: int, limit: int) -> list[list[object]]:
    url = f"{server.url}/api/v3/klines?symbol={market}&interval=1m&startTime={start}&limit={limit}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        rows: list[list[object]] = json.loads(answer.read())
    return rows


def test_a_minute_is_answered_the_same_however_it_is_asked(replay_server: SandboxServer) -> None:
    """Alone, inside a request across the seam, and in its day's archive file."""
    seam = ANCHOR + 3 * DAY_MS
    minutes = [seam - 2 * MINUTE_MS, seam - MINUTE_MS, seam, seam + MINUTE_MS]
    alone = [rest_rows(replay_server, "SOLUSDT", m, 1)[0] for m in minutes]
    around = [r for r in rest_rows(replay_server, "SOLUSDT", seam - 500 * MINUTE_MS, 1000) if r[0] in minutes]
    path = "/data/spot/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2024-11-04.zip"
    with urllib.request.urlopen(replay_server.url + path, timeout=10) as answer:
        body = answer.read()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        lines = archive.read("SOLUSDT-1m-2024-11-04.csv").decode().splitlines()
    in_file = [line for line in lines if int(line.split(",")[0]) in minutes]
    assert around == alone
    assert in_file == [",".join("" if v is None else str(v) for v in row) for row in alone[2:]]
