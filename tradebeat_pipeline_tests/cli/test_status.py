"""`tradebeat status`: a health check a monitor can call, on a real store and Dagster instance."""

import json
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.budget import Lane, WeightBudget, ledger_path
from tradebeat_pipeline.cli import main
from tradebeat_pipeline.sandbox.server import SandboxServer


def test_status_without_a_running_daemon_is_down_and_says_why(
    btc: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["status", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "down"
    assert any("daemon" in reason for reason in report["reasons"])
    assert [s["symbol"] for s in report["symbols"]] == ["BTC/USDT"]


def test_status_shows_what_every_process_spent_from_the_shared_rate_budget(
    btc: Path, sandbox_server: SandboxServer, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    WeightBudget(ledger_path(btc, sandbox_server.url), 3000, Lane.BEAT).take(7)  # as a beat would
    capsys.readouterr()
    main(["status", "--json"])
    budget = json.loads(capsys.readouterr().out)["rate_budget"]
    assert budget["beat"] == 7
    assert budget["bulk"] > 0  # `symbols add` asked the exchange about BTC/USDT
    assert budget["per_minute"] == 3000  # our half of the 6,000 the sandbox declares
    assert budget["paused_for_s"] == 0


def test_status_cannot_tell_when_the_database_is_unreadable(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.write_bytes(b"not a database at all")
    assert main(["status"]) == 3
    assert "not a SQLite database" in capsys.readouterr().err


def test_status_cannot_tell_on_a_usage_error(env: Path) -> None:
    assert main(["status", "--bogus"]) == 3


def test_status_cannot_tell_when_the_database_does_not_exist(env: Path) -> None:
    assert main(["status"]) == 3
    assert not env.exists()
