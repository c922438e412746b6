"""Per-component log files: format, rotation, several writing processes, and no secret in any line."""

import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline import logs
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.sandbox.server import Sandbox
from tradebeat_pipeline.settings import Settings

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) tradebeat\.\w+ .+$"
)


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "logs"
    yield directory
    logs.uninstall(directory)


def lines(directory: Path, component: str) -> list[str]:
    """Every line of a component's rotated files (oldest, highest number, first) and current file."""
    rotated = sorted(directory.glob(f"{component}.log.*[0-9]"), key=lambda p: -int(p.suffix[1:]))
    return [line for f in [*rotated, directory / f"{component}.log"] for line in f.read_text().splitlines()]


def test_each_component_writes_its_own_file_with_utc_time_level_and_component(log_dir: Path) -> None:
    logs.install(log_dir, level="INFO")
    logging.getLogger("tradebeat.heartbeat").info("beat done")
    logging.getLogger("tradebeat.exchange").warning("slow answer")
    logging.getLogger("tradebeat.exchange").debug("below LOG_LEVEL")

    assert sorted(p.name for p in log_dir.glob("*.log")) == ["exchange.log", "heartbeat.log"]
    (beat,) = (log_dir / "heartbeat.log").read_text().splitlines()
    (answer,) = (log_dir / "exchange.log").read_text().splitlines()
    assert LINE.match(beat) and beat.endswith(" INFO tradebeat.heartbeat beat done")
    assert LINE.match(answer) and answer.endswith(" WARNING tradebeat.exchange slow answer")


def test_a_full_file_rotates_into_a_bounded_number_of_backups(log_dir: Path) -> None:
    logs.install(log_dir, max_bytes=2_000, backups=3)
    for i in range(200):
        logging.getLogger("tradebeat.store").info("line %03d %s", i, "x" * 40)
    files = sorted(p.name for p in log_dir.glob("store.log*") if not p.name.endswith(".lock"))
    assert files == ["store.log", "store.log.1", "store.log.2", "store.log.3"]
    assert all((log_dir / f).stat().st_size <= 2_000 for f in files)
    kept = lines(log_dir, "store")
    assert kept[-1].endswith(f"line 199 {'x' * 40}")  # the newest line is never the one dropped


WRITER = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from tradebeat_pipeline import logs
    logs.install(Path(sys.argv[1]), max_bytes=20_000, backups=1_000)
    log = logging.getLogger("tradebeat.store")
    for i in range(int(sys.argv[3])):
        log.info("writer %s line %05d %s", sys.argv[2], i, "y" * 60)
    """
)


def test_two_processes_writing_and_rotating_one_file_lose_and_interleave_no_line(log_dir: Path) -> None:
    count = 3_000
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(log_dir), name, str(count)])
        for name in ("a", "b")
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]

    found = lines(log_dir, "store")
    assert len(list(log_dir.glob("store.log.*"))) > 10  # it rotated many times while both wrote
    assert all(LINE.match(line) for line in found)
    bodies = [line.split(" tradebeat.store ", 1)[1] for line in found]
    expected = {f"writer {w} line {i:05d} {'y' * 60}" for w in ("a", "b") for i in range(count)}
    assert len(bodies) == 2 * count
    assert set(bodies) == expected


def test_an_api_key_never_reaches_a_log_line(log_dir: Path) -> None:
    key, secret = "K3yThatMustNeverLeak", "S3cretThatMustNeverLeak"
    logs.install(log_dir, secrets=(key, secret))
    log = logging.getLogger("tradebeat.exchange")
    log.warning("request failed for https://x/api?apiKey=%s", key)
    try:
        raise RuntimeError(f"signature {secret} rejected")
    except RuntimeError:
        log.exception("the exchange refused us")
    text = (log_dir / "exchange.log").read_text()
    assert key not in text and secret not in text
    assert "apiKey=***" in text and "signature *** rejected" in text


def test_a_backfill_logs_to_its_file_and_to_the_runs_log_in_dagster_and_leaks_no_key(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "LiveKeyValue0123456789"
    monkeypatch.setenv("BINANCE_API_KEY", key)
    monkeypatch.setenv("BINANCE_SECRET_KEY", "LiveSecretValue0123456789")
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    assert main(["backfill", "BTC/USDT", "--start", "2020-01", "--end", "2020-01"]) == 0

    log_dir = env.parent / "logs"
    (backfill_line,) = [line for line in lines(log_dir, "backfill") if "closed candles" in line]
    assert "BTC/USDT: 44640 closed candles for 2020-01..2020-01" in backfill_line
    assert any("tradebeat backfill BTC/USDT" in line for line in lines(log_dir, "cli"))
    run = instance.get_run_records(limit=1)[0].dagster_run
    messages = [r.user_message for r in instance.all_logs(run.run_id)]
    assert any("44640 closed candles" in m for m in messages)

    stored = [p for p in env.parent.rglob("*") if p.is_file()]  # logs, the store, the Dagster home
    assert not [p for p in stored if key.encode() in p.read_bytes()]


def test_a_record_of_several_lines_stays_one_record_and_install_is_idempotent(log_dir: Path) -> None:
    first = logs.install(log_dir)
    assert logs.install(log_dir) is first
    assert logging.getLogger("tradebeat").handlers.count(first) == 1
    logging.getLogger("tradebeat.symbols").info("two\nlines")
    assert (log_dir / "symbols.log").read_text().splitlines()[1:] == ["    lines"]


def test_the_defaults_are_the_settings_defaults() -> None:
    defaults = Settings.from_mapping({})
    assert (defaults.log_max_bytes, defaults.log_backups) == (logs.DEFAULT_MAX_BYTES, logs.DEFAULT_BACKUPS)
