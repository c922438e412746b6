"""`tradebeat dev`: the Dagster UI and daemon for real use, with the project's instance (its run
queue keeps beats one at a time) and the charts served; a signal stops every process it started."""

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline_tests.conftest import free_port, wait_for


def answers(url: str) -> bytes | None:
    """The body at `url`, or None while nothing answers there yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return None


def session_processes(sid: int) -> list[int]:
    """Every live process of session `sid` (what `tradebeat dev` started runs in its session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_dev_refuses_a_dagster_home_without_the_projects_instance_configuration(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare_home"
    bare.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(bare))
    assert main(["dev"]) == 1
    error = capsys.readouterr().err
    assert f"DAGSTER_HOME {bare} has no dagster.yaml" in error
    assert "dagster_home/dagster.yaml there" in error


@pytest.mark.slow
def test_dev_serves_the_ui_on_the_projects_home_and_the_charts_and_a_signal_stops_it_all(
    env: Path, tmp_path: Path
) -> None:
    charts = tmp_path / "charts"
    charts.mkdir()
    (charts / "price_chart.html").write_text("<title>tradebeat</title>")
    ui_port, charts_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tradebeat_pipeline.cli", "dev", "--port", str(ui_port)],
        env={**os.environ, "CHARTS_DIR": str(charts), "CHARTS_PORT": str(charts_port)},
        cwd=PROJECT_DIR,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("the Dagster UI", lambda: answers(f"http://127.0.0.1:{ui_port}/server_info"), timeout_s=180)
        page = answers(f"http://127.0.0.1:{charts_port}/price_chart.html")
        home = Path(os.environ["DAGSTER_HOME"])
        # `dagster dev` keeps its runs in the given home, not a temporary one.
        assert (home / "storage").is_dir() or (home / "history").is_dir()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert page == b"<title>tradebeat</title>"
    assert process.returncode == 0
    assert b"tradebeat dev: stopping" in output
    assert b"Traceback" not in output, output.decode()[-3000:]
    assert session_processes(process.pid) == []
