"""Heartbeat latency: a real dagster-daemon beating against the sandbox for N minutes with K symbols.

    uv run python benchmarks/heartbeat.py [--minutes 5] [--symbols 10] [--buffer 5]

Prints p50/p95/max of candle close -> commit (from `ingested_at`) for the minutes each beat stored,
runs per beat, and CPU seconds per beat (the whole machine less the sandbox, divided by the beats:
daemon, sensor ticks and run workers together).
"""

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np

from tradebeat_pipeline import cli
from tradebeat_pipeline.candles import iso_utc
from tradebeat_pipeline.settings import PROJECT_DIR

MIN = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--buffer", type=float, default=5.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tradebeat-heartbeat-"))
    home = work / "home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)
    port = free_port()
    symbols = [f"S{i:03d}/USDT" for i in range(args.symbols)]
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DB_PATH": str(work / "hb.sqlite"),
        "BINANCE_API_URL": f"http://127.0.0.1:{port}",
        "TRADEBEAT_ENV_FILE": str(work / "none.env"),
        "HEARTBEAT_BUFFER_SECONDS": str(args.buffer),
        "BACKFILL_MINUTES": "10",
        "LOG_LEVEL": "WARNING",
    }
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradebeat_pipeline.cli",
            "sandbox",
            "--replay",
            "--port",
            str(port),
            "--synthetic-markets",
            str(args.symbols),
            "--weight-limit",
            "60000",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    daemon = None
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.1)
        os.environ.update(env)
        assert cli.main(["symbols", "add", *symbols]) == 0
        daemon = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster-daemon")),
                "run",
                "-w",
                str(PROJECT_DIR / "workspace.yaml"),
            ],
            env=env,
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = int(time.time() * 1000)
        # The scheduler starts with the tick after it comes up; measure from the second one on,
        # when the onboarding backfills are done.
        first_beat = started - started % MIN + 2 * MIN
        last_beat = first_beat + (args.minutes - 1) * MIN
        print(
            f"{args.symbols} symbols, buffer {args.buffer}s, beats {iso_utc(first_beat)}.."
            f"{iso_utc(last_beat)}; waiting for them to close…",
            flush=True,
        )
        time.sleep(max(0.0, first_beat / 1000 - time.time()))
        cpu_start = machine_cpu_s() - process_cpu_s(sandbox.pid)
        deadline = time.time() + (last_beat + MIN - first_beat) / 1000 + 120
        while time.time() < deadline and not beats_done(last_beat):
            time.sleep(2)
        cpu_s = machine_cpu_s() - process_cpu_s(sandbox.pid) - cpu_start
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
        os.killpg(sandbox.pid, signal.SIGTERM)
        sandbox.wait()
    report(work / "hb.sqlite", first_beat, last_beat, cpu_s, args.buffer)


def beats_done(last_beat: int) -> bool:
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "heartbeat"}))
    return any(
        int(r.dagster_run.tags["tradebeat/beat_minute"]) >= last_beat and r.dagster_run.is_finished
        for r in runs
    )


def machine_cpu_s() -> float:
    """User + system CPU seconds of the whole machine so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(db: Path, first_beat: int, last_beat: int, cpu_s: float, buffer_s: float) -> None:
    with dg.DagsterInstance.get() as instance:
        runs = [
            r.dagster_run
            for r in instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "heartbeat"}))
        ]
    per_minute: dict[int, list[dg.DagsterRun]] = {}
    for run in runs:
        per_minute.setdefault(int(run.tags["tradebeat/beat_minute"]), []).append(run)
    beats = sorted(m for m in per_minute if m <= last_beat)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT timestamp, ingested_at FROM price_data WHERE timestamp BETWEEN ? AND ?",
            (beats[0], last_beat),
        ).fetchall()
    conn.close()
    latency = np.array([(ingested - (ts + MIN)) / 1000 for ts, ingested in rows])
    ok = sum(1 for m in beats for r in per_minute[m] if r.status == dg.DagsterRunStatus.SUCCESS)
    print(
        f"beats {iso_utc(beats[0])}..{iso_utc(beats[-1])}: {len(beats)} beats, "
        f"runs per beat: max {max(len(per_minute[m]) for m in beats)}, successful {ok}/{len(beats)}"
    )
    print(
        f"close -> commit over {len(latency)} candles: p50 {np.percentile(latency, 50):.1f}s, "
        f"p95 {np.percentile(latency, 95):.1f}s, max {latency.max():.1f}s (buffer {buffer_s:.0f}s)"
    )
    print(
        f"CPU (whole machine less the sandbox, from the first beat to the last): "
        f"{cpu_s:.1f}s, {cpu_s / len(beats):.1f}s per beat"
    )


if __name__ == "__main__":
    main()
