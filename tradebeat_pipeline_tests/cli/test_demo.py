"""`tradebeat demo`'s clean stop: the runs in flight end CANCELED (not FAILURE), on a real Dagster
instance in a temporary home; a second signal never interrupts the stop; no traceback of the
expected interruption reaches the console."""

import io
import shutil
import signal
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli.demo import SAME_STOP_S, _Stopping, cancel_runs, forward_output
from tradebeat_pipeline.defs.partitions import KIND_TAG, Kind
from tradebeat_pipeline.health import STOPPED_BY_TAG
from tradebeat_pipeline.settings import PROJECT_DIR
from tradebeat_pipeline_tests.conftest import run_origin

Status = dg.DagsterRunStatus


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "demo_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "dagster_home" / "dagster.yaml", home)  # the demo's instance, as it runs
    return home


def add_runs(home: Path, *statuses: dg.DagsterRunStatus) -> list[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [
            dg.DagsterRun(
                job_name="candles_job",
                status=s,
                tags={KIND_TAG: Kind.HEARTBEAT},
                remote_job_origin=run_origin("candles_job"),
            )
            for s in statuses
        ]
        for run in runs:
            instance.add_run(run)
        return [run.run_id for run in runs]


def statuses_and_tags(home: Path, run_ids: list[str]) -> list[tuple[dg.DagsterRunStatus, str | None]]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
        return [(r.status, r.tags.get(STOPPED_BY_TAG)) for r in runs if r is not None]


def test_a_stop_cancels_every_unfinished_run_and_fails_none(home: Path) -> None:
    queued, started, done, failed = add_runs(
        home, Status.QUEUED, Status.STARTED, Status.SUCCESS, Status.FAILURE
    )
    # A run without a worker to interrupt (its worker is gone): asked to cancel, it stays CANCELING...
    assert cancel_runs(home, timeout_s=0.5) == [started]
    assert statuses_and_tags(home, [queued, started]) == [
        (Status.CANCELED, "tradebeat demo"),
        (Status.CANCELING, "tradebeat demo"),
    ]
    # ...until the demo's processes are stopped, after which nothing can run it: CANCELED.
    assert cancel_runs(home, timeout_s=0) == []
    assert statuses_and_tags(home, [queued, started, done, failed]) == [
        (Status.CANCELED, "tradebeat demo"),
        (Status.CANCELED, "tradebeat demo"),
        (Status.SUCCESS, None),  # finished runs are left as they are
        (Status.FAILURE, None),
    ]


def test_a_stop_with_nothing_in_flight_changes_nothing(home: Path) -> None:
    (done,) = add_runs(home, Status.SUCCESS)
    assert cancel_runs(home, timeout_s=5) == []
    assert statuses_and_tags(home, [done]) == [(Status.SUCCESS, None)]


def test_a_stop_that_cannot_open_the_instance_still_lets_the_processes_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad_home"
    bad.mkdir()
    (bad / "dagster.yaml").write_text("run_queue: [not, a, mapping]\n")
    assert cancel_runs(bad, timeout_s=1) == []
    assert "could not cancel the runs in flight" in capsys.readouterr().out


def test_only_the_first_signal_interrupts_a_later_ones_only_hurries_the_stop() -> None:
    now = [100.0]
    stopping = _Stopping(clock=lambda: now[0])
    with pytest.raises(KeyboardInterrupt):
        stopping.signalled(signal.SIGTERM, None)
    assert (stopping.stopping, stopping.hurry) == (True, False)
    now[0] += 0.01
    stopping.signalled(signal.SIGTERM, None)  # uv forwarding the `kill` of its process group
    assert not stopping.hurry  # the same stop, delivered twice: the runs are still waited for
    now[0] += SAME_STOP_S
    stopping.signalled(signal.SIGINT, None)  # a second Ctrl-C
    assert stopping.hurry


CANCELLED_BEAT = [
    b"\x1b[32m2026-12-02 12:01:36 +0000\x1b[0m - dagster.daemon - INFO - Checking run 7c79\n",
    b"2026-12-02 12:01:43 +0000 - dagster - ERROR - candles_job - 7c79 - STEP_FAILURE - failed.\n",
    b"\n",
    b"dagster._core.errors.DagsterExecutionInterruptedError\n",
    b"\n",
    b"Stack Trace:\n",
    b'  File "execute_plan.py", line 243, in dagster_event_sequence_for_step\n',
    b"Traceback (most recent call last):\n",  # a helper process interrupted by the stop...
    b'  File "watch_orphans.py", line 42, in <module>\n',
    b"\x1b[32m2026-12-02 12:01:43 +0000\x1b[0m - dagster - INFO - Shutting down Dagster services...\n",
    b"    watch(sys.argv[1:])\n",  # ...its traceback interleaved with another process's output
    b"KeyboardInterrupt\n",
    b"2026-12-02 12:01:44 +0000 - dagster - INFO - Dagster services shut down.\n",
]


def test_the_interruption_of_a_cancelled_run_is_shown_without_its_traceback_while_stopping() -> None:
    out = io.BytesIO()
    forward_output(CANCELLED_BEAT, out, lambda: True)
    assert out.getvalue() == b"".join(CANCELLED_BEAT[i] for i in (0, 1, 2, 9, 12))


def test_before_the_stop_every_line_is_shown() -> None:
    out = io.BytesIO()
    forward_output(CANCELLED_BEAT, out, lambda: False)
    assert out.getvalue() == b"".join(CANCELLED_BEAT)
