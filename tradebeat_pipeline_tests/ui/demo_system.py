"""What `tradebeat demo` runs, started in a temporary folder on free ports of 127.0.0.1, for the
browser tests and for `scripts/readme_ui.py`: the sandbox exchange in live replay, the charts server
and `dagster dev` (webserver + daemon) with a Dagster home, database, charts and logs of its own.

One definition for both, so the README's pictures show the very system the tests drive. It lives
with the tests (it is test equipment, like `conftest.py`'s sandbox) and reuses the demo's own pieces
(`tradebeat_pipeline.cli.demo`), its clean stop included: the runs in flight are cancelled first,
then every process is stopped, and it proves that none is left.
"""

import contextlib
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg
from playwright.sync_api import Browser, Locator, Page, Playwright, Response, ViewportSize, expect

from tradebeat_pipeline.chart_server import chart_url, serve_charts
from tradebeat_pipeline.cli.demo import (
    CANCEL_TIMEOUT_S,
    UNFINISHED,
    cancel_runs,
    dagster_dev_argv,
    demo_environment,
    replay_sandbox_argv,
    start_process,
    stop_processes,
    wait_for_port,
)
from tradebeat_pipeline.defs.partitions import KIND_TAG, SYMBOLS_PARTITIONS_NAME, Kind
from tradebeat_pipeline.settings import DEFAULT_DAGSTER_HOME, Settings
from tradebeat_pipeline_tests.conftest import wait_for
from tradebeat_pipeline_tests.pg_cluster import free_port

T = TypeVar("T")

# The demo's own default (`tradebeat demo --symbols`).
DEMO_SYMBOLS = "BTC/USDT,ETH/USDT,SOL/USDT"
CHROMIUM_MISSING = (
    "Debian's chromium is not installed (no `chromium` on PATH); the browser tests drive it, never a "
    "downloaded browser. Fix: apt-get install chromium (`.ci/run` installs it)"
)
# An hour of history per onboarded symbol (a real setting; the demo loads a day): still the whole
# current month, the partition, but never the previous month too, which a day reaches on the 1st.
QUICKER = {"BACKFILL_MINUTES": "60"}
# An onboarding backfill, a beat or a UI backfill takes seconds here; this bounds the wait for one
# (queue, daemon loop and run) on a loaded 2-core machine.
RUN_TIMEOUT_S = 120
VIEWPORT: ViewportSize = {"width": 1400, "height": 1000}
# What the Checks tab says of a check that has been evaluated (Failed covers a WARN too); while a
# run evaluates it, it says "In progress".
SETTLED = re.compile(r"^(Succeeded|Failed)$")


def chromium() -> str:
    """Debian's Chromium, or RuntimeError naming the fix (the tests fail on it; they never skip)."""
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError(CHROMIUM_MISSING)
    return found


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Debian Chromium under Playwright (`--no-sandbox`: containers run it as root)."""
    return playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])


def wait_until(what: str, check: Callable[[], T | None], timeout_s: float, poll_s: float = 0.5) -> T:
    """The tests' `wait_for`, polling less often: each poll here opens the instance."""
    return wait_for(what, check, timeout_s=timeout_s, poll_s=poll_s)


@dataclass(frozen=True)
class DemoSystem:
    """The running demo: where its UI and charts are, and its instance, to ask about runs."""

    work: Path
    home: Path
    ui_url: str
    exchange_url: str
    charts_port: int

    def chart_url(self, name: str) -> str:
        return chart_url(self.charts_port, name)

    @contextlib.contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            yield instance

    def runs(
        self, *, tags: dict[str, str] | None = None, statuses: list[dg.DagsterRunStatus] | None = None
    ) -> list[dg.DagsterRun]:
        """The instance's runs with these tags and statuses (any when not given), newest first."""
        with self.instance() as instance:
            return list(instance.get_runs(filters=dg.RunsFilter(tags=tags or {}, statuses=statuses or [])))

    def symbols(self) -> list[str]:
        """The `symbols` partitions, as the UI lists them."""
        with self.instance() as instance:
            return list(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))

    def materialized(self, asset: str, partition: str) -> bool:
        """Whether one partition of an asset has been materialized."""
        with self.instance() as instance:
            return partition in instance.get_materialized_partitions(dg.AssetKey(asset))

    def between_beats(self) -> bool:
        """A beat has succeeded and no run is in flight: the moment the UI must show a settled system."""
        beats = self.runs(tags={KIND_TAG: Kind.HEARTBEAT})
        unfinished = self.runs(statuses=[dg.DagsterRunStatus(s) for s in UNFINISHED])
        return bool(beats) and beats[0].status == dg.DagsterRunStatus.SUCCESS and not unfinished


def _environment(home: Path, work: Path, exchange_url: str, symbols: str, charts_port: int) -> dict[str, str]:
    """The demo's environment, with the database and logs in `work` instead of the project's, and
    no tradebeat setting inherited from the caller's shell (DATABASE_URL would pick Postgres)."""
    env = demo_environment(home, exchange_url, symbols, charts_port, work / "demo.sqlite")
    for field in Settings.model_fields.values():
        name = field.alias
        if name is not None and name in os.environ and env.get(name) == os.environ[name]:
            del env[name]  # inherited, not set by the demo
    env.update(QUICKER, LOG_DIR=str(work / "logs"))
    return env


def _wait_for_webserver(url: str, process: "subprocess.Popen[bytes]", log: Path, timeout_s: float) -> None:
    def answering() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_until("the Dagster webserver to answer", answering, timeout_s)


def leftover_processes(home: Path) -> list[str]:
    """Processes still running with this demo's DAGSTER_HOME in their environment (each is one of
    ours: no other process knows that temporary folder), as `pid command` lines."""
    marker = f"\0DAGSTER_HOME={home}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's
            if marker in b"\0" + (proc / "environ").read_bytes():
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name} {command.strip()}")
    return found


@contextlib.contextmanager
def running_demo(
    work: Path, symbols: str = DEMO_SYMBOLS, startup_timeout_s: float = 180
) -> Iterator[DemoSystem]:
    """Start the demo's processes in `work` on free ports and yield once the UI answers; on exit,
    stop them as `tradebeat demo` does and raise if any process is left behind."""
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(DEFAULT_DAGSTER_HOME / "dagster.yaml", home / "dagster.yaml")
    exchange_port, ui_port = free_port(), free_port()
    exchange_url = f"http://127.0.0.1:{exchange_port}"
    charts = serve_charts(home / "charts", 0)  # port 0: the kernel picks a free one, no race
    charts_port = int(charts.server_address[1])
    env = _environment(home, work, exchange_url, symbols, charts_port)
    log = work / "dagster-dev.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("ab") as output:
            # cwd is the home, as in the demo: `dagster dev` reads a .env from its cwd.
            processes.append(start_process(replay_sandbox_argv(exchange_port), env, home, output.fileno()))
            wait_for_port(exchange_port, processes[0])
            processes.append(start_process(dagster_dev_argv(ui_port), env, home, output.fileno()))
        ui_url = f"http://127.0.0.1:{ui_port}"
        _wait_for_webserver(ui_url, processes[1], log, startup_timeout_s)
        yield DemoSystem(work, home, ui_url, exchange_url, charts_port)
    finally:
        cancel_runs(home, timeout_s=CANCEL_TIMEOUT_S)
        stop_processes(processes)
        cancel_runs(home, timeout_s=0)
        charts.shutdown()
        charts.server_close()
        left = leftover_processes(home)
        if left:
            raise RuntimeError("processes left behind by the demo's stop:\n" + "\n".join(left))


def dismiss_welcome(browser: Browser, system: DemoSystem) -> None:
    """Skip Dagster's one-time "Join the Dagster community" dialog, which a fresh Dagster home shows
    over the first page on 127.0.0.1 and which would cover what the tests click. Skipping it is
    remembered by the instance, so no later page shows it."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{system.ui_url}/assets")
        welcome = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
        expect(welcome).to_be_visible(timeout=60_000)
        welcome.get_by_role("button", name="Skip").click()
        expect(welcome).to_be_hidden()
    finally:
        page.close()


def wait_for_onboarding(system: DemoSystem) -> dg.DagsterRun:
    """The symbols sensor's first backfill (the demo's SYMBOLS), once it has succeeded."""
    backfills = {KIND_TAG: Kind.BACKFILL}
    success = [dg.DagsterRunStatus.SUCCESS]
    (run,) = wait_until(
        "the onboarding backfill of the demo's symbols to succeed",
        lambda: system.runs(tags=backfills, statuses=success),
        RUN_TIMEOUT_S + 60,  # the daemon's first sensor tick comes after its start
    )
    return run


# -- steps in the UI that the tests and the README script both take ----------------------------


def materialize(page: Page, system: DemoSystem, asset: str) -> None:
    """Press the asset page's Materialize button and wait for the materialization it makes."""

    def latest() -> float:
        with system.instance() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return event.timestamp if event is not None else 0.0

    before = latest()
    page.goto(f"{system.ui_url}/assets/{asset}")
    page.get_by_role("button", name=re.compile(r"Materialize$")).click()
    wait_until(f"a new materialization of {asset}", lambda: latest() > before, RUN_TIMEOUT_S)


def check_status(page: Page, check: str) -> Locator:
    """The status line under a check's name in the asset's Checks tab (e.g. "Succeeded")."""
    name = page.locator(f"[title='{check}']").first
    return name.locator("xpath=following-sibling::span[1]")


def open_chart_link(page: Page, system: DemoSystem) -> tuple[Page, Response]:
    """Follow the `open` link of the price_chart asset's metadata, as a user does: the tab it opens
    and the chart server's answer to it."""
    page.goto(f"{system.ui_url}/assets/price_chart")
    link = page.get_by_role("row").filter(has=page.get_by_role("cell", name="open", exact=True))
    link = link.get_by_role("link").first
    expect(link).to_be_visible(timeout=30_000)
    href = link.get_attribute("href")
    with (
        page.context.expect_page() as opened,
        page.context.expect_event("response", lambda r: r.url == href) as answered,
    ):
        link.click()
    chart = opened.value
    chart.wait_for_load_state()
    return chart, answered.value
